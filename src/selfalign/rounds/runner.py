"""Running a run's rounds: each step the project's own entry point, recorded as it finishes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from selfalign.errors import SelfAlignError
from selfalign.publish.hub import check_can_push
from selfalign.rounds.arguments import IterateArguments
from selfalign.rounds.commands import run_entry_point
from selfalign.rounds.progress import Progress
from selfalign.rounds.summary import write_summary


def _dataset_rows(folder: Path) -> int:
    return sum(pq.read_metadata(path).num_rows for path in sorted((folder / "data").glob("*.parquet")))


def _published(args: IterateArguments, kind: str, round_number: int) -> str | None:
    base = args.hub_model_id if kind == "model" else args.hub_dataset_id
    return f"{base}-iter{round_number}" if args.push_to_hub else None


def run_round(
    args: IterateArguments, progress: Progress, round_number: int, policy: str, policy_id: str
) -> str:
    """Build, train, merge (and evaluate) round `round_number`; return the next round's policy."""
    folder = Path(args.output_dir) / f"round_{round_number}"
    step = f"round_{round_number}"
    print(f"\n=== Round {round_number} of {args.rounds}: policy {policy}", flush=True)

    if not progress.done(f"{step}/pairs"):
        dataset_id = _published(args, "dataset", round_number)
        push = ["--push_to_hub", "true", "--hub_dataset_id", dataset_id] if dataset_id else []
        seconds = run_entry_point(
            "dataset_builders/csr_pairs.py",
            ["--config", args.pairs_config, "--policy_model", policy, "--iteration", str(round_number),
             "--output_dir", str(folder / "pairs"), "--hub_private_repo", str(args.hub_private_repo).lower(),
             *push, *args.pairs_args],
            args.launcher,
        )  # fmt: skip
        rows = _dataset_rows(folder / "pairs")
        if rows == 0:
            raise SelfAlignError(f"round {round_number} made no pairs: see {folder / 'pairs' / 'README.md'}")
        progress.record(f"{step}/pairs", {"path": str(folder / "pairs"), "hub_id": dataset_id, "rows": rows,
                                          "seconds": round(seconds, 1)})  # fmt: skip

    if not progress.done(f"{step}/dpo"):
        seconds = run_entry_point(
            "scripts/dpo.py",
            ["--config", args.dpo_config, "--model_name_or_path", policy,
             "--dataset_name", str(folder / "pairs"), "--output_dir", str(folder / "dpo"),
             "--push_to_hub", "false", *args.dpo_args],
            args.launcher,
        )  # fmt: skip
        metrics = json.loads((folder / "dpo" / "all_results.json").read_text())
        progress.record(
            f"{step}/dpo", {"path": str(folder / "dpo"), "metrics": metrics, "seconds": round(seconds, 1)}
        )

    merged = progress.done(f"{step}/merged")
    if not merged:
        model_id = _published(args, "model", round_number)
        push = ["--push_to_hub", "true", "--hub_model_id", model_id, "--hub_private_repo",
                str(args.hub_private_repo).lower()] if model_id else []  # fmt: skip
        seconds = run_entry_point(
            "scripts/merge_adapter.py",
            ["--adapter", str(folder / "dpo"), "--output_dir", str(folder / "merged"), "--dtype", args.merge_dtype,
             "--base_model_id", policy_id, *push],
        )  # fmt: skip
        merged = progress.record(
            f"{step}/merged",
            {"path": str(folder / "merged"), "hub_id": model_id, "seconds": round(seconds, 1)},
        )
    next_policy = merged["hub_id"] or merged["path"]

    if args.eval_config and not progress.done(f"{step}/eval"):
        evaluate(args, progress, f"{step}/eval", next_policy, folder / "eval")
    return next_policy


def evaluate(args: IterateArguments, progress: Progress, step: str, model: str, output_dir: Path) -> None:
    seconds = run_entry_point(
        "scripts/evaluate.py",
        [
            "--config",
            args.eval_config,
            "--model_name_or_path",
            model,
            "--output_dir",
            str(output_dir),
            *args.eval_args,
        ],
    )
    report = json.loads((output_dir / "report.json").read_text())
    progress.record(step, {"path": str(output_dir), "report": report, "seconds": round(seconds, 1)})


def run_rounds(args: IterateArguments) -> str:
    """Run every round not yet finished, then write and return the summary."""
    if args.push_to_hub:
        check_can_push(args.hub_model_id)
        check_can_push(args.hub_dataset_id, "hub_dataset_id")
    policy_id = args.policy_model_id or args.policy_model
    if args.push_to_hub and Path(policy_id).exists():
        raise SelfAlignError(
            f"policy_model '{args.policy_model}' is a local folder: set `policy_model_id` to its Hub id so "
            "that the published cards name a model others can download"
        )
    progress = Progress(args)
    if args.eval_config and args.evaluate_start and not progress.done("round_0/eval"):
        print(f"\n=== The starting policy {args.policy_model}: evaluation", flush=True)
        evaluate(
            args, progress, "round_0/eval", args.policy_model, Path(args.output_dir) / "round_0" / "eval"
        )
    policy = args.policy_model
    for round_number in range(1, args.rounds + 1):
        next_policy = run_round(args, progress, round_number, policy, policy_id)
        policy, policy_id = next_policy, next_policy
    return write_summary(args, progress)
