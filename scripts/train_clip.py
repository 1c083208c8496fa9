"""Train the tiny CLIP contrastively on the shapes world: CSR's visual scorer, offline.

    python dataset_builders/shapes.py --config recipes/shapes/world.yaml --kind clip \
        --output_dir outputs/shapes/clip
    python dataset_builders/shapes.py --config recipes/shapes/world.yaml --kind clip \
        --scene_split eval --split test --output_dir outputs/shapes/clip_eval
    python scripts/train_clip.py --config recipes/shapes/clip.yaml

The model starts from `selfalign.tiny_zoo.build_tiny_clip` (random weights of the recipe's size
`preset`, the zoo's tokenizer and processor), built here. Two stages: optionally
(`tower_pretraining_steps` > 0) the vision tower alone, pretrained as a multi-label classifier of
the scene's objects; then CLIP's contrastive loss on captions and per-object sentences, the tower
locked if `lock_vision_tower` (LiT). The steps (data, both stages, held-out metrics, save, card,
push) are `selfalign.train.clip.run.run_clip_training`; its modules say why each stage is as it is.

The output folder holds the model and processor in the standard layout (`CLIPModel.from_pretrained`,
`CLIPProcessor.from_pretrained`), a model card, and `metrics.json`: image-to-text and text-to-image
retrieval accuracy (top-1, top-5) over the held-out scenes' captions, before and after training.
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path

from selfalign.config import run_main
from selfalign.tiny_zoo import PRESETS, build_tiny_clip
from selfalign.train.clip import arguments
from selfalign.train.clip.run import run_clip_training


@dataclass
class ClipTrainingArguments(arguments.ClipTrainingArguments):
    """The library's recipe keys, `preset` checked against the zoo that builds the initial CLIP."""

    def __post_init__(self):
        super().__post_init__()
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; valid presets: {', '.join(PRESETS)}")


RECIPE_DATACLASSES = (ClipTrainingArguments,)


def main(args: arguments.ClipTrainingArguments) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        initial = build_tiny_clip(Path(scratch) / "clip", seed=args.seed, preset=args.preset)
        return run_clip_training(args, initial)


if __name__ == "__main__":
    run_main(main, RECIPE_DATACLASSES)
