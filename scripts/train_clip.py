"""Train the tiny CLIP contrastively on the shapes world: CSR's visual scorer, offline.

    python dataset_builders/shapes.py --config recipes/shapes/world.yaml --kind clip \
        --output_dir outputs/shapes/clip
    python dataset_builders/shapes.py --config recipes/shapes/world.yaml --kind clip \
        --scene_split eval --split test --output_dir outputs/shapes/clip_eval
    python scripts/train_clip.py --config recipes/shapes/clip.yaml

The model starts from `selfalign.tiny_zoo.build_tiny_clip` (random weights of the recipe's size
`preset`, the zoo's tokenizer and processor). Two stages:

1. Optional (`tower_pretraining_steps` > 0): the vision tower alone is pretrained as a multi-label
   classifier of the scene's objects: a linear head on the mean of its last layer's patch features
   predicts which "<colour> <shape>" objects the scene holds (read from the training captions, which
   name them all), with a binary cross-entropy loss. Contrastive training alone never taught a tower
   of this size to tell shapes apart; this does (recipes/shapes/clip.yaml has the numbers).
2. Contrastive: each step takes a batch of distinct training scenes and pairs every image with one
   of its texts, drawn from its caption and its per-object sentences: CSR scores single sentences
   against the image, so the model must see both. The loss is CLIP's symmetric InfoNCE
   (`CLIPModel(return_loss=True)`). With `lock_vision_tower`, the pretrained tower stays as it is
   and the text tower learns to match it ("locked-image tuning", LiT; Zhai et al. 2022).

The output folder holds the model and processor in the standard layout (`CLIPModel.from_pretrained`,
`CLIPProcessor.from_pretrained`), a model card, and `metrics.json`: image-to-text and text-to-image
retrieval accuracy (top-1, top-5) over the held-out scenes' captions, before and after training.
"""

import json
import logging
import math
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from datasets import load_dataset
from huggingface_hub import ModelCard, ModelCardData
from transformers import CLIPModel, CLIPProcessor

from selfalign.commands import setup_logging
from selfalign.config import parse_recipe
from selfalign.errors import SelfAlignError
from selfalign.publish.hub import check_can_push, push_folder
from selfalign.synthetic.language import mentioned_objects
from selfalign.tiny_zoo import PRESETS, build_tiny_clip

logger = logging.getLogger("selfalign")
RETRIEVAL_KS = (1, 5)


@dataclass
class ClipTrainingArguments:
    """Recipe keys of scripts/train_clip.py."""

    train_dataset: str = field(
        metadata={"help": "Folder (or Hub id) of shapes-world `clip` rows to train on."}
    )
    eval_dataset: str = field(
        metadata={
            "help": "Folder (or Hub id) of `clip` rows from held-out scenes (built with --scene_split eval)."
        }
    )
    output_dir: str = field(metadata={"help": "Where the model, processor, card and metrics.json go."})
    train_split: str = field(default="train", metadata={"help": "Split of `train_dataset`."})
    eval_split: str = field(default="test", metadata={"help": "Split of `eval_dataset`."})
    seed: int = field(default=0, metadata={"help": "Seed of the initial weights, batches and text choices."})
    max_steps: int = field(default=1500, metadata={"help": "Optimizer steps."})
    batch_size: int = field(
        default=32, metadata={"help": "Scenes per step: each is a negative for the others."}
    )
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay."})
    warmup_steps: int = field(default=50, metadata={"help": "Linear warmup, then cosine decay to zero."})
    preset: str = field(
        default="tiny", metadata={"help": "Size preset of the initial CLIP (selfalign.tiny_zoo.PRESETS)."}
    )
    tower_pretraining_steps: int = field(
        default=0,
        metadata={"help": "Steps of supervised multi-label pretraining of the vision tower first (0: none)."},
    )
    tower_pretraining_batch_size: int = field(default=64, metadata={"help": "Scenes per pretraining step."})
    tower_pretraining_learning_rate: float = field(
        default=1e-3, metadata={"help": "Peak AdamW learning rate of the pretraining (one-cycle schedule)."}
    )
    lock_vision_tower: bool = field(
        default=False,
        metadata={
            "help": "Keep the vision tower fixed in the contrastive stage (LiT); needs a pretrained tower."
        },
    )
    # One thread: this model's matrices are so small that a second thread mostly waits, and on
    # busy cores it made a 13 s run take over 5 minutes.
    num_threads: int = field(default=1, metadata={"help": "CPU threads for torch."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push the trained model to `hub_model_id`."})
    hub_model_id: str | None = field(
        default=None, metadata={"help": "Hub model repo id, e.g. my-org/shapes-clip."}
    )
    hub_private_repo: bool = field(default=True, metadata={"help": "Create the Hub repo as private."})

    def __post_init__(self):
        positive = ("max_steps", "batch_size", "num_threads", "tower_pretraining_batch_size")
        wrong = [name for name in positive if getattr(self, name) < 1]
        if wrong:
            raise ValueError(f"{', '.join(wrong)} must be at least 1")
        if self.warmup_steps < 0 or self.tower_pretraining_steps < 0:
            raise ValueError("warmup_steps and tower_pretraining_steps must not be negative")
        if self.lock_vision_tower and not self.tower_pretraining_steps:
            raise ValueError(
                "lock_vision_tower keeps the vision tower as it starts: pretrain it first "
                "(tower_pretraining_steps > 0), or a random tower stays random"
            )
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; valid presets: {', '.join(PRESETS)}")


@dataclass
class EncodedScenes:
    """Images as pixel tensors and each scene's texts as token ids, computed once before training."""

    pixel_values: torch.Tensor  # (scenes, 3, H, W)
    captions: list[str]
    text_ids: list[list[list[int]]]  # per scene: token ids of its caption, then of each sentence


def encode_scenes(rows, processor: CLIPProcessor) -> EncodedScenes:
    images = [image.convert("RGB") for image in rows["image"]]
    pixel_values = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    texts = [
        [caption, *sentences] for caption, sentences in zip(rows["caption"], rows["sentences"], strict=True)
    ]
    tokenizer = processor.tokenizer
    text_ids = [tokenizer(scene_texts, truncation=True)["input_ids"] for scene_texts in texts]
    return EncodedScenes(pixel_values, list(rows["caption"]), text_ids)


def pad_texts(processor: CLIPProcessor, token_ids: list[list[int]]) -> dict[str, torch.Tensor]:
    return processor.tokenizer.pad({"input_ids": token_ids}, return_tensors="pt")


@torch.no_grad()
def retrieval_metrics(model: CLIPModel, processor: CLIPProcessor, scenes: EncodedScenes) -> dict[str, float]:
    """Top-k retrieval accuracy between the held-out images and their captions, both directions.

    A hit is the true partner or any scene whose caption is the same string: single-object scenes
    can share a caption word for word, and no scorer could tell those apart.
    """
    model.eval()
    # One batch of every held-out image with its caption: CLIP's loss and its normalised embeddings.
    captions = pad_texts(processor, [scene_ids[0] for scene_ids in scenes.text_ids])
    output = model(pixel_values=scenes.pixel_values, **captions, return_loss=True)
    similarity = output.image_embeds @ output.text_embeds.T  # (images, captions)
    same_caption = torch.tensor(
        [[first == second for second in scenes.captions] for first in scenes.captions], dtype=torch.bool
    )
    metrics = {}
    for direction, scores in (("image_to_text", similarity), ("text_to_image", similarity.T)):
        ranked = scores.argsort(dim=1, descending=True)
        for k in RETRIEVAL_KS:
            hits = same_caption.gather(1, ranked[:, :k]).any(dim=1)
            metrics[f"{direction}_top{k}"] = round(hits.float().mean().item(), 4)
    metrics["contrastive_loss"] = round(output.loss.item(), 4)
    return metrics


@torch.no_grad()
def attribute_discrimination(
    model: CLIPModel, processor: CLIPProcessor, scenes: EncodedScenes
) -> dict[str, float]:
    """How often "There is a <colour> <shape>." about a present object outscores the same sentence
    about an absent object that differs only in shape (or only in colour), over the held-out scenes.

    This is the distinction CSR asks of its scorer at sentence level; chance is 0.5. A scene's
    objects are read from its caption, which names all of them.
    """
    model.eval()
    present = scene_objects(scenes.captions)
    colours = sorted({obj.split()[0] for objects in present for obj in objects})
    shapes = sorted({obj.split()[1] for objects in present for obj in objects})
    vocabulary = [f"{colour} {shape}" for colour in colours for shape in shapes]
    sentences = [f"There is {'an' if obj[0] in 'aeiou' else 'a'} {obj}." for obj in vocabulary]
    texts = pad_texts(processor, processor.tokenizer(sentences)["input_ids"])
    output = model(pixel_values=scenes.pixel_values, **texts)
    similarity = output.image_embeds @ output.text_embeds.T  # (scenes, vocabulary)
    column = {obj: index for index, obj in enumerate(vocabulary)}
    wins: dict[str, list[bool]] = {"shape": [], "colour": []}
    for row, objects in enumerate(present):
        for obj in objects:
            colour, shape = obj.split()
            rivals = {
                "shape": [f"{colour} {other}" for other in shapes],
                "colour": [f"{other} {shape}" for other in colours],
            }
            for attribute, candidates in rivals.items():
                for absent in (candidate for candidate in candidates if candidate not in objects):
                    wins[attribute].append(
                        bool(similarity[row, column[obj]] > similarity[row, column[absent]])
                    )
    return {
        f"{attribute}_discrimination": round(sum(results) / len(results), 4) if results else math.nan
        for attribute, results in wins.items()
    }


def held_out_metrics(model: CLIPModel, processor: CLIPProcessor, scenes: EncodedScenes) -> dict[str, float]:
    return {
        **retrieval_metrics(model, processor, scenes),
        **attribute_discrimination(model, processor, scenes),
    }


def learning_rate_factor(step: int, args: ClipTrainingArguments) -> float:
    """Linear warmup then cosine decay: the usual CLIP schedule, short enough for a CPU run."""
    if step < args.warmup_steps:
        return (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps)
    return 0.5 * (1 + math.cos(progress * math.pi))


def scene_objects(captions: list[str]) -> list[set[str]]:
    """Each scene's "<colour> <shape>" objects, read from its caption, which names them all."""
    return [{mention for mention in mentioned_objects(caption) if " " in mention} for caption in captions]


def pretrain_tower(model: CLIPModel, scenes: EncodedScenes, args: ClipTrainingArguments) -> list[float]:
    """Train the vision tower in place as a multi-label classifier of the scenes' objects; return the
    loss of every step. The linear head is thrown away afterwards: only the tower's features stay."""
    objects = scene_objects(scenes.captions)
    labels = sorted(set().union(*objects))
    if not labels:
        raise SelfAlignError("tower pretraining needs scenes whose captions name '<colour> <shape>' objects")
    column = {label: index for index, label in enumerate(labels)}
    targets = torch.zeros(len(objects), len(labels))
    for row, scene in enumerate(objects):
        targets[row, [column[label] for label in scene]] = 1.0
    tower = model.vision_model
    head = torch.nn.Linear(tower.config.hidden_size, len(labels))
    parameters = [*tower.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=args.tower_pretraining_learning_rate)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.tower_pretraining_learning_rate, total_steps=args.tower_pretraining_steps,
        pct_start=0.05,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(args.seed)

    def step_loss() -> torch.Tensor:
        batch = torch.randint(len(objects), (args.tower_pretraining_batch_size,), generator=generator)
        patches = tower(pixel_values=scenes.pixel_values[batch]).last_hidden_state[:, 1:]  # CLS dropped
        return torch.nn.functional.binary_cross_entropy_with_logits(head(patches.mean(dim=1)), targets[batch])

    tower.train()
    return optimize(step_loss, optimizer, scheduler, args.tower_pretraining_steps, "tower pretraining", 500)


def optimize(step_loss, optimizer, scheduler, steps: int, stage: str, log_every: int) -> list[float]:
    """`steps` optimizer steps on `step_loss()`; return every step's loss."""
    losses = []
    for step in range(steps):
        loss = step_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == steps - 1:
            logger.info("%s step %d/%d: loss %.4f", stage, step + 1, steps, loss.item())
    return losses


def train(
    model: CLIPModel, processor: CLIPProcessor, scenes: EncodedScenes, args: ClipTrainingArguments
) -> list[float]:
    """Train in place contrastively (the vision tower fixed if `lock_vision_tower`); return the loss
    of every step."""
    rng = random.Random(args.seed)
    model.vision_model.requires_grad_(not args.lock_vision_tower)
    trained = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, args))
    num_scenes = len(scenes.captions)
    batch_size = min(args.batch_size, num_scenes)

    def step_loss() -> torch.Tensor:
        batch = rng.sample(range(num_scenes), batch_size)  # distinct scenes: no image is its own negative
        text_inputs = pad_texts(processor, [rng.choice(scenes.text_ids[index]) for index in batch])
        return model(pixel_values=scenes.pixel_values[batch], **text_inputs, return_loss=True).loss

    model.train()
    return optimize(step_loss, optimizer, scheduler, args.max_steps, "contrastive", 50)


def loss_windows(losses: list[float], name: str) -> dict[str, float]:
    """The mean loss over the first and over the last tenth of the steps."""
    window = max(1, len(losses) // 10)
    first, last = losses[:window], losses[-window:]
    return {
        f"{name}_loss_first_steps": round(sum(first) / window, 4),
        f"{name}_loss_last_steps": round(sum(last) / window, 4),
    }


def training_description(args: ClipTrainingArguments) -> str:
    contrastive = (
        f"Contrastive: {args.max_steps} steps of {args.batch_size} scenes, AdamW lr {args.learning_rate}, "
        f"weight decay {args.weight_decay}, warmup {args.warmup_steps}, seed {args.seed}"
    )
    if not args.tower_pretraining_steps:
        return contrastive + "."
    return (
        f"First the vision tower alone, as a multi-label classifier of the scene's objects: "
        f"{args.tower_pretraining_steps} steps of {args.tower_pretraining_batch_size} scenes, AdamW lr "
        f"{args.tower_pretraining_learning_rate} (one-cycle). Then {contrastive[0].lower()}{contrastive[1:]}"
        + (", the vision tower locked (LiT)." if args.lock_vision_tower else ".")
    )


def write_model_card(folder: Path, args: ClipTrainingArguments, metrics: dict) -> None:
    after = metrics["after_training"]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        tags=["clip", "selfalign", "shapes-world", "csr"],
    )
    table = "\n".join(f"| {name} | {metrics['before_training'][name]} | {after[name]} |" for name in after)
    repo_id = args.hub_model_id or args.output_dir
    content = f"""---
{card_data.to_yaml()}
---

# Tiny CLIP for the shapes world

A tiny `CLIPModel` trained from random weights on synthetic scenes of coloured shapes (captions and
single sentences; see Training), by `scripts/train_clip.py` in a few CPU minutes. It is the visual
scorer of CSR in the offline shapes-world pipeline: it scores each generated sentence against the
image. It knows nothing outside that world.

## Held-out metrics ({metrics["num_eval_scenes"]} scenes)

Retrieval between images and their captions; and how often a sentence about a present object
outscores one about an absent object that differs only in shape (`shape_discrimination`) or only in
colour (`colour_discrimination`): chance is 0.5.

| metric | untrained | trained |
|---|---|---|
{table}

## Training

{training_description(args)} {metrics["train_seconds"]} s on CPU in all.

## Usage

```python
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

model = CLIPModel.from_pretrained("{repo_id}")
processor = CLIPProcessor.from_pretrained("{repo_id}")
inputs = processor(text=["There is a red circle."], images=[Image.open("scene.png").convert("RGB")],
                   return_tensors="pt", padding=True)
print(model(**inputs).logits_per_image)
```
"""
    ModelCard(content).save(folder / "README.md")


def main(args: ClipTrainingArguments) -> dict:
    if args.push_to_hub:
        check_can_push(args.hub_model_id)
    torch.set_num_threads(args.num_threads)
    with tempfile.TemporaryDirectory() as scratch:
        initial = build_tiny_clip(Path(scratch) / "clip", seed=args.seed, preset=args.preset)
        model, processor = CLIPModel.from_pretrained(initial), CLIPProcessor.from_pretrained(initial)
    train_scenes = encode_scenes(load_dataset(args.train_dataset, split=args.train_split), processor)
    eval_scenes = encode_scenes(load_dataset(args.eval_dataset, split=args.eval_split), processor)
    torch.manual_seed(args.seed)

    before = held_out_metrics(model, processor, eval_scenes)
    started = time.perf_counter()
    pretraining = {}
    if args.tower_pretraining_steps:
        pretraining = loss_windows(pretrain_tower(model, train_scenes, args), "tower_pretraining")
    losses = train(model, processor, train_scenes, args)
    train_seconds = round(time.perf_counter() - started, 1)
    after = held_out_metrics(model, processor, eval_scenes)

    metrics = {
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
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_model_card(output_dir, args, metrics)
    logger.info("held-out retrieval: before %s, after %s", before, after)
    if args.push_to_hub:
        url = push_folder(
            output_dir,
            args.hub_model_id,
            private=args.hub_private_repo,
            commit_message="Tiny shapes-world CLIP (scripts/train_clip.py)",
        )
        logger.info("pushed to %s", url)
    return metrics


if __name__ == "__main__":
    setup_logging()
    try:
        main(*parse_recipe((ClipTrainingArguments,)))
    except SelfAlignError as error:
        sys.exit(f"error: {error}")
