"""The evaluation's breakdown of hallucinations, checked exactly on hand-made scenes and captions: the
kind of each wrong mention, the co-occurrence lift, companion recall and CHAIR_i at matched length."""

import pytest

from selfalign.evaluation.companions import companion_scores
from selfalign.evaluation.metrics import caption_scores, first_mentions_chair_i, hallucination_kinds

# Two companion pairs, as a world with companions records them in its eval set.
COMPANIONS = {"red circle": "green square", "blue star": "yellow circle"}


def test_an_absent_companion_is_its_own_kind_before_any_other():
    truth = [["red circle", "blue star"]]
    # green square: red circle's companion (else both absent); yellow circle: blue star's (else a
    # wrong colour); red star: swapped; purple square: both absent; green star: a wrong colour.
    captions = ["A red circle, a green square and a blue star. There is a yellow circle, a red star, "
                "a purple square and a green star."]  # fmt: skip
    kinds = hallucination_kinds(captions, truth, COMPANIONS)
    assert kinds == {
        "absent_companion": 2, "wrong_shape": 0, "wrong_colour": 1, "swapped": 1, "both_absent": 1, "absent_shape": 0
    }  # fmt: skip
    # Without the world's companions the same mentions are read by their attributes only.
    assert hallucination_kinds(captions, truth) == {
        "absent_companion": 0, "wrong_shape": 0, "wrong_colour": 2, "swapped": 1, "both_absent": 2, "absent_shape": 0
    }  # fmt: skip
    # A companion that is in the scene is no hallucination at all.
    assert sum(hallucination_kinds(["A red circle and a green square."], [["red circle", "green square"]],
                                   COMPANIONS).values()) == 0  # fmt: skip


# Five scenes and their captions; for each companion pair, which case each scene is (B = the companion):
#   red circle -> green square:  with object: 1 (named), 2 (not);  without: 3 (named), 5;  present: 4 (not)
#   blue star -> yellow circle:  with object: 3 (not);  without: 1, 2, 4 (none named);  present: 5 (named)
SCENES = [
    (["red circle"], "There is a red circle and a green square."),
    (["red circle"], "There is a red circle."),
    (["blue star"], "There is a blue star and a green square."),
    (["red circle", "green square"], "There is a red circle."),
    (["blue star", "yellow circle"], "There is a blue star and a yellow circle."),
]


def test_the_co_occurrence_lift_and_companion_recall_are_pooled_over_pairs():
    objects, captions = [truth for truth, _ in SCENES], [text for _, text in SCENES]
    prior = companion_scores(captions, objects, COMPANIONS)
    assert prior["counts"] == {
        "named": {"with_object": 1, "without_object": 1, "present": 1},
        "scenes": {"with_object": 3, "without_object": 5, "present": 2},
    }
    assert prior["p_named_with_object"] == pytest.approx(1 / 3)
    assert prior["p_named_without_object"] == pytest.approx(1 / 5)
    assert prior["lift"] == pytest.approx(1 / 3 - 1 / 5)
    assert prior["recall_when_present"] == pytest.approx(1 / 2)
    assert caption_scores(captions, objects, COMPANIONS)["companions"] == prior
    assert "companions" not in caption_scores(captions, objects)  # a world without companions


def test_chair_i_at_matched_length_reads_only_the_first_mentions():
    truth = [["red circle", "blue star", "green square"]]
    late = ["A red circle, a blue star, a green square and a purple heart."]  # wrong only in 4th place
    assert caption_scores(late, truth)["chair_i"] == pytest.approx(1 / 4)
    assert first_mentions_chair_i(late, truth, 3) == 0.0
    early = ["A purple heart and a red circle."]  # shorter than 3 mentions: all of it counts
    assert first_mentions_chair_i(early, truth, 3) == pytest.approx(1 / 2)
    assert first_mentions_chair_i(late + early, truth * 2, 3) == pytest.approx(1 / 5)
