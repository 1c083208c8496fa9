"""Load training data from the Hub or a local folder (or a weighted mixture) and check it fits the trainer."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, IterableDataset, load_dataset
from trl import DatasetMixtureConfig, get_dataset

from selfalign.errors import SelfAlignError
from selfalign.train.arguments import ScriptArguments

# Columns of the data contracts (DESIGN.md §3) that each trainer reads.
TRAINER_COLUMNS = {
    "dpo": ("images", "prompt", "chosen", "rejected"),
    "sft": ("images", "messages"),
}
# The columns whose user turns carry the image placeholders.
PLACEHOLDER_COLUMN = {"dpo": "prompt", "sft": "messages"}
# Streaming datasets cannot be scanned ahead of training; their first rows are checked.
STREAMING_ROWS_CHECKED = 256


def load_training_data(
    script_args: ScriptArguments, mixture: DatasetMixtureConfig, trainer: str, need_test_split: bool
) -> DatasetDict:
    """The dataset splits to train (and evaluate) on, checked against the `trainer`'s data contract."""
    try:
        if mixture.datasets:
            splits = get_dataset(mixture)
            train_split, test_split = "train", "test"
        elif script_args.dataset_name:
            splits = load_dataset(
                script_args.dataset_name,
                name=script_args.dataset_config,
                revision=script_args.dataset_revision,
            )
            train_split, test_split = script_args.dataset_train_split, script_args.dataset_test_split
        else:
            raise SelfAlignError("no training data: set `dataset_name` or a `datasets` mixture in the recipe")
    except (FileNotFoundError, ValueError) as error:
        raise SelfAlignError(f"could not load the training data: {error}") from error

    wanted = [train_split] + ([test_split] if need_test_split else [])
    for split in wanted:
        if split not in splits:
            raise SelfAlignError(f"the dataset has no split '{split}' (it has: {', '.join(splits)})")
        check_trainer_columns(splits[split], trainer, split)
    return DatasetDict({name: splits[split] for name, split in zip(("train", "test"), wanted, strict=False)})


def check_trainer_columns(dataset: Dataset | IterableDataset, trainer: str, split: str = "train") -> None:
    """Raise if columns are missing or a row's image placeholders and images disagree in number."""
    required = TRAINER_COLUMNS[trainer]
    missing = [column for column in required if column not in (dataset.column_names or [])]
    if missing:
        raise SelfAlignError(
            f"split '{split}' is missing the column(s) {missing} that {trainer.upper()} training needs "
            f"(expected {list(required)}, found {dataset.column_names})"
        )
    for row, num_images, messages in _image_counts(dataset, PLACEHOLDER_COLUMN[trainer]):
        placeholders = sum(
            1
            for message in messages
            if isinstance(message.get("content"), list)
            for part in message["content"]
            if part.get("type") == "image"
        )
        all_text = all(isinstance(message.get("content"), str) for message in messages)
        # Plain-text conversations get one placeholder per image inserted by TRL; structured
        # ones must already hold exactly one per image.
        if placeholders != num_images and not (all_text and placeholders == 0):
            raise SelfAlignError(
                f"split '{split}', row {row}: {num_images} image(s) but {placeholders} image placeholder(s) "
                f"in '{PLACEHOLDER_COLUMN[trainer]}'; each image needs one {{'type': 'image'}} entry"
            )


def _image_counts(dataset: Dataset | IterableDataset, column: str) -> Iterator[tuple[int, int, list[dict]]]:
    """(row, number of images, messages) per row, without decoding any image."""
    if isinstance(dataset, IterableDataset):
        for row, example in enumerate(dataset.take(STREAMING_ROWS_CHECKED)):
            yield row, len(example["images"] or []), example[column]
        return
    row = 0
    for table in dataset.select_columns(["images", column]).with_format("arrow").iter(batch_size=1024):
        counts = pc.fill_null(pc.list_value_length(table["images"]), 0).to_pylist()
        for num_images, messages in zip(counts, table[column].to_pylist(), strict=True):
            yield row, num_images, messages
            row += 1
