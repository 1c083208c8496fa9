"""The recipe keys of the CLIP training (scripts/train_clip.py)."""

from dataclasses import dataclass, field


@dataclass
class ClipTrainingArguments:
    """Recipe keys of scripts/train_clip.py.

    `preset` names a size of the tiny zoo, which builds the initial CLIP; the script, which builds
    it, checks the name (this library may not import the zoo).
    """

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
