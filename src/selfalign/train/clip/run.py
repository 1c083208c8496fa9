"""The CLIP training's one skeleton (`run_clip_training`): load, encode, measure, train, measure,
save the model, metrics.json and card, push."""

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch
from datasets import load_dataset
from transformers import CLIPModel, CLIPProcessor

from selfalign.publish.hub import check_can_push, push_folder
from selfalign.train.clip.arguments import ClipTrainingArguments
from selfalign.train.clip.card import write_model_card
from selfalign.train.clip.metrics import held_out_metrics, loss_windows
from selfalign.train.clip.scenes import EncodedScenes, encode_scenes
from selfalign.train.clip.training import pretrain_tower, train

logger = logging.getLogger("selfalign")


def run_clip_training(args: ClipTrainingArguments, initial: str | Path) -> dict:
    """Train the CLIP saved in `initial` (a `CLIPModel` and `CLIPProcessor` folder) as `args` say;
    write the model, processor, metrics.json and card to `args.output_dir`, push them if asked, and
    return the metrics."""
    if args.push_to_hub:
        check_can_push(args.hub_model_id)
    torch.set_num_threads(args.num_threads)
    model, processor = CLIPModel.from_pretrained(initial), CLIPProcessor.from_pretrained(initial)
    train_scenes = encode_scenes(load_dataset(args.train_dataset, split=args.train_split), processor)
    eval_scenes = encode_scenes(load_dataset(args.eval_dataset, split=args.eval_split), processor)
    metrics = train_and_measure(model, processor, train_scenes, eval_scenes, args)
    output_dir = Path(args.output_dir)
    save_outputs(output_dir, model, processor, metrics, args)
    logger.info(
        "held-out retrieval: before %s, after %s", metrics["before_training"], metrics["after_training"]
    )
    if args.push_to_hub:
        url = push_folder(
            output_dir,
            args.hub_model_id,
            private=args.hub_private_repo,
            commit_message="Tiny shapes-world CLIP (scripts/train_clip.py)",
        )
        logger.info("pushed to %s", url)
    return metrics


def train_and_measure(
    model: CLIPModel,
    processor: CLIPProcessor,
    train_scenes: EncodedScenes,
    eval_scenes: EncodedScenes,
    args: ClipTrainingArguments,
) -> dict:
    """Both stages in place, the held-out metrics before and after; return the metrics.json mapping."""
    torch.manual_seed(args.seed)
    before = held_out_metrics(model, processor, eval_scenes)
    started = time.perf_counter()
    pretraining = {}
    if args.tower_pretraining_steps:
        pretraining = loss_windows(pretrain_tower(model, train_scenes, args), "tower_pretraining")
    losses = train(model, processor, train_scenes, args)
    train_seconds = round(time.perf_counter() - started, 1)
    after = held_out_metrics(model, processor, eval_scenes)
    return {
        **after,
        "num_train_scenes": len(train_scenes.captions),
        "num_eval_scenes": len(eval_scenes.captions),
        **pretraining,
        **loss_windows(losses, "train"),
        "train_seconds": train_seconds,
        "before_training": before,
        "after_training": after,
        "recipe": asdict(args),
    }


def save_outputs(
    output_dir: Path, model: CLIPModel, processor: CLIPProcessor, metrics: dict, args: ClipTrainingArguments
) -> None:
    """The model and processor in the standard layout, metrics.json and the model card."""
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_model_card(output_dir, args, metrics)
