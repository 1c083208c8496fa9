"""The shapes-world policy pipeline in small: build the tiny world, SFT a tiny llava from its random
init through scripts/sft.py, evaluate it and the untrained model through scripts/evaluate.py.

What the reduced run can show honestly. An untrained model writes byte soup that names no object,
so its CHAIR_i is 0 of 0 mentions (reported as 0.0 by the metric): a vacuous score, not a low one.
The trained model must therefore first *say something checkable*: name objects in its captions,
and get some of them right (CHAIR_i below 1, recall above the untrained model's). A run where
training did nothing fails every one of these. A few dozen
seconds of training on 24 scenes do not make the policy look at the image (its captions are the
training set's commonest); that takes the full recipe (recipes/shapes/policy_sft.yaml: a trained
CLIP tower, thousands of scenes), which tests/test_demo.py runs.
"""

import importlib.util
import json

import pytest
from helpers import REPO, load_script

from selfalign.config import parse_recipe
from selfalign.errors import SelfAlignError
from selfalign.evaluation.metrics import caption_scores, hallucination_kinds

REPORT_KEYS = {"model", "eval_set", "captions", "pope", "recipe", "seconds"}
CAPTION_KEYS = {"chair_i", "chair_s", "recall", "mean_caption_words", "num_mentions", "num_captions"}
POPE_GROUPS = {"random", "popular", "adversarial", "all"}
POPE_KEYS = {"accuracy", "precision", "recall", "f1", "yes_ratio", "unparsed"}


def _build_tiny_world(kind: str, output_dir) -> None:
    path = REPO / "dataset_builders" / "shapes.py"
    spec = importlib.util.spec_from_file_location("selfalign_builder_shapes", path)
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    args = ["--config", str(REPO / "recipes" / "tiny" / "shapes.yaml"), "--kind", kind,
            "--output_dir", str(output_dir)]  # fmt: skip
    builder.main(*parse_recipe((builder.ShapesWorldArguments, builder.BuildArguments), args))


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny_world")
    for kind in ("sft", "eval"):
        _build_tiny_world(kind, root / kind)
    return {"sft": root / "sft", "eval": root / "eval"}


def _evaluate(model, eval_set, output_dir) -> dict:
    evaluate_script = load_script("evaluate")
    args = ["--config", str(REPO / "recipes" / "tiny" / "eval.yaml"), "--model_name_or_path", str(model),
            "--eval_dataset", str(eval_set), "--output_dir", str(output_dir)]  # fmt: skip
    return evaluate_script.main(*parse_recipe(evaluate_script.RECIPE_DATACLASSES, args))


def test_trained_policy_names_true_objects_where_the_untrained_one_says_nothing(
    tiny_world, tiny_model_dirs, tmp_path
):
    untrained = _evaluate(tiny_model_dirs["llava"], tiny_world["eval"], tmp_path / "untrained_eval")

    policy_dir = tmp_path / "policy"
    sft = load_script("sft")
    sft.main(*parse_recipe(sft.RECIPE_DATACLASSES, [
        "--config", str(REPO / "recipes" / "tiny" / "policy_sft.yaml"),
        "--model_name_or_path", str(tiny_model_dirs["llava"]),
        "--dataset_name", str(tiny_world["sft"]), "--output_dir", str(policy_dir),
    ]))  # fmt: skip
    trained = _evaluate(policy_dir, tiny_world["eval"], tmp_path / "trained_eval")

    # The reports: every number, the recipe and the model, as JSON and as a markdown table.
    written = json.loads((tmp_path / "trained_eval" / "report.json").read_text())
    assert REPORT_KEYS <= set(written) and written["model"]["name_or_path"] == str(policy_dir)
    assert CAPTION_KEYS <= set(written["captions"])
    assert set(written["pope"]) == POPE_GROUPS
    assert all(POPE_KEYS <= set(scores) for scores in written["pope"].values())
    assert written["recipe"]["eval_dataset"] == str(tiny_world["eval"])
    table = (tmp_path / "trained_eval" / "report.md").read_text()
    assert "| CHAIR_i | CHAIR_s |" in table and "| adversarial |" in table
    low, high = written["captions"]["intervals_95"]["chair_i"]
    assert f"| 95% interval (scenes resampled) | {low:.3f}-{high:.3f} |" in table
    kinds = written["captions"]["hallucinations_by_kind"]
    assert "| count | " + " | ".join(str(count) for count in kinds.values()) + " |" in table

    before, after = untrained["captions"], trained["captions"]
    # Untrained: nothing checkable, so its CHAIR_i (0 of 0 mentions) says nothing.
    assert before["num_mentions"] == 0 and before["recall"] == 0.0
    # Trained: names objects in its captions, some of them truly there.
    assert after["num_mentions"] >= after["num_captions"]
    assert after["chair_i"] < 1.0 and after["recall"] > before["recall"]


def test_evaluate_rejects_a_missing_eval_set(tiny_model_dirs, tmp_path):
    with pytest.raises(SelfAlignError, match="could not load the eval set"):
        _evaluate(tiny_model_dirs["qwen2_vl"], tmp_path / "no_such_eval_set", tmp_path / "out")


def test_evaluate_rejects_rows_that_are_not_an_eval_build(tiny_world, tiny_model_dirs, tmp_path):
    with pytest.raises(
        SelfAlignError, match=r"missing the column\(s\) \['image', 'instruction', 'objects', 'pope'\]"
    ):
        _evaluate(tiny_model_dirs["qwen2_vl"], tiny_world["sft"], tmp_path / "out")


def test_evaluate_merges_an_adapter_into_its_base(tiny_world, tiny_model_dirs, tmp_path):
    adapter_dir = tmp_path / "adapter"
    sft = load_script("sft")
    sft.main(*parse_recipe(sft.RECIPE_DATACLASSES, [
        "--config", str(REPO / "recipes" / "tiny" / "sft_lora.yaml"),
        "--model_name_or_path", str(tiny_model_dirs["qwen2_vl"]),
        "--dataset_name", str(tiny_world["sft"]), "--output_dir", str(adapter_dir),
    ]))  # fmt: skip
    assert (adapter_dir / "adapter_config.json").is_file()

    report = _evaluate(adapter_dir, tiny_world["eval"], tmp_path / "adapter_eval")
    assert report["model"]["adapter_base"] == str(tiny_model_dirs["qwen2_vl"])
    assert report["captions"]["num_captions"] == 12


def test_hallucination_kinds_split_every_wrong_mention_by_what_is_wrong():
    truth = [["red circle", "blue square"], ["green star"]]
    captions = [
        # red square: both attributes present, on different objects; red star: the shape is absent;
        # green circle: the colour is absent; a triangle: a bare absent shape; the rest are right.
        "A red circle, a red square and a blue square. There is a red star, a green circle and a triangle.",
        # yellow triangle: neither is in the scene, and said twice it is still one mention; "star" alone is right.
        "A green star and a yellow triangle. The star is large. There is a yellow triangle.",
    ]
    kinds = hallucination_kinds(captions, truth)
    assert kinds == {
        "absent_companion": 0, "wrong_shape": 1, "wrong_colour": 1, "swapped": 1, "both_absent": 1, "absent_shape": 1
    }  # fmt: skip
    scores = caption_scores(captions, truth)
    assert scores["hallucinations_by_kind"] == kinds
    assert sum(kinds.values()) == scores["num_hallucinated_mentions"]


def test_intervals_bracket_the_scores_narrow_with_more_scenes_and_are_reproducible():
    truth = [["red circle"], ["red circle"]]
    captions = ["There is a red circle.", "There is a blue square."]  # CHAIR_i 0.5, recall 0.5
    scores = caption_scores(captions * 20, truth * 20)
    low, high = scores["intervals_95"]["chair_i"]
    assert low < scores["chair_i"] == 0.5 < high
    few_low, few_high = caption_scores(captions * 3, truth * 3)["intervals_95"]["chair_i"]
    assert few_high - few_low > high - low
    assert caption_scores(captions * 20, truth * 20)["intervals_95"] == scores["intervals_95"]
    # Every scene alike: nothing to resample, the interval is the value.
    alike = caption_scores(["There is a red circle."] * 5, [["red circle"]] * 5)["intervals_95"]
    assert alike["chair_i"] == [0.0, 0.0] and alike["recall"] == [1.0, 1.0]
    assert alike["mean_caption_words"] == [5.0, 5.0]
