"""scripts/train_clip.py on a small shapes world: training must help, and the result must load."""

import json
import subprocess
import sys
import uuid

import torch
from helpers import REPO, load_script
from huggingface_hub import HfApi, ModelCard
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from selfalign.config import parse_recipe

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


def test_training_improves_held_out_retrieval_and_publishes(tmp_path, hub_server):
    # More scenes than the tiny world's default 24: held-out retrieval needs something to generalise from.
    build_clip_rows(tmp_path / "train", "--train_scenes", "300")
    build_clip_rows(tmp_path / "eval", "--scene_split", "eval", "--eval_scenes", "40", "--split", "test")
    repo_id = f"tests/shapes-clip-{uuid.uuid4().hex[:8]}"
    train_clip = load_script("train_clip")
    (args,) = parse_recipe(
        (train_clip.ClipTrainingArguments,),
        [
            "--config",
            str(REPO / "recipes" / "tiny" / "clip.yaml"),
            "--train_dataset",
            str(tmp_path / "train"),
            "--eval_dataset",
            str(tmp_path / "eval"),
            "--output_dir",
            str(tmp_path / "clip"),
            "--push_to_hub",
            "true",
            "--hub_model_id",
            repo_id,
        ],
    )
    train_clip.main(args)

    metrics = json.loads((tmp_path / "clip" / "metrics.json").read_text())
    for key in (*RETRIEVAL_KEYS, "contrastive_loss", "train_loss_first_steps", "train_loss_last_steps"):
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
