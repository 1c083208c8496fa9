"""The scene-truth scorer (CSR's oracle ablation on the shapes world): scores, its inputs, and CSR pairs built with it."""

import subprocess
import sys

import pytest
import yaml
from datasets import load_dataset
from helpers import REPO, run_builder
from PIL import Image

from selfalign.errors import SelfAlignError
from selfalign.scores import SCENE_TRUTH_SCORER, SceneTruthScorer
from selfalign.synthetic import COLOURS


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """A tiny world's eval build of its 24 training scenes (with their objects) and its sft build (no objects)."""
    root = tmp_path_factory.mktemp("scene_truth")
    for kind in ("eval", "sft"):
        run_builder("shapes", "--config", str(REPO / "recipes" / "tiny" / "shapes.yaml"), "--kind", kind,
                    "--scene_split", "train", "--output_dir", str(root / kind))  # fmt: skip
    return root


def test_a_sentence_scores_its_true_mentions_and_a_false_one_outweighs_them_all(scenes):
    rows = load_dataset(str(scenes / "eval"), split="train")
    scorer = SceneTruthScorer(str(scenes / "eval"))
    first, second = rows[0], rows[1]
    present = first["objects"][0]
    colour, shape = present.split()
    absent = next(f"{other} {shape}" for other in COLOURS if f"{other} {shape}" not in first["objects"])
    sentences = [
        f"There is a {present}.",
        f"There is a {absent}.",
        f"A {present} and a {absent}.",
        " and ".join(f"a {obj}" for obj in first["objects"]) + ".",  # every object, nothing false
        " and ".join(f"a {obj}" for obj in [*first["objects"], absent]) + ".",
        f"The {shape} is large.",  # a bare shape that some object has
        "The background is white.",  # no object named
        "",  # the response's end (an EOS child)
    ]
    first_scores, second_scores = scorer.score(
        [first["image"], second["image"]], [sentences, [f"There is a {second['objects'][0]}."]]
    )
    every = float(len(first["objects"]))
    assert first_scores == [1.0, -10.0, -9.0, every, every - 10.0, 1.0, 0.0, 0.0]
    # Ranked among siblings, a sentence with a false mention is below every sentence without one.
    assert max(first_scores[i] for i in (1, 2, 4)) < min(first_scores[i] for i in (0, 3, 5, 6, 7))
    assert second_scores == [1.0]  # each image is scored against its own scene
    assert (scorer.stats.images_encoded, scorer.stats.sentences_encoded) == (2, 9)
    # An image without sentences is not looked up.
    assert scorer.score([first["image"]], [[]]) == [[]]


def test_it_scores_only_images_of_its_scenes(scenes):
    scorer = SceneTruthScorer(str(scenes / "eval"))
    with pytest.raises(SelfAlignError, match="not one of its scenes"):
        scorer.score([Image.new("RGB", (64, 64), "white")], [["There is a red circle."]])


def test_it_needs_the_objects_of_an_eval_build(scenes, tmp_path):
    with pytest.raises(SelfAlignError, match=r"columns \['image', 'objects'\] .*--kind eval"):
        SceneTruthScorer(str(scenes / "sft"))
    with pytest.raises(SelfAlignError, match="could not load the scenes"):
        SceneTruthScorer(str(tmp_path / "missing"))


def _recipe(tmp_path, tiny_model_dirs, **changes) -> str:
    recipe = yaml.safe_load((REPO / "recipes" / "tiny" / "csr" / "pairs.yaml").read_text())
    recipe.pop("clip_model")  # the scene truth needs no CLIP
    recipe.update(policy_model=str(tiny_model_dirs["llava"]), scorer="scene_truth", **changes)
    path = tmp_path / "pairs.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_csr_pairs_with_the_scene_truth_say_so_in_rows_and_card(scenes, tiny_model_dirs, tmp_path):
    # As iterate_scene_truth.yaml does it: the CLIP recipe with the scorer switched, clip_model kept.
    recipe = _recipe(
        tmp_path, tiny_model_dirs, image_folder=None, dataset_name=str(scenes / "eval"), clip_model="unused"
    )
    output = tmp_path / "pairs"
    result = run_builder("csr_pairs", "--config", recipe, "--output_dir", str(output))
    rows = load_dataset(str(output), split="train")
    assert len(rows) > 0 and set(rows["scorer_model"]) == {SCENE_TRUTH_SCORER}
    assert "scene_truth scorer: 24 images" in result.stderr  # the build's 24 scenes, each looked up once
    card = (output / "README.md").read_text()
    assert "scored by the scene's truth in CLIP's place (an oracle ablation" in card
    assert "mean scene-truth score" in card
    assert "| scorer |" not in card and "truncated to CLIP" not in card
    assert "clip_model" not in card and "clip_batch_size" not in card  # no CLIP was used


def test_the_scene_truth_refuses_images_from_a_folder(tiny_model_dirs, image_folder, tmp_path):
    recipe = _recipe(tmp_path, tiny_model_dirs, image_folder=str(image_folder))
    result = subprocess.run(
        [sys.executable, str(REPO / "dataset_builders" / "csr_pairs.py"), "--config", recipe,
         "--output_dir", str(tmp_path / "pairs")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode != 0
    assert "error: scorer: scene_truth scores the scenes of a dataset_name source" in result.stderr
    assert not (tmp_path / "pairs").exists()
