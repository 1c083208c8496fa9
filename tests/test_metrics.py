"""The CHAIR and POPE metrics as local `evaluate` modules, on hand-made captions and answers."""

import socket
from pathlib import Path

import evaluate
import pytest

REPO = Path(__file__).resolve().parents[1]

SHAPES = ["circle", "square", "triangle", "star"]
SHAPE_PLURALS = {shape: [f"{shape}s"] for shape in SHAPES}  # canonical -> surface forms
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]


class NetworkBlocked(RuntimeError):
    pass


@pytest.fixture(scope="module")
def no_network():
    """Name lookups and connections fail while this is active, so a load that reaches for the Hub fails loudly."""

    def refuse(*args, **kwargs):
        raise NetworkBlocked("network access during a metrics test")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", refuse)
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket.socket, "connect_ex", refuse)
        yield patch


# keep_in_memory: a compute() that raises leaves evaluate's on-disk cache file locked, and the next
# compute() on that instance then waits a second for the lock before picking another file.


@pytest.fixture(scope="module")
def chair(no_network):
    # A relative path is resolved against the working directory; from anywhere else,
    # "metrics/chair" would be taken for a Hub repo id.
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        return evaluate.load("metrics/chair", keep_in_memory=True)


@pytest.fixture(scope="module")
def pope(no_network):
    return evaluate.load(str(REPO / "metrics" / "pope"), keep_in_memory=True)


def shapes_chair(chair, predictions, references):
    return chair.compute(
        predictions=predictions,
        references=references,
        objects=SHAPES,
        synonyms=SHAPE_PLURALS,
        attributes=COLOURS,
        return_details=True,
    )


def test_metrics_load_offline_from_local_folders(no_network, chair, pope):
    with pytest.raises(NetworkBlocked):
        socket.create_connection(("huggingface.co", 443))
    assert chair.name == "chair" and pope.name == "pope"
    result = chair.compute(predictions=["a dog"], references=[["dog"]], objects=["dog"])
    assert all(isinstance(value, int | float) for value in result.values())


# CHAIR


def test_perfect_caption(chair):
    result = shapes_chair(chair, ["A red circle and a blue square."], [["red circle", "blue square"]])
    assert result["chair_i"] == 0.0
    assert result["chair_s"] == 0.0
    assert result["recall"] == 1.0
    assert result["mean_mentions"] == 2.0
    assert result["details"][0]["mentions"] == ["red circle", "blue square"]


def test_one_hallucinated_object_among_three_mentions(chair):
    result = shapes_chair(
        chair,
        ["A red circle, a blue square and a green triangle.", "A yellow star next to a purple circle."],
        [["red circle", "blue square"], ["yellow star", "purple circle"]],
    )
    first, second = result["details"]
    assert first["chair_i"] == pytest.approx(1 / 3)
    assert first["hallucinated_caption"] is True
    assert first["hallucinated"] == ["green triangle"]
    assert second["chair_i"] == 0.0
    # Aggregates are over mentions (CHAIR_i, recall) and over captions (CHAIR_s), not averages.
    assert result["chair_i"] == pytest.approx(1 / 5)
    assert result["chair_s"] == 0.5
    assert result["recall"] == 1.0
    assert result["num_mentions"] == 5
    assert result["num_hallucinated_mentions"] == 1
    assert result["num_object_hallucinations"] == 1
    assert result["num_attribute_hallucinations"] == 0
    assert result["num_hallucinated_captions"] == 1
    assert result["mean_mentions"] == 2.5


def test_plurals_match_through_synonyms(chair):
    result = chair.compute(
        predictions=["Two circles and one square."],
        references=[["circle", "circle", "square"]],
        objects=SHAPES,
        synonyms=SHAPE_PLURALS,
    )
    assert result["chair_i"] == 0.0
    assert result["recall"] == 1.0
    assert result["num_counted_mentions"] == 2
    assert result["num_count_errors"] == 0

    without_plurals = chair.compute(
        predictions=["Two circles."], references=[["circle"]], objects=SHAPES, return_details=True
    )
    assert without_plurals["num_mentions"] == 0


def test_attribute_hallucination_and_attribute_free_mention(chair):
    result = shapes_chair(
        chair,
        ["A blue circle.", "A circle.", "A small red circle.", "A red small circle."],
        [["red circle"]] * 4,
    )
    wrong_colour, no_colour, size_first, size_between = result["details"]
    assert wrong_colour["hallucinated"] == ["blue circle"]
    assert wrong_colour["attribute_hallucinations"] == ["blue circle"]
    # "circle" is true of any circle, but does not recall the ground truth "red circle".
    assert no_colour["hallucinated"] == [] and no_colour["recalled"] == []
    assert size_first["mentions"] == size_between["mentions"] == ["red circle"]
    assert size_first["recalled"] == size_between["recalled"] == ["red circle"]
    assert result["num_attribute_hallucinations"] == 1
    assert result["num_object_hallucinations"] == 0
    assert result["chair_i"] == 0.25
    assert result["recall"] == pytest.approx(2 / 4)


def test_attributes_attach_only_to_the_adjacent_noun(chair):
    result = shapes_chair(chair, ["The circle is blue.", "Red and blue circles."], [["red circle"]] * 2)
    predicate, coordinated = result["details"]
    assert predicate["mentions"] == ["circle"]
    assert coordinated["mentions"] == ["blue circle"]


def test_empty_caption(chair):
    result = shapes_chair(chair, [""], [["red circle", "blue square"]])
    assert result["num_mentions"] == 0
    assert result["chair_i"] == 0.0
    assert result["chair_s"] == 0.0
    assert result["recall"] == 0.0
    assert result["details"][0]["hallucinated_caption"] is False


def test_negated_mentions_are_skipped(chair):
    result = shapes_chair(
        chair,
        [
            "A red circle. There is no blue square.",
            "A red circle; there isn't a blue square, not the two green stars.",
            "No triangle or square.",
        ],
        [["red circle"], ["red circle"], ["red circle"]],
    )
    plain, contracted, scope = result["details"]
    assert plain["mentions"] == ["red circle"] and plain["negated"] == ["blue square"]
    assert contracted["mentions"] == ["red circle"]
    assert contracted["negated"] == ["blue square", "green star"]
    # Negation reaches only the phrase right after it.
    assert scope["negated"] == ["triangle"] and scope["hallucinated"] == ["square"]
    assert result["num_negated_mentions"] == 4
    assert result["chair_i"] == pytest.approx(1 / 3)


def test_duplicate_mentions_count_once(chair):
    result = shapes_chair(
        chair,
        ["A red circle. The red circle is left of a green star, and the green star is big."],
        [["red circle"]],
    )
    assert result["details"][0]["mentions"] == ["red circle", "green star"]
    assert result["num_mentions"] == 2
    assert result["chair_i"] == 0.5


def test_count_errors_are_reported_apart_from_chair(chair):
    result = shapes_chair(
        chair,
        ["Three red circles and 1 blue square.", "A red circle."],
        [["red circle", "red circle", "blue square"], ["red circle", "red circle"]],
    )
    assert result["chair_i"] == 0.0
    assert result["num_counted_mentions"] == 2  # "a" is not a count
    assert result["num_count_errors"] == 1
    assert result["count_error_rate"] == 0.5
    assert result["details"][0]["count_errors"] == [{"mention": "red circle", "stated": 3, "true": 2}]


def test_coco_style_objects_without_attributes(chair):
    result = chair.compute(
        predictions=["Two people and a dog sit at a dining table.", "A man with a cat."],
        references=[["person", "dining table"], ["person"]],
        objects=["person", "dog", "cat", "dining table", "table"],
        synonyms={"people": "person", "man": "person", "dogs": "dog"},  # surface -> canonical
        return_details=True,
    )
    first, second = result["details"]
    assert first["mentions"] == ["person", "dog", "dining table"]  # the longest phrase wins
    assert first["hallucinated"] == ["dog"]
    assert second["hallucinated"] == ["cat"]
    assert result["chair_i"] == pytest.approx(2 / 5)
    assert result["chair_s"] == 1.0
    assert result["recall"] == 1.0
    assert result["num_object_hallucinations"] == 2


def test_vocabulary_given_at_load_time(no_network):
    chair = evaluate.load(str(REPO / "metrics" / "chair"), objects=SHAPES, synonyms=SHAPE_PLURALS)
    assert chair.compute(predictions=["two stars"], references=[["circle"]])["chair_i"] == 1.0
    # A vocabulary given to compute() replaces the load-time one as a whole.
    overridden = chair.compute(predictions=["a dog"], references=[["dog"]], objects=["dog"])
    assert overridden["num_mentions"] == 1 and overridden["chair_i"] == 0.0


@pytest.mark.parametrize(
    ("references", "vocabulary", "message"),
    [
        ([["dog"]], {}, "needs `objects`"),
        ([["a shadow"]], {"objects": SHAPES}, "must name exactly one object"),
        ([["circle"]], {"objects": SHAPES, "synonyms": {"disc": "disk"}}, "missing from `objects`"),
        (
            [["circle"]],
            {"objects": ["orange", "circle"], "attributes": ["orange"]},
            "both attributes and objects",
        ),
    ],
)
def test_bad_vocabulary_or_references_are_rejected(chair, references, vocabulary, message):
    with pytest.raises(ValueError, match=message):
        chair.compute(predictions=["a circle"], references=references, **vocabulary)


# POPE


def test_pope_all_yes(pope):
    result = pope.compute(predictions=["yes"] * 5, references=["yes", "yes", "no", "no", "no"])
    assert result["recall"] == 1.0
    assert result["precision"] == pytest.approx(2 / 5)
    assert result["yes_ratio"] == 1.0
    assert result["accuracy"] == pytest.approx(2 / 5)
    assert result["f1"] == pytest.approx(4 / 7)
    assert (result["true_positives"], result["false_positives"]) == (2, 3)
    assert (result["true_negatives"], result["false_negatives"]) == (0, 0)


def test_pope_perfect_answers(pope):
    result = pope.compute(predictions=["yes", "no", "no", "yes"], references=["yes", "no", "no", "yes"])
    assert (result["accuracy"], result["precision"], result["recall"], result["f1"]) == (1.0, 1.0, 1.0, 1.0)
    assert result["yes_ratio"] == 0.5
    assert result["unparsed"] == 0
    assert result["num_examples"] == 4


def test_pope_unparsed_answers_count_as_no(pope):
    result = pope.compute(
        predictions=["I cannot tell.", "Maybe, it's hard to say.", "Yes"], references=["yes", "no", "yes"]
    )
    assert result["unparsed"] == 2
    assert (result["true_positives"], result["false_negatives"], result["true_negatives"]) == (1, 1, 1)
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["recall"] == 0.5
    assert result["precision"] == 1.0


def test_pope_mixed_case_and_first_answer_word(pope):
    result = pope.compute(
        predictions=[
            "Yes.",
            "YES, there is a dog.",
            "No.",
            "nO",
            "No, yes.",
            "The answer is yes",
            "yesterday",
        ],
        references=["yes", "yes", "no", "no", "no", " Yes ", "no"],
    )
    assert result["accuracy"] == 1.0
    assert result["unparsed"] == 1  # "yesterday" is not "yes"


def test_pope_rejects_references_other_than_yes_or_no(pope):
    with pytest.raises(ValueError, match="must be"):
        pope.compute(predictions=["yes"], references=["maybe"])
