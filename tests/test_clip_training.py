"""The tiny CLIP's training (selfalign.train.clip, run by scripts/train_clip.py) on a small shapes
world: training must help, and the result must load."""

import json
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from datasets import load_dataset
from helpers import REPO, load_script
from huggingface_hub import HfApi, ModelCard
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from selfalign.config import RecipeError, parse_recipe
from selfalign.tiny_zoo import build_tiny_clip
from selfalign.train.clip.arguments import ClipTrainingArguments
from selfalign.train.clip.metrics import attribute_discrimination
from selfalign.train.clip.scenes import EncodedScenes, encode_scenes
from selfalign.train.clip.training import pretrain_tower, train

RETRIEVAL_KEYS = ("image_to_text_top1", "image_to_text_top5", "text_to_image_top1", "text_to_image_top5")


def build_clip_rows(output_dir, *overrides: str) -> None:
    command = [
        sys.executable,
        str(REPO / "dataset_builders" / "shapes.py"),
        "--config",
        str(REPO / "recipes" / "tiny" / "shapes.yaml"),
        "--kind",
        "clip",
        "--output_dir",
        str(output_dir),
        *overrides,
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.fixture(scope="module")
def clip_rows(tmp_path_factory) -> dict[str, Path]:
    # More scenes than the tiny world's default 24: held-out retrieval needs something to generalise from.
    root = tmp_path_factory.mktemp("clip_rows")
    build_clip_rows(root / "train", "--train_scenes", "300")
    build_clip_rows(root / "eval", "--scene_split", "eval", "--eval_scenes", "40", "--split", "test")
    return {"train": root / "train", "eval": root / "eval"}


def clip_recipe(clip_rows, output_dir, *overrides: str, dataclasses=(ClipTrainingArguments,)):
    """The tiny recipe on `clip_rows`, parsed into the library's arguments (or into `dataclasses`)."""
    (args,) = parse_recipe(
        dataclasses,
        ["--config", str(REPO / "recipes" / "tiny" / "clip.yaml"), "--train_dataset", str(clip_rows["train"]),
         "--eval_dataset", str(clip_rows["eval"]), "--output_dir", str(output_dir), *overrides],
    )  # fmt: skip
    return args


def test_training_improves_held_out_retrieval_and_publishes(tmp_path, hub_server, clip_rows):
    repo_id = f"tests/shapes-clip-{uuid.uuid4().hex[:8]}"
    train_clip = load_script("train_clip")
    args = clip_recipe(
        clip_rows, tmp_path / "clip", "--push_to_hub", "true", "--hub_model_id", repo_id,
        dataclasses=train_clip.RECIPE_DATACLASSES,
    )  # fmt: skip
    train_clip.main(args)

    metrics = json.loads((tmp_path / "clip" / "metrics.json").read_text())
    for key in (
        *RETRIEVAL_KEYS,
        "contrastive_loss",
        "shape_discrimination",
        "colour_discrimination",
        "train_loss_first_steps",
        "train_loss_last_steps",
    ):
        assert isinstance(metrics[key], float), key
    assert metrics["num_eval_scenes"] == 40
    before, after = metrics["before_training"], metrics["after_training"]
    # Fails if training did nothing: both losses fall and held-out retrieval beats the untrained model.
    assert metrics["train_loss_last_steps"] < metrics["train_loss_first_steps"] - 0.1
    assert after["contrastive_loss"] < before["contrastive_loss"] - 0.1
    assert sum(after[key] for key in RETRIEVAL_KEYS) > sum(before[key] for key in RETRIEVAL_KEYS)

    for source in (tmp_path / "clip", repo_id):  # the local folder and the pushed repo
        model = CLIPModel.from_pretrained(source)
        processor = CLIPProcessor.from_pretrained(source)
        image = Image.new("RGB", (64, 64), "white")
        inputs = processor(text=["There is a red circle."], images=[image], return_tensors="pt", padding=True)
        with torch.no_grad():
            assert model(**inputs).logits_per_image.shape == (1, 1)
    assert {"model.safetensors", "config.json", "README.md", "metrics.json"} <= set(
        HfApi().list_repo_files(repo_id)
    )
    card = ModelCard.load(repo_id)
    assert card.data.library_name == "transformers"
    assert "clip" in card.data.tags


class ScoresByObject:
    """Stands in for a CLIPModel: the text of vocabulary entry k embeds as the k-th unit vector, so
    an image's score for an object sentence is the entry of that object in the image's row."""

    def __init__(self, image_scores: torch.Tensor):
        self.image_scores = image_scores

    def eval(self):
        return self

    def __call__(self, pixel_values, input_ids, attention_mask):
        assert len(pixel_values) == len(self.image_scores)
        return SimpleNamespace(image_embeds=self.image_scores, text_embeds=torch.eye(len(input_ids)))


def test_attribute_discrimination_counts_present_against_absent_rivals(tmp_path):
    processor = CLIPProcessor.from_pretrained(build_tiny_clip(tmp_path / "clip"))
    captions = ["There is a red circle.", "Two shapes: a blue square and a red star."]
    scenes = EncodedScenes(torch.zeros(2, 3, 32, 32), captions, [[], []])
    # Vocabulary (colours x shapes, sorted): blue circle, blue square, blue star, red circle, red square, red star.
    image_scores = torch.tensor(
        [
            [0.0, 0.0, 0.0, 1.0, 2.0, 0.0],  # red circle present; the absent red square scores higher
            [0.0, 1.0, 1.5, 0.0, 0.0, 1.0],  # blue square, red star present; the absent blue star beats both
        ]
    )
    metrics = attribute_discrimination(ScoresByObject(image_scores), processor, scenes)
    # Shape rivals: red circle vs red square (lost), red star (won); blue square vs blue circle (won),
    # blue star (lost); red star vs red circle, red square (won both): 4 of 6.
    # Colour rivals: red circle vs blue circle (won); blue square vs red square (won); red star vs
    # blue star (lost): 2 of 3.
    assert metrics == {"shape_discrimination": round(4 / 6, 4), "colour_discrimination": round(2 / 3, 4)}


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> list[str]:
    return [name for name, value in module.state_dict().items() if not torch.equal(value, before[name])]


def test_tower_pretraining_teaches_the_tower_then_the_locked_stage_trains_only_the_text_side(
    tmp_path, clip_rows
):
    args = clip_recipe(
        clip_rows, tmp_path / "clip", "--tower_pretraining_steps", "80", "--lock_vision_tower", "true",
        "--max_steps", "40",
    )  # fmt: skip
    model = CLIPModel.from_pretrained(build_tiny_clip(tmp_path / "initial"))
    processor = CLIPProcessor.from_pretrained(tmp_path / "initial")
    scenes = encode_scenes(load_dataset(str(clip_rows["train"]), split="train"), processor)

    initial = weights(model)
    losses = pretrain_tower(model, scenes, args)
    assert len(losses) == 80 and sum(losses[-10:]) < sum(losses[:10]) - 1.0  # 10 steps: mean falls by 0.1
    moved = changed(initial, model)
    assert moved and all(name.startswith("vision_model.") for name in moved)  # the tower alone

    pretrained = weights(model)
    train(model, processor, scenes, args)
    moved = changed(pretrained, model)
    assert not [name for name in moved if name.startswith("vision_model.")], "the locked tower moved"
    assert any(name.startswith("text_model.") for name in moved)
    assert "visual_projection.weight" in moved  # the image embedding's projection still learns

    load_script("train_clip").main(args)  # the whole script with both stages
    metrics = json.loads((tmp_path / "clip" / "metrics.json").read_text())
    assert metrics["tower_pretraining_loss_last_steps"] < metrics["tower_pretraining_loss_first_steps"]
    assert "the vision tower locked (LiT)" in (tmp_path / "clip" / "README.md").read_text()


def test_a_locked_tower_must_be_pretrained_and_the_preset_must_exist(tmp_path, clip_rows):
    with pytest.raises(RecipeError, match="tower_pretraining_steps > 0"):
        clip_recipe(clip_rows, tmp_path / "clip", "--lock_vision_tower", "true")
    with pytest.raises(RecipeError, match="unknown preset 'huge'"):  # the script's check: the zoo's sizes
        clip_recipe(
            clip_rows, tmp_path / "clip", "--preset", "huge",
            dataclasses=load_script("train_clip").RECIPE_DATACLASSES,
        )  # fmt: skip
    assert not (tmp_path / "clip").exists()
