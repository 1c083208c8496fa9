"""The CLIP's two training stages, both in place on the model.

1. Optional (`tower_pretraining_steps` > 0, `pretrain_tower`): the vision tower alone is pretrained
   as a multi-label classifier of the scene's objects: a linear head on the mean of its last layer's
   patch features predicts which "<colour> <shape>" objects the scene holds (read from the training
   captions, which name them all), with a binary cross-entropy loss. Contrastive training alone
   never taught a tower of this size to tell shapes apart; this does (recipes/shapes/clip.yaml has
   the numbers).
2. Contrastive (`train`): each step takes a batch of distinct training scenes and pairs every image
   with one of its texts, drawn from its caption and its per-object sentences: CSR scores single
   sentences against the image, so the model must see both. The loss is CLIP's symmetric InfoNCE
   (`CLIPModel(return_loss=True)`). With `lock_vision_tower`, the pretrained tower stays as it is
   and the text tower learns to match it ("locked-image tuning", LiT; Zhai et al. 2022).
"""

import logging
import math
import random

import torch
from transformers import CLIPModel, CLIPProcessor

from selfalign.errors import SelfAlignError
from selfalign.train.clip.arguments import ClipTrainingArguments
from selfalign.train.clip.scenes import EncodedScenes, pad_texts, scene_objects

logger = logging.getLogger("selfalign")


def learning_rate_factor(step: int, args: ClipTrainingArguments) -> float:
    """Linear warmup then cosine decay: the usual CLIP schedule, short enough for a CPU run."""
    if step < args.warmup_steps:
        return (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps)
    return 0.5 * (1 + math.cos(progress * math.pi))


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
