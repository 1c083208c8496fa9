"""A round's pairs judged by the scenes' truth, on hand-made responses whose numbers are worked by hand."""

from selfalign.evaluation.pair_quality import pair_quality_markdown, response_text, side_scores

TRUTHS = [["red circle", "blue star"], ["green square"]]


def test_each_side_counts_distinct_mentions_against_its_own_scene():
    responses = [
        # red circle (true), blue star (true), yellow triangle (false); the repeat counts once.
        "There is a red circle. A blue star is on the left. There is a yellow triangle. A red circle.",
        # green square (true in the second scene), red circle (false there); a bare shape that is there.
        "There is a green square and a red circle. The square is small.",
    ]
    scores = side_scores(responses, TRUTHS)
    # False: 1 + 1 of 3 + 3 distinct mentions ("square" is one); recall: 2 + 1 of 3 objects.
    assert scores == {"chair_i": round(2 / 6, 4), "recall": 1.0, "mean_words": (20 + 13) / 2}
    assert side_scores(["The image shows no shapes.", "Nothing."], TRUTHS) == {
        "chair_i": 0.0,
        "recall": 0.0,
        "mean_words": 3.0,
    }


def test_a_side_is_read_from_its_assistant_turn_and_tabled():
    turns = [{"role": "assistant", "content": [{"type": "text", "text": "There is a red circle."}]}]
    assert response_text(turns) == "There is a red circle."
    assert response_text([{"role": "assistant", "content": "A blue star."}]) == "A blue star."
    quality = {
        "pairs": 3,
        "chosen": {"chair_i": 0.1, "recall": 0.5, "mean_words": 20.0},
        "rejected": {"chair_i": 0.7, "recall": 0.25, "mean_words": 24.5},
    }
    table = pair_quality_markdown({"CSR round 1": quality})
    assert table.splitlines()[2] == "| CSR round 1 | 3 | 0.100 | 0.700 | 0.500 | 0.250 | 20.0 | 24.5 |"
