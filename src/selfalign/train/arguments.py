"""The script-level arguments shared by the training entry points (besides TRL's configs)."""

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ScriptArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset id or local folder in Hub layout. Ignored when `datasets` (a mixture) is set."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset config name."})
    dataset_revision: str | None = field(
        default=None,
        metadata={"help": "Branch, tag or commit of the dataset (e.g. the branch of an iteration)."},
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(
        default="test", metadata={"help": "Split to evaluate on when evaluating."}
    )
    image_max_pixels: int | None = field(
        default=None,
        metadata={
            "help": "Cap on pixels per image for dynamic-resolution processors (Qwen2-VL family: `max_pixels`); "
            "bounds the image tokens per image, hence memory."
        },
    )
    freeze_vision_tower: bool = field(
        default=False,
        metadata={
            "help": "Keep the vision encoder's weights as loaded (full fine-tuning; LoRA adapts only the "
            "language model anyway), as LLaVA trains."
        },
    )
    model_role: Literal["policy", "critic"] = field(
        default="policy",
        metadata={"help": "Which model card template to render: a policy VLM or an EACO Critic."},
    )
    method: Literal["eaco", "csr", "ipa"] | None = field(
        default=None,
        metadata={"help": "The alignment method this run belongs to (model card tags and text)."},
    )
    base_model_id: str | None = field(
        default=None,
        metadata={
            "help": "Hub id of the base model, named in the model card when `model_name_or_path` is a local folder."
        },
    )
