"""The round runner's recipe: the policy to start from, each step's own recipe and flags, publishing."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from selfalign.errors import SelfAlignError


@dataclass
class IterateArguments:
    policy_model: str = field(metadata={"help": "Hub id or folder of the policy that round 1 starts from."})
    pairs_config: str = field(
        metadata={"help": "Recipe of dataset_builders/csr_pairs.py (image source, CLIP, tree)."}
    )
    dpo_config: str = field(metadata={"help": "Recipe of scripts/dpo.py (LoRA, lr, beta, epochs)."})
    output_dir: str = field(metadata={"help": "Root of the run: round_<k>/{pairs,dpo,merged,eval}, summary."})
    rounds: int = field(default=3, metadata={"help": "Rounds of build -> DPO -> merge."})
    eval_config: str | None = field(
        default=None,
        metadata={"help": "Recipe of scripts/evaluate.py, run on every round's model and the start."},
    )
    evaluate_start: bool = field(
        default=True,
        metadata={
            "help": "With eval_config, evaluate the starting policy too (round_0/eval); false when its "
            "report is measured elsewhere."
        },
    )
    pairs_args: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Extra flags for the builder: in YAML a list, e.g. [--image_folder, path]; on the "
            'command line one quoted value, e.g. --pairs_args "--image_folder path --batch_size 8".'
        },
    )
    dpo_args: list[str] = field(
        default_factory=list, metadata={"help": "Extra flags for scripts/dpo.py, given as pairs_args."}
    )
    eval_args: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Extra flags for scripts/evaluate.py, given as pairs_args, e.g. [--eval_dataset, id]."
        },
    )
    launcher: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Command put in front of the builder and DPO, e.g. [accelerate, launch, --config_file, x]."
        },
    )
    merge_dtype: str = field(default="bfloat16", metadata={"help": "dtype of each round's merged weights."})
    push_to_hub: bool = field(
        default=False, metadata={"help": "Publish every round's pairs and merged model."}
    )
    hub_model_id: str | None = field(
        default=None, metadata={"help": "Round k's model goes to <this>-iter<k>."}
    )
    hub_dataset_id: str | None = field(
        default=None, metadata={"help": "Round k's pairs go to <this>-iter<k>."}
    )
    hub_private_repo: bool = field(default=True, metadata={"help": "Create the Hub repos as private."})
    policy_model_id: str | None = field(
        default=None,
        metadata={"help": "Hub id of `policy_model` when it is a local folder, for the published cards."},
    )

    def __post_init__(self) -> None:
        for name in ("pairs_args", "dpo_args", "eval_args"):
            setattr(self, name, _split_quoted_flags(getattr(self, name)))
        if self.rounds < 1:
            raise SelfAlignError(f"rounds must be at least 1, got {self.rounds}")
        for name in ("pairs_config", "dpo_config", "eval_config"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise SelfAlignError(f"{name}: no recipe at '{path}'")


def _split_quoted_flags(values: list[str]) -> list[str]:
    """Flags quoted together on a command line ("--clip_model path --batch_size 8"), split as a shell
    would. argparse takes no list item that starts with a dash, unless it holds a space."""
    return [
        part
        for value in values
        for part in (
            shlex.split(value) if value.startswith("-") and any(c.isspace() for c in value) else [value]
        )
    ]
