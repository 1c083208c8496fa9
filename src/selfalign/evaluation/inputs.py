"""What an evaluation reads: its recipe, the held-out eval set (checked) and the model, an adapter merged.

A model is a base or merged checkpoint, or a PEFT adapter (a folder or repo with
`adapter_config.json`), which is merged into its base in a temporary folder before sampling.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict, load_dataset
from huggingface_hub import file_exists
from huggingface_hub.errors import HFValidationError

from selfalign.errors import SelfAlignError

logger = logging.getLogger(__name__)

EVAL_COLUMNS = ("image", "instruction", "objects", "pope")
ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class EvaluationArguments:
    """Recipe keys of scripts/evaluate.py."""

    model_name_or_path: str = field(
        metadata={"help": "Folder or Hub id of the model: a base or merged checkpoint, or a PEFT adapter."}
    )
    eval_dataset: str = field(
        metadata={"help": "Folder or Hub id of a `dataset_builders/shapes.py --kind eval` build."}
    )
    output_dir: str = field(metadata={"help": "Where report.json, report.md and generations.jsonl go."})
    model_revision: str | None = field(default=None, metadata={"help": "Branch, tag or commit of the model."})
    base_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "For an adapter: the base to merge it into; default, the one its config names."},
    )
    eval_dataset_revision: str | None = field(
        default=None, metadata={"help": "Branch, tag or commit of the eval set."}
    )
    eval_split: str | None = field(
        default=None, metadata={"help": "Split to evaluate on; default, the dataset's only split (or test)."}
    )
    max_eval_scenes: int | None = field(
        default=None, metadata={"help": "Evaluate on the first N scenes only (quick checks)."}
    )
    dtype: str = field(default="float32", metadata={"help": "dtype to load the model in."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per generation call."})
    caption_max_new_tokens: int = field(default=64, metadata={"help": "Longest caption, in tokens."})
    answer_max_new_tokens: int = field(
        default=8, metadata={"help": "Longest POPE answer, in tokens (the first yes/no word counts)."}
    )
    image_max_pixels: int | None = field(
        default=None, metadata={"help": "Cap on pixels per image (Qwen2-VL family)."}
    )

    def __post_init__(self):
        if self.max_eval_scenes is not None and self.max_eval_scenes < 1:
            raise ValueError("max_eval_scenes must be at least 1")


def load_eval_set(args: EvaluationArguments) -> Dataset:
    """The eval split, checked for the columns a shapes `--kind eval` build has."""
    try:
        splits = load_dataset(args.eval_dataset, revision=args.eval_dataset_revision)
    except (FileNotFoundError, ValueError, HFValidationError) as error:
        raise SelfAlignError(f"could not load the eval set '{args.eval_dataset}': {error}") from error
    if not isinstance(splits, DatasetDict):
        raise SelfAlignError(f"'{args.eval_dataset}' did not load as a dataset with splits")
    split = args.eval_split or (next(iter(splits)) if len(splits) == 1 else "test")
    if split not in splits:
        raise SelfAlignError(f"the eval set has no split '{split}' (it has: {', '.join(splits)})")
    dataset = splits[split]
    missing = [column for column in EVAL_COLUMNS if column not in dataset.column_names]
    if missing:
        raise SelfAlignError(
            f"the eval set '{args.eval_dataset}' is missing the column(s) {missing}; expected a "
            f"`dataset_builders/shapes.py --kind eval` build with {list(EVAL_COLUMNS)}, "
            f"found {dataset.column_names}"
        )
    if len(dataset) == 0:
        raise SelfAlignError(f"the eval set '{args.eval_dataset}' (split '{split}') has no rows")
    if args.max_eval_scenes is not None:
        dataset = dataset.select(range(min(args.max_eval_scenes, len(dataset))))
    return dataset


def is_adapter(model_name_or_path: str, revision: str | None) -> bool:
    if Path(model_name_or_path).is_dir():
        return (Path(model_name_or_path) / ADAPTER_CONFIG).is_file()
    try:
        return file_exists(model_name_or_path, ADAPTER_CONFIG, revision=revision)
    except Exception as error:  # offline or unknown repo: the model loader will say what is wrong
        logger.debug("could not ask the Hub about %s: %s", model_name_or_path, error)
        return False


@contextmanager
def loadable_model(args: EvaluationArguments) -> Iterator[tuple[str, str | None, str | None]]:
    """(folder or id the sampler can load, its revision, the adapter's base or None).

    An adapter is merged into its base in a temporary folder (fp32 on CPU is what the tiny models
    use; merging is exact), so the one sampler loads every kind of model the same way.
    """
    if not is_adapter(args.model_name_or_path, args.model_revision):
        yield args.model_name_or_path, args.model_revision, None
        return
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    adapter_config = PeftConfig.from_pretrained(args.model_name_or_path, revision=args.model_revision)
    base = args.base_model_name_or_path or adapter_config.base_model_name_or_path
    logger.info("merging the adapter %s into %s for evaluation", args.model_name_or_path, base)
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=getattr(torch, args.dtype))
    model = PeftModel.from_pretrained(model, args.model_name_or_path, revision=args.model_revision)
    with tempfile.TemporaryDirectory(prefix="selfalign-eval-merged-") as merged:
        model.merge_and_unload().save_pretrained(merged)
        # The adapter folder carries the processor it was trained with (sft.py/dpo.py save it).
        try:
            processor = AutoProcessor.from_pretrained(args.model_name_or_path, revision=args.model_revision)
        except OSError:
            processor = AutoProcessor.from_pretrained(base)
        processor.save_pretrained(merged)
        yield merged, None, base
