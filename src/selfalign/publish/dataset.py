"""Datasets in Hub layout: Parquet files under `data/`, a card whose `configs:` lists them, one push.

`load_dataset(folder)` and `load_dataset("org/name")` read the same files through the card's
`configs:` block, so both give the same rows. The layout under `data/` is the source of truth: the
card's `configs:` and `dataset_info:` are derived from the files found there (see `layout_metadata`),
and a push merges them with what the Hub repo already lists, so configs and splits published
earlier stay loadable.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import DatasetInfo, Features, SplitDict, SplitInfo
from datasets import config as datasets_config
from datasets.arrow_writer import (
    get_parquet_column_options,
    get_writer_batch_size_from_data_size,
    get_writer_batch_size_from_features,
)
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, DatasetCard, DatasetCardData, HfApi
from huggingface_hub.errors import HfHubHTTPError

from selfalign.errors import SelfAlignError
from selfalign.publish.hub import check_can_push

logger = logging.getLogger("selfalign")

DEFAULT_CONFIG = "default"
DATA_DIR = "data"
CARD_FILE = "README.md"
PLOT_FILE = "score_distribution.png"
# The names `datasets` accepts for splits (no dashes: the dash separates split and shard index).
SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")
CONFIG_NAME = re.compile(r"^\w[\w.-]*$")
DATA_FILE = re.compile(
    rf"^{DATA_DIR}/(?:(?P<config>[^/]+)/)?(?P<split>\w+(?:\.\w+)*)-\d{{5}}-of-\d{{5}}\.parquet$"
)


def data_folder(config_name: str) -> str:
    """Where a config's files live in the repo: `data/` for the default config, `data/<name>/` otherwise."""
    return DATA_DIR if config_name == DEFAULT_CONFIG else f"{DATA_DIR}/{config_name}"


def data_files_pattern(config_name: str, split: str) -> str:
    return f"{data_folder(config_name)}/{split}-*"


def write_hub_layout(
    shard_files: Sequence[Path],
    output_dir: Path,
    *,
    split: str = "train",
    config_name: str = DEFAULT_CONFIG,
    rows_per_file: int = 50_000,
) -> list[Path]:
    """Stream finished shard Parquet files (in order) into output_dir/data/<split>-XXXXX-of-YYYYY.parquet
    (or data/<config_name>/... when config_name != "default"); memory stays within one row group. Keeps
    the `huggingface` schema metadata so `load_dataset(output_dir)` restores Image features.
    Deterministic bytes for the same rows (no timestamps; row groups do not depend on shard boundaries).
    """
    _check_names(split, config_name)
    if not shard_files:
        raise SelfAlignError("there are no shard files to write: the build produced no shards")
    if rows_per_file < 1:
        raise SelfAlignError(f"rows_per_file must be at least 1, got {rows_per_file}")
    features = _common_features(shard_files)
    schema = features.arrow_schema  # carries the `huggingface` metadata that restores Image features
    footers = [pq.ParquetFile(path).metadata for path in shard_files]
    num_rows = sum(footer.num_rows for footer in footers)
    num_bytes = sum(
        footer.row_group(i).total_byte_size for footer in footers for i in range(footer.num_row_groups)
    )
    # As `Dataset.to_parquet` does: row groups of about 100 MB uncompressed (or a fixed count of rows
    # for image columns, if `datasets` is configured so), so reading one row does not load a shard.
    row_group_size = get_writer_batch_size_from_features(features) or get_writer_batch_size_from_data_size(
        num_rows, num_bytes
    )
    num_files = max(1, -(-num_rows // rows_per_file))

    folder = Path(output_dir) / data_folder(config_name)
    folder.mkdir(parents=True, exist_ok=True)
    targets = [folder / f"{split}-{index:05d}-of-{num_files:05d}.parquet" for index in range(num_files)]
    rows = _RowStream(_rows_in_order(shard_files, schema, row_group_size))
    for index, target in enumerate(targets):
        temporary = target.with_name(f".{target.name}.tmp")
        with pq.ParquetWriter(
            temporary,
            schema,
            use_content_defined_chunking=datasets_config.DEFAULT_CDC_OPTIONS,
            write_page_index=True,
            **get_parquet_column_options(features, schema),
        ) as writer:
            remaining = num_rows - index * rows_per_file if index == num_files - 1 else rows_per_file
            for table in rows.row_groups(remaining, row_group_size):
                writer.write_table(table, row_group_size=row_group_size)
            # Recorded as `Dataset.to_parquet` does, so a later rewrite can chunk the same way.
            writer.add_key_value_metadata(
                {"content_defined_chunking": json.dumps(datasets_config.DEFAULT_CDC_OPTIONS)}
            )
        temporary.replace(target)
    for stale in set(folder.glob(f"{split}-*.parquet")) - set(targets):  # from an earlier, larger write
        stale.unlink()
    return targets


def _check_names(split: str, config_name: str) -> None:
    if not SPLIT_NAME.match(split):
        raise SelfAlignError(f"'{split}' is not a valid split name: use letters, digits and '_' (e.g. train)")
    if not CONFIG_NAME.match(config_name):
        raise SelfAlignError(
            f"'{config_name}' is not a valid config name: use letters, digits, '_', '.' and '-' (e.g. round2)"
        )


def _common_features(shard_files: Sequence[Path]) -> Features:
    """The shards' features, which must all agree (they come from one builder's `features`)."""
    first = Features.from_arrow_schema(pq.read_schema(shard_files[0]))
    for path in shard_files[1:]:
        features = Features.from_arrow_schema(pq.read_schema(path))
        if features != first:
            raise SelfAlignError(
                f"shard {Path(path).name} has different columns or types than {Path(shard_files[0]).name}: "
                f"{dict(features)} vs {dict(first)}"
            )
    return first


def _rows_in_order(shard_files: Sequence[Path], schema: pa.Schema, batch_size: int) -> Iterator[pa.Table]:
    """Every shard's rows in order, a bounded batch at a time, labelled with the common schema."""
    for path in shard_files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            yield pa.Table.from_batches([batch]).replace_schema_metadata(schema.metadata)


class _RowStream:
    """The rows of a stream of tables, handed out in tables of exactly the sizes asked for."""

    def __init__(self, tables: Iterator[pa.Table]):
        self.tables = tables
        self.leftover: pa.Table | None = None

    def row_groups(self, count: int, row_group_size: int) -> Iterator[pa.Table]:
        """The next `count` rows as tables of `row_group_size` rows (the last one shorter)."""
        while count > 0:
            table = self._take(min(count, row_group_size))
            count -= table.num_rows
            yield table

    def _take(self, count: int) -> pa.Table:
        pieces, missing = [], count
        while missing:
            table = self.leftover if self.leftover is not None else next(self.tables, None)
            if table is None:
                raise SelfAlignError(
                    "the shard files changed while they were being written to the Hub layout"
                )
            pieces.append(table.slice(0, missing))
            self.leftover = table.slice(missing) if table.num_rows > missing else None
            missing -= pieces[-1].num_rows
        return pa.concat_tables(pieces)


def layout_metadata(output_dir: Path) -> DatasetCardData:
    """The card metadata that makes `load_dataset` read every config and split found under `data/`:
    `configs:` (data_files per split) and `dataset_info:` (features, rows and bytes per split), read
    from the Parquet footers only."""
    files_by_config: dict[str, dict[str, list[Path]]] = {}
    for path in sorted(Path(output_dir, DATA_DIR).rglob("*.parquet")):
        if found := _config_and_split(path.relative_to(output_dir).as_posix()):
            config_name, split = found
            files_by_config.setdefault(config_name, {}).setdefault(split, []).append(path)
    configs, infos = MetadataConfigs(), DatasetInfosDict()
    for config_name, splits in sorted(files_by_config.items()):
        configs[config_name] = {
            "data_files": [
                {"split": split, "path": data_files_pattern(config_name, split)} for split in splits
            ]
        }
        split_dict = SplitDict()
        for split, paths in splits.items():
            footers = [pq.ParquetFile(path).metadata for path in paths]
            split_dict.add(
                SplitInfo(
                    name=split,
                    num_bytes=sum(
                        f.row_group(i).total_byte_size for f in footers for i in range(f.num_row_groups)
                    ),
                    num_examples=sum(footer.num_rows for footer in footers),
                )
            )
        first_file = next(iter(splits.values()))[0]
        infos[config_name] = DatasetInfo(
            features=Features.from_arrow_schema(pq.read_schema(first_file)),
            splits=split_dict,
            dataset_size=_total_bytes(split_dict),
        )
    return _as_card_data(configs, infos)


def merge_layout_metadata(local: DatasetCardData, published: DatasetCardData) -> DatasetCardData:
    """`local`'s configs and splits plus those only `published` lists; local entries win."""
    configs = MetadataConfigs.from_dataset_card_data(local)
    infos = DatasetInfosDict.from_dataset_card_data(local)
    published_infos = DatasetInfosDict.from_dataset_card_data(published)
    for config_name, published_config in MetadataConfigs.from_dataset_card_data(published).items():
        if config_name not in configs:
            configs[config_name] = published_config
            if config_name in published_infos:
                infos[config_name] = published_infos[config_name]
            continue
        local_splits = {entry["split"] for entry in configs[config_name]["data_files"]}
        configs[config_name]["data_files"] += [
            entry for entry in published_config.get("data_files", []) if entry["split"] not in local_splits
        ]
        if config_name in infos and config_name in published_infos and published_infos[config_name].splits:
            splits = infos[config_name].splits
            for name, split_info in published_infos[config_name].splits.items():
                if name not in splits:
                    splits.add(split_info)
            infos[config_name].dataset_size = _total_bytes(splits)
    return _as_card_data(configs, infos)


def _total_bytes(splits: SplitDict) -> int:
    return sum(split.num_bytes for split in splits.values())


def _as_card_data(configs: MetadataConfigs, infos: DatasetInfosDict) -> DatasetCardData:
    card_data = DatasetCardData()
    configs.to_dataset_card_data(card_data)
    infos.to_dataset_card_data(card_data)
    total_rows = sum(info.splits.total_num_examples for info in infos.values() if info.splits)
    card_data.size_categories = [size_category(total_rows)]
    return card_data


def size_category(num_rows: int) -> str:
    """The Hub's `size_categories` value for a row count."""
    labels = ["n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B"]
    labels += ["1B<n<10B", "10B<n<100B", "100B<n<1T"]
    return next((label for power, label in enumerate(labels, 3) if num_rows < 10**power), "n>1T")


def push_dataset(
    output_dir: Path,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str,
) -> str:
    """One commit with data/, README.md, plot and rejects files (`*.jsonl` next to the card); a re-run
    with identical files makes no new commit. Returns the commit URL (or the unchanged head's).

    The card pushed lists the configs and splits already on the Hub (at `revision`) next to the local
    ones, so publishing a second config, split or round keeps the earlier ones loadable. Data files of
    the pushed splits that the new layout no longer has are deleted in the same commit.
    """
    check_can_push(repo_id, "hub_dataset_id")
    output_dir = Path(output_dir)
    if not (output_dir / CARD_FILE).is_file():
        raise SelfAlignError(f"{output_dir} has no {CARD_FILE}: write the dataset card before pushing")
    data_files = sorted(
        path.relative_to(output_dir).as_posix() for path in (output_dir / DATA_DIR).rglob("*.parquet")
    )
    data_files = [name for name in data_files if _config_and_split(name)]
    if not data_files:
        raise SelfAlignError(
            f"{output_dir / DATA_DIR} holds no data files: write the Hub layout before pushing"
        )
    side_files = [PLOT_FILE] if (output_dir / PLOT_FILE).is_file() else []
    side_files += sorted(path.name for path in output_dir.glob("*.jsonl"))

    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
    # Everything below reads this head and the commit must have it as parent: a push that landed in
    # between makes this one fail instead of silently dropping the configs that push added to the card.
    head = api.dataset_info(repo_id, revision=revision).sha
    published = set(api.list_repo_files(repo_id, repo_type="dataset", revision=head))

    operations = [CommitOperationAdd(name, output_dir / name) for name in data_files + side_files]
    card = _card_to_push(api, output_dir, repo_id, head, published)
    operations.append(CommitOperationAdd(CARD_FILE, card))
    # Files of a pushed split that the new layout replaced (e.g. 3 files where there are now 2).
    pushed_splits = {_config_and_split(name) for name in data_files}
    operations += [
        CommitOperationDelete(name)
        for name in sorted(published - set(data_files))
        if _config_and_split(name) in pushed_splits
    ]
    try:
        commit = api.create_commit(
            repo_id,
            operations,
            repo_type="dataset",
            revision=revision,
            commit_message=commit_message,
            parent_commit=head,
        )
    except HfHubHTTPError as error:
        if error.response is not None and error.response.status_code == 412:
            raise SelfAlignError(
                f"{repo_id}{f'@{revision}' if revision else ''} changed while this push was being prepared "
                "(another push?): run the push again to merge with it"
            ) from error
        raise
    logger.info("Dataset %s%s: %s", repo_id, f"@{revision}" if revision else "", commit.commit_url)
    return commit.commit_url


def _config_and_split(path_in_repo: str) -> tuple[str, str] | None:
    """(config, split) of a data file of the Hub layout; None for any other file."""
    match = DATA_FILE.match(path_in_repo)
    return (match["config"] or DEFAULT_CONFIG, match["split"]) if match else None


def _card_to_push(api: HfApi, output_dir: Path, repo_id: str, head: str, published: set[str]) -> Path | bytes:
    """The local card, with the configs and splits that only the Hub's card lists added to its metadata.

    The local file itself is left alone: it must keep describing only what `load_dataset(output_dir)`
    can load."""
    local_path = output_dir / CARD_FILE
    if CARD_FILE not in published:
        return local_path
    remote = DatasetCard.load(api.hf_hub_download(repo_id, CARD_FILE, repo_type="dataset", revision=head))
    card = DatasetCard.load(local_path)
    merged = merge_layout_metadata(card.data, remote.data)
    if all(card.data.get(key) == merged.get(key) for key in ("configs", "dataset_info", "size_categories")):
        return local_path
    for key in ("configs", "dataset_info", "size_categories"):
        card.data[key] = merged[key]
    return str(card).encode()
