"""The card metadata checks behind `/api/validate-yaml`: the ones the real Hub is known to make on
the fields selfalign writes (it checks more, against its own lists of licenses and tasks)."""

from __future__ import annotations

import yaml

SIZE_CATEGORIES = (
    "n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M",
    "100M<n<1B", "1B<n<10B", "10B<n<100B", "100B<n<1T", "n>1T",
)  # fmt: skip
# Fields that must be a string or a list of strings when present.
STRING_LIST_FIELDS = ("license", "language", "tags", "task_categories", "datasets", "base_model")


def card_metadata_errors(card_text: str, repo_type: str) -> list[str]:
    """What is wrong with a card's YAML front matter; empty when nothing is."""
    lines = card_text.splitlines()
    if not lines or lines[0].strip() != "---":
        return []  # a card without metadata is allowed
    try:
        end = next(index for index, line in enumerate(lines[1:], start=1) if line.strip() == "---")
    except StopIteration:
        return ["The YAML metadata block opened by '---' is never closed"]
    try:
        metadata = yaml.safe_load("\n".join(lines[1:end])) or {}
    except yaml.YAMLError as error:
        return [f"The YAML metadata is not valid YAML: {error}"]
    if not isinstance(metadata, dict):
        return ["The YAML metadata must be a mapping"]
    errors = [
        f"'{name}' must be a string or a list of strings"
        for name in STRING_LIST_FIELDS
        if name in metadata and not _is_string_or_strings(metadata[name])
    ]
    if "pipeline_tag" in metadata and not isinstance(metadata["pipeline_tag"], str):
        errors.append("'pipeline_tag' must be a string")
    if repo_type == "dataset":
        errors += _dataset_errors(metadata)
    return errors


def _dataset_errors(metadata: dict) -> list[str]:
    errors = []
    sizes = metadata.get("size_categories", [])
    for size in sizes if isinstance(sizes, list) else [sizes]:
        if size not in SIZE_CATEGORIES:
            errors.append(
                f"'size_categories' has an unknown value {size!r}; known: {', '.join(SIZE_CATEGORIES)}"
            )
    for config in metadata.get("configs", []) or []:
        if not isinstance(config, dict) or "config_name" not in config or "data_files" not in config:
            errors.append("each entry of 'configs' needs 'config_name' and 'data_files'")
    return errors


def _is_string_or_strings(value) -> bool:
    return isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(item, str) for item in value)
    )
