"""The sharded builder runner under every dataset builder.

Inputs are cut into fixed shards in input order. Each finished shard is written atomically (a
temporary file, then a rename), so a builder killed at any moment and started again with the same
command skips the finished shards and redoes at most the ones in flight. Under `torchrun` or
`accelerate launch` with K processes, shard k goes to rank k mod K; the main process then merges the
shards in shard order, so the dataset does not depend on the number of processes. Only one shard
of rows is ever held in memory; the merge keeps the row ids seen so far, to drop duplicates.

Ranks hand shards over through `output_dir`, so on several nodes it must be on a shared
filesystem: the main process waits for every shard file to appear there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from accelerate import PartialState
from datasets import Dataset, Features
from tqdm.auto import tqdm

from selfalign.errors import SelfAlignError
from selfalign.images import Rejection, shareable_source
from selfalign.publish.dataset import push_dataset, write_hub_layout
from selfalign.publish.dataset_card import DatasetCardInfo, write_dataset_card

logger = logging.getLogger("selfalign")
SHARDS_DIR = "shards"
REJECTS_FILE = "rejects.jsonl"
BUILD_RECORD = "build.json"
# How often the main process looks at the other ranks' shards while it waits for them.
POLL_SECONDS = 0.5


@dataclass
class BuildArguments:
    """Recipe keys shared by every builder: where the output goes and where it is published."""

    output_dir: str = field(metadata={"help": "Folder for shards, the Hub-layout dataset, card and rejects."})
    shard_size: int = field(
        default=32, metadata={"help": "Inputs per shard: the unit of resuming and of memory."}
    )
    split: str = field(default="train", metadata={"help": "Split name of the published data."})
    config_name: str = field(
        default="default", metadata={"help": "Dataset config name of the published data."}
    )
    push_to_hub: bool = field(
        default=False, metadata={"help": "Push the finished dataset to `hub_dataset_id`."}
    )
    hub_dataset_id: str | None = field(
        default=None, metadata={"help": "Hub dataset repo id, e.g. my-org/pairs."}
    )
    hub_private_repo: bool = field(default=True, metadata={"help": "Create the Hub repo as private."})
    hub_revision: str | None = field(
        default=None,
        metadata={"help": "Branch to push to (e.g. one per iteration or round); created if new."},
    )


@dataclass
class ShardOutput:
    """What processing one shard produced, in input order: accepted rows with the input each came
    from (`sources`, kept beside the shard to report duplicates), and rejected inputs; plus the
    builder's own tallies (`counts`, e.g. sentences dropped), kept beside the shard so that the
    totals cover every shard, whichever process or earlier run built it."""

    rows: list[dict[str, Any]]
    sources: list[str]
    rejections: list[Rejection]
    counts: Counter = field(default_factory=Counter)


@dataclass
class BuildResult:
    output_dir: Path
    shard_files: list[Path]  # the merged dataset's parts, in order (duplicates removed)
    num_rows: int
    rejections: Counter
    counts: Counter  # the shards' `counts`, summed


def process_rank() -> tuple[int, int, PartialState]:
    """(rank, world size, state) of this process; one process when not launched distributed."""
    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes, state


def run_sharded_build(
    items: Sequence[Any],
    process_shard: Callable[[Sequence[Any]], ShardOutput],
    features: Features,
    args: BuildArguments,
    settings: dict[str, Any],
) -> BuildResult | None:
    """Process `items` shard by shard (this rank's share), then, on the main process, merge.

    Returns the merged result on the main process and None on the others. Rows must carry an `id`
    column: a row whose id was already seen earlier in input order is rejected as a duplicate.
    `settings` are the recipe values that shape the rows: finished shards are reused only by a run
    with the same settings and the same inputs (items are compared by their `str`).
    """
    rank, world, state = process_rank()
    shards_dir = Path(args.output_dir) / SHARDS_DIR
    shards_dir.mkdir(parents=True, exist_ok=True)
    num_shards = (len(items) + args.shard_size - 1) // args.shard_size
    inputs = hashlib.sha256("\n".join(map(str, items)).encode()).hexdigest()
    _check_same_build(shards_dir, {"settings": settings, "shard_size": args.shard_size, "inputs": inputs})
    logger.info(
        "process %d of %d: shards %d, %d, ... of %d (%d inputs)",
        rank,
        world,
        rank,
        rank + world,
        num_shards,
        len(items),
    )
    progress = ShardProgress(shards_dir, num_shards) if state.is_main_process else None

    for shard in range(rank, num_shards, world):
        if _shard_path(shards_dir, shard).exists():
            continue
        for leftover in shards_dir.glob(f".shard-{shard:05d}.*.tmp"):  # from a run killed mid-write
            leftover.unlink()
        start = shard * args.shard_size
        output = process_shard(items[start : start + args.shard_size])
        _write_shard(shards_dir, shard, output, features)
        if progress:
            progress.refresh()

    if not state.is_main_process:
        return None
    progress.wait_for_all()
    return _merge_shards(shards_dir, num_shards, Path(args.output_dir))


class ShardProgress:
    """A progress bar over every rank's shards, read from the shard files on disk."""

    def __init__(self, shards_dir: Path, num_shards: int):
        self.shards_dir = shards_dir
        self.pending = set(range(num_shards))
        self.rows = 0
        self.bar = tqdm(total=num_shards, unit="shard", desc="building")
        self._collect_finished()
        self.rows_at_start = self.rows  # rows resumed from an earlier run don't count towards the rate
        self.started = time.monotonic()

    def refresh(self) -> None:
        self._collect_finished()
        rate = (self.rows - self.rows_at_start) / max(time.monotonic() - self.started, 1e-9)
        self.bar.set_postfix(rows=self.rows, rows_per_s=f"{rate:.2f}")

    def _collect_finished(self) -> None:
        for shard in sorted(self.pending):
            path = _shard_path(self.shards_dir, shard)
            if path.exists():
                self.pending.discard(shard)
                self.rows += pq.ParquetFile(path).metadata.num_rows
                self.bar.update(1)

    def wait_for_all(self) -> None:
        while self.pending:
            time.sleep(POLL_SECONDS)
            self.refresh()
        self.bar.close()


def _check_same_build(shards_dir: Path, build: dict[str, Any]) -> None:
    """Record what the shards are built from; refuse to mix them with shards of another build."""
    record = shards_dir / BUILD_RECORD
    text = json.dumps(build, sort_keys=True, indent=1, default=str)
    if record.exists() and record.read_text() != text:
        raise SelfAlignError(
            f"{shards_dir.parent} holds shards of a build with other settings ({record} differs): use another "
            "output_dir, or delete this one to start over"
        )
    _atomic_write(record, lambda path: path.write_text(text))


def _shard_path(shards_dir: Path, shard: int) -> Path:
    return shards_dir / f"shard-{shard:05d}.parquet"


def _rejects_path(shards_dir: Path, shard: int) -> Path:
    return shards_dir / f"shard-{shard:05d}.rejects.jsonl"


def _sources_path(shards_dir: Path, shard: int) -> Path:
    return shards_dir / f"shard-{shard:05d}.sources.json"


def _counts_path(shards_dir: Path, shard: int) -> Path:
    return shards_dir / f"shard-{shard:05d}.counts.json"


def _write_shard(shards_dir: Path, shard: int, output: ShardOutput, features: Features) -> None:
    """Side files first, then the Parquet file, whose appearance marks the shard as finished."""
    rejects = "".join(_reject_line(rejection) for rejection in output.rejections)
    _atomic_write(_rejects_path(shards_dir, shard), lambda path: path.write_text(rejects))
    _atomic_write(_sources_path(shards_dir, shard), lambda path: path.write_text(json.dumps(output.sources)))
    _atomic_write(_counts_path(shards_dir, shard), lambda path: path.write_text(json.dumps(output.counts)))
    rows = Dataset.from_list(output.rows, features=features) if output.rows else features_only(features)
    _atomic_write(_shard_path(shards_dir, shard), lambda path: rows.to_parquet(str(path)))


def features_only(features: Features) -> Dataset:
    return Dataset.from_dict({name: [] for name in features}, features=features)


def _atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(temporary)
    os.replace(temporary, path)


def _reject_line(rejection: Rejection) -> str:
    record = asdict(rejection) | {"source": shareable_source(rejection.source)}
    return json.dumps(record, ensure_ascii=False) + "\n"


def _merge_shards(shards_dir: Path, num_shards: int, output_dir: Path) -> BuildResult:
    """Drop rows whose id appeared in an earlier shard (or earlier in the same one) and gather the rejects."""
    seen: set[str] = set()
    parts, reasons, counts, num_rows = [], Counter(), Counter(), 0
    with open(output_dir / REJECTS_FILE, "w") as rejects_out:
        for shard in range(num_shards):
            path = _shard_path(shards_dir, shard)
            for line in _rejects_path(shards_dir, shard).read_text().splitlines():
                rejects_out.write(line + "\n")
                reasons[json.loads(line)["reason"]] += 1
            counts.update(json.loads(_counts_path(shards_dir, shard).read_text()))
            ids = pq.read_table(path, columns=["id"])["id"].to_pylist()
            sources = json.loads(_sources_path(shards_dir, shard).read_text())
            keep = []
            for position, (row_id, source) in enumerate(zip(ids, sources, strict=True)):
                if row_id in seen:
                    detail = f"same image and prompt as an earlier input (id {row_id})"
                    rejects_out.write(_reject_line(Rejection(source, "duplicate", detail)))
                    reasons["duplicate"] += 1
                else:
                    seen.add(row_id)
                    keep.append(position)
            if len(keep) < len(ids):
                path = _without_duplicates(path, keep)
            parts.append(path)
            num_rows += len(keep)
    return BuildResult(output_dir, parts, num_rows, reasons, counts)


def _without_duplicates(path: Path, keep: list[int]) -> Path:
    """A copy of a shard holding only the rows in `keep` (rare: only shards with duplicates)."""
    table = pq.read_table(path)
    deduplicated = path.with_name(path.stem + ".deduplicated.parquet")
    _atomic_write(deduplicated, lambda target: pq.write_table(table.take(pc.cast(keep, "int64")), target))
    return deduplicated


def publish_build(result: BuildResult, args: BuildArguments, card: DatasetCardInfo) -> None:
    """Write the Hub-layout dataset and its card next to the shards; push when the recipe asks."""
    write_hub_layout(result.shard_files, result.output_dir, split=args.split, config_name=args.config_name)
    write_dataset_card(result.output_dir, card, split=args.split, config_name=args.config_name)
    logger.info(
        "%d rows written to %s (%d inputs rejected, see %s)",
        result.num_rows,
        result.output_dir,
        sum(result.rejections.values()),
        REJECTS_FILE,
    )
    if args.push_to_hub:
        url = push_dataset(
            result.output_dir,
            args.hub_dataset_id,
            private=args.hub_private_repo,
            revision=args.hub_revision,
            commit_message=f"{card.pretty_name}: {result.num_rows} rows",
        )
        logger.info("Pushed to %s", url)


def model_reference(name_or_path: str) -> str:
    """How a row names a model: its Hub id, or a local folder's name only (rows never hold local paths)."""
    return Path(name_or_path).name if Path(name_or_path).is_dir() else name_or_path


def recipe_values(*configs) -> dict[str, Any]:
    """The parsed recipe as one flat mapping, for the dataset card."""
    values = {}
    for config in configs:
        values.update(asdict(config))
    return values
