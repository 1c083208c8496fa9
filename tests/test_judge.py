"""The ground-truth judge's scoring rule and the judgement text format."""

import pytest

from selfalign.synthetic import World, caption, object_list, rng_for
from selfalign.synthetic.judge import (
    Judgement,
    JudgementParseError,
    Rating,
    format_judgement,
    ground_truth_judgement,
    parse_judgement,
)

TRUTH = ["red circle", "blue square", "blue square", "green star"]
PERFECT = "There is a red circle, two blue squares and a green star."


def test_perfect_caption_scores_top_marks():
    judgement = ground_truth_judgement(PERFECT, TRUTH)
    assert judgement.scores() == {
        "helpfulness": 5,
        "visual_faithfulness": 5,
        "ethical_considerations": 5,
        "overall": 5,
    }


def test_world_captions_are_judged_perfect():
    world = World(seed=3)
    for index in range(20):
        scene = world.scene("eval", index)
        judgement = ground_truth_judgement(caption(scene, rng_for(scene, "caption")), object_list(scene))
        assert judgement.visual_faithfulness.score == 5
        assert judgement.helpfulness.score == 5


@pytest.mark.parametrize(
    "response",
    [
        "There is a red circle, two blue squares, a green star and a purple heart.",  # extra object
        "There is a red circle, two blue squares and a yellow star.",  # wrong colour
        "There is a red circle, two blue squares and a green hexagon.",  # wrong shape
    ],
)
def test_hallucinated_or_miscoloured_object_lowers_faithfulness(response):
    judgement = ground_truth_judgement(response, TRUTH)
    assert judgement.visual_faithfulness.score < 5
    assert judgement.overall.score < 5
    assert "does not contain" in judgement.visual_faithfulness.rationale


def test_faithfulness_falls_with_the_share_of_wrong_mentions():
    one_wrong = ground_truth_judgement("There is a red circle, a blue square and a purple heart.", TRUTH)
    all_wrong = ground_truth_judgement("There is a purple heart and a yellow diamond.", TRUTH)
    assert all_wrong.visual_faithfulness.score == 1
    assert one_wrong.visual_faithfulness.score > all_wrong.visual_faithfulness.score


def test_helpfulness_follows_coverage():
    partial = ground_truth_judgement("There is a red circle.", TRUTH)
    assert partial.helpfulness.score == 3  # 1 of 3 kinds of object: 1 + ceil(4/3)
    assert partial.visual_faithfulness.score == 5
    assert "missing blue square and green star" in partial.helpfulness.rationale
    off_topic = ground_truth_judgement("I like this picture a lot.", TRUTH)
    assert off_topic.helpfulness.score == 1


@pytest.mark.parametrize("response", ["", "   ", "...", "a red circle " * 10])
def test_empty_or_degenerate_response_gets_the_minimum(response):
    judgement = ground_truth_judgement(response, TRUTH)
    assert judgement.helpfulness.score == 1
    assert judgement.ethical_considerations.score == 1
    assert judgement.overall.score == 1


def test_scores_are_ints_from_1_to_5():
    responses = [PERFECT, "", "There is a purple heart.", "There is a red circle.", "Nothing here."]
    for response in responses:
        for score in ground_truth_judgement(response, TRUTH).scores().values():
            assert type(score) is int and 1 <= score <= 5


def test_judge_is_deterministic():
    response = "There is a red circle and a yellow star."
    assert ground_truth_judgement(response, TRUTH) == ground_truth_judgement(response, TRUTH)


def test_format_and_parse_round_trip():
    for response in [PERFECT, "", "There is a red circle and a yellow star.", "Shapes."]:
        judgement = ground_truth_judgement(response, TRUTH)
        text = format_judgement(judgement)
        assert parse_judgement(text) == judgement
        assert format_judgement(parse_judgement(text)) == text


def test_format_is_the_documented_one():
    judgement = Judgement(
        Rating(4, "Names most objects."),
        Rating(5, "Nothing false."),
        Rating(5, "Harmless."),
        Rating(5, "Good."),
    )
    assert format_judgement(judgement) == (
        "Helpfulness: 4/5 - Names most objects.\n"
        "Visual Faithfulness: 5/5 - Nothing false.\n"
        "Ethical Considerations: 5/5 - Harmless.\n"
        "Overall: 5/5 - Good."
    )
    assert parse_judgement("\n" + format_judgement(judgement) + "\n ") == judgement


VALID = format_judgement(ground_truth_judgement(PERFECT, TRUTH)).splitlines()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "a judgement has 4 lines"),
        ("The response is great, 5/5.", "a judgement has 4 lines"),
        ("\n".join(VALID[:3]), "got 3"),
        ("\n".join([VALID[1], VALID[0], *VALID[2:]]), "line 1 should read 'Helpfulness: <1-5>/5"),
        (
            "\n".join([*VALID[:3], "Overall: 6/5 - Too good."]),
            "line 4 (Overall): a score must be from 1 to 5",
        ),
        ("\n".join([*VALID[:3], "Overall: 0/5 - Too bad."]), "a score must be from 1 to 5"),
        ("\n".join([*VALID[:3], "Overall: four/5 - Words."]), "line 4 should read 'Overall: <1-5>/5"),
        ("\n".join([*VALID[:3], "Overall: 4/5 -"]), "line 4 should read"),
        ("\n".join([*VALID[:3], "Overall: 4/10 - Out of ten."]), "line 4 should read"),
    ],
)
def test_parse_rejects_malformed_text(text, message):
    with pytest.raises(JudgementParseError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_judgement(text)


def test_ratings_refuse_bad_values():
    with pytest.raises(ValueError, match="an int"):
        Rating(4.5, "Half marks.")
    with pytest.raises(ValueError, match="one non-empty line"):
        Rating(3, "Two\nlines.")
