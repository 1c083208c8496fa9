"""Dataset cards: what a published dataset holds, how it was built, its scores and its rejected inputs.

Rendered from `dataset_card.md` with `huggingface_hub.DatasetCard`. Everything in a card is a
function of the data and the recipe, so rebuilding the same dataset writes the same bytes: no
timestamps, no local absolute paths, and never a token.
"""

from __future__ import annotations

import enum
import math
import os
import re
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import yaml
from huggingface_hub import DatasetCard, DatasetCardData, get_token

from selfalign.errors import SelfAlignError
from selfalign.images import REJECTION_REASONS
from selfalign.publish.dataset import (
    CARD_FILE,
    DEFAULT_CONFIG,
    PLOT_FILE,
    data_files_pattern,
    data_folder,
    layout_metadata,
)
from selfalign.publish.model_card import METHOD_NAMES

TEMPLATE = Path(__file__).with_name("dataset_card.md")
SCORE_COLUMNS = ("chosen_score", "rejected_score")
# Recipe keys that may hold credentials; their values are never written. "token" only as a whole
# name part at the end (hub_token, token), not in counts such as max_new_tokens.
SECRET_KEY = re.compile(r"(^|_)token$|secret|password|passwd|api_?key|credential", re.IGNORECASE)


@dataclass
class DatasetCardInfo:
    pretty_name: str
    builder: str  # e.g. "dataset_builders/csr_pairs.py"
    recipe: dict  # the parsed recipe values (secrets never included)
    models: dict[str, str]  # role -> "model_id@revision", e.g. {"policy": "...", "scorer": "..."}
    method: str | None  # "eaco" | "csr" | "ipa" | None
    rejections: dict[str, int]  # reason code -> count
    rejections_file: str = "rejects.jsonl"
    tags: tuple[str, ...] = ()
    license: str = "other"
    description: str = ""  # what this dataset is, one paragraph, provided by the builder
    # Codes of rejections that are not about inputs (e.g. a sentence tree without a usable pair).
    rejection_reasons: dict[str, str] = field(default_factory=dict)
    # The (chosen, rejected) columns whose statistics and histograms the card shows, and what they are.
    score_columns: tuple[str, str] = SCORE_COLUMNS
    score_note: str = ""


@dataclass(frozen=True)
class ScoreStatistics:
    """count/mean/std/min/median/max of chosen and rejected scores and of their margin (chosen - rejected)."""

    chosen: np.ndarray
    rejected: np.ndarray
    skipped: int  # rows without two finite scores

    @property
    def margin(self) -> np.ndarray:
        return self.chosen - self.rejected

    def table(self) -> list[tuple[str, str, str, str]]:
        columns = (self.chosen, self.rejected, self.margin)
        rows = [("count", *(str(len(values)) for values in columns))]
        for name, statistic in (
            ("mean", np.mean),
            ("std", np.std),
            ("min", np.min),
            ("median", np.median),
            ("max", np.max),
        ):
            rows.append((name, *(f"{statistic(values):.4g}" for values in columns)))
        return rows


def write_dataset_card(
    output_dir: Path, info: DatasetCardInfo, *, split: str = "train", config_name: str = DEFAULT_CONFIG
) -> Path:
    """README.md with YAML (configs:, license, task_categories: [image-text-to-text], tags incl. method,
    dataset_info), what built it, row counts, score statistics and a PNG plot (score_distribution.png)
    of chosen vs rejected scores when `chosen_score`/`rejected_score` columns exist (reading only those
    columns), and rejection counts per reason. Deterministic output.

    The configs and splits listed are all those under output_dir/data, so a second config or split
    written into the same folder is added to the card rather than replacing the first."""
    output_dir = Path(output_dir)
    files = sorted((output_dir / data_folder(config_name)).glob(f"{split}-*.parquet"))
    if not files:
        raise SelfAlignError(
            f"{output_dir} has no data files for config '{config_name}', split '{split}' "
            f"({data_files_pattern(config_name, split)}): write the Hub layout before the card"
        )
    columns = pq.read_schema(files[0]).names
    scores = (
        read_score_statistics(files, info.score_columns) if set(info.score_columns) <= set(columns) else None
    )
    plot_path = output_dir / PLOT_FILE
    if scores is not None and len(scores.chosen):
        plot_score_distribution(scores, plot_path, info.score_columns)
    else:
        scores = None
        # A plot left from earlier data with scores would describe rows this card is not about.
        plot_path.unlink(missing_ok=True)

    card_data = DatasetCardData(
        license=info.license,
        task_categories=["image-text-to-text"],
        pretty_name=info.pretty_name,
        tags=_tags(info, columns),
        **layout_metadata(output_dir).to_dict(),  # size_categories, configs, dataset_info
    )
    recipe, recipe_notes = public_recipe(info.recipe)
    card = DatasetCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        info=info,
        method_name=METHOD_NAMES.get(info.method or ""),
        config_name=config_name,
        split=split,
        row_counts=_row_counts(card_data),
        columns=columns,
        models=[_model_row(role, name) for role, name in info.models.items()],
        recipe_yaml=yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True).strip() if recipe else "",
        recipe_notes=recipe_notes,
        scores=scores,
        score_columns=info.score_columns,
        plot_file=PLOT_FILE,
        rejections=[  # most frequent reason first
            (reason, count, {**REJECTION_REASONS, **info.rejection_reasons}.get(reason, ""))
            for reason, count in sorted(info.rejections.items(), key=lambda item: (-item[1], item[0]))
            if count
        ],
        num_rejected=sum(info.rejections.values()),
        rejections_file_exists=(output_dir / info.rejections_file).is_file(),
        selfalign_version=version("selfalign"),
    )
    path = output_dir / CARD_FILE
    path.write_text(str(card), encoding="utf-8")
    return path


def _tags(info: DatasetCardInfo, columns: list[str]) -> list[str]:
    preference = {"chosen", "rejected"} <= set(columns)
    tags = ["vlm", "selfalign", *(["dpo", "preference"] if preference else []), *info.tags]
    if info.method:
        tags.append(info.method)
    return list(dict.fromkeys(tags))  # unique, first occurrence order


def _row_counts(card_data) -> list[tuple[str, str, int]]:
    """(config, split, rows) for every config and split the card lists."""
    infos = card_data.get("dataset_info")
    infos = infos if isinstance(infos, list) else [infos]
    return [
        (info.get("config_name", DEFAULT_CONFIG), split["name"], split["num_examples"])
        for info in infos
        for split in info["splits"]
    ]


def read_score_statistics(files: list[Path], columns: tuple[str, str] = SCORE_COLUMNS) -> ScoreStatistics:
    """Statistics of the (chosen, rejected) score columns, reading those two columns only. Rows without
    two finite scores (a missing score, or -inf from a log-probability) are counted as skipped."""
    chosen_column, rejected_column = columns
    chosen, rejected = [], []
    for path in files:
        table = pq.read_table(path, columns=list(columns))
        chosen.extend(table[chosen_column].to_pylist())
        rejected.extend(table[rejected_column].to_pylist())
    pairs = [
        (c, r)
        for c, r in zip(chosen, rejected, strict=True)
        if c is not None and r is not None and math.isfinite(c) and math.isfinite(r)
    ]
    return ScoreStatistics(
        chosen=np.array([c for c, _ in pairs], dtype=np.float64),
        rejected=np.array([r for _, r in pairs], dtype=np.float64),
        skipped=len(chosen) - len(pairs),
    )


def plot_score_distribution(
    scores: ScoreStatistics, path: Path, columns: tuple[str, str] = SCORE_COLUMNS
) -> Path:
    """Overlapping histograms of chosen and rejected scores, as a PNG whose bytes depend only on the scores."""
    # Imported here: matplotlib takes a while to import and cards without scores do not need it.
    from matplotlib import style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # The default style, whatever the user's matplotlibrc says, so the image is the same everywhere.
    with style.context("default"):
        figure = Figure(figsize=(6, 3.6), dpi=100)
        FigureCanvasAgg(figure)  # Agg, not whatever backend pyplot would pick
        axes = figure.subplots()
        bins = np.histogram_bin_edges(np.concatenate([scores.chosen, scores.rejected]), bins="auto")
        bins = bins if len(bins) <= 51 else np.linspace(bins[0], bins[-1], 51)
        axes.hist(scores.chosen, bins=bins, alpha=0.55, color="tab:green", label="chosen")
        axes.hist(scores.rejected, bins=bins, alpha=0.55, color="tab:red", label="rejected")
        axes.set_xlabel(columns[0].removeprefix("chosen_"))
        axes.set_ylabel("pairs")
        axes.set_title(f"Scores of chosen and rejected responses ({len(scores.chosen)} pairs)")
        axes.legend()
        figure.tight_layout()
        # No "Software" text chunk: it carries the matplotlib version, the only non-data bytes in it.
        figure.savefig(path, format="png", metadata={"Software": None})
    return path


def public_recipe(recipe: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The recipe as it may be published, and notes on what was changed.

    Keys named like credentials are dropped, as is any value holding the current Hub token; an
    existing absolute path becomes its base name, since the local folder means nothing to a reader
    and differs between machines."""
    token = get_token()
    public, notes = {}, []
    for key, value in recipe.items():
        if SECRET_KEY.search(str(key)):
            notes.append(f"`{key}` is left out: it may hold a credential.")
            continue
        value = _plain(value)
        if token and token in yaml.safe_dump(value):
            notes.append(f"`{key}` is left out: it contains the Hub token.")
            continue
        value, relativised = _without_local_paths(value)
        if relativised:
            notes.append(f"`{key}`: local paths are shown by their base name only.")
        public[key] = value
    return public, notes


def _plain(value: Any) -> Any:
    """Recipe values as YAML-safe builtins (enums by value, tuples as lists, paths as strings)."""
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [_plain(item) for item in items]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _without_local_paths(value: Any) -> tuple[Any, bool]:
    if isinstance(value, str):
        if os.path.isabs(value) and os.path.exists(value):
            return Path(value).name, True
        return value, False
    if isinstance(value, dict):
        pairs = {key: _without_local_paths(item) for key, item in value.items()}
        return {key: item for key, (item, _) in pairs.items()}, any(changed for _, changed in pairs.values())
    if isinstance(value, list):
        pairs = [_without_local_paths(item) for item in value]
        return [item for item, _ in pairs], any(changed for _, changed in pairs)
    return value, False


def _model_row(role: str, name: str) -> tuple[str, str, str]:
    """(role, model shown as a Hub link or a local folder's name, revision)."""
    model, _, revision = name.rpartition("@") if "@" in name else (name, "", "")
    if os.path.isabs(model) or os.path.isdir(model):
        shown = Path(model).name if os.path.isabs(model) else model
        return role, f"`{shown}` (a local folder)", revision or "-"
    return role, f"[{model}](https://huggingface.co/{model})", revision or "-"
