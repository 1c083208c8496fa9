"""The trained CLIP's model card: what it is, its held-out metrics before and after, its training."""

from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from selfalign.train.clip.arguments import ClipTrainingArguments


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
