"""Iterative CSR: N rounds of (pairs from the current policy -> DPO with LoRA -> merge the LoRA into the policy).

    python scripts/iterate.py --config recipes/llava-1.5-7b/csr/iterate.yaml

Round k runs, each as the command a user would type (a `launcher` such as `accelerate launch ...`
goes in front of the builder and the DPO run):

1. `dataset_builders/csr_pairs.py --config <pairs_config> --policy_model <policy> --iteration k`,
2. `scripts/dpo.py --config <dpo_config> --model_name_or_path <policy> --dataset_name <the pairs>`,
3. `scripts/merge_adapter.py`: the merged model is round k+1's policy,
4. with an `eval_config`, `scripts/evaluate.py` on the merged model (and once on the starting policy).

With `push_to_hub`, round k's pairs go to `<hub_dataset_id>-iter<k>` and its merged model to
`<hub_model_id>-iter<k>`, and the next round starts from that Hub copy. Every finished step is recorded
in `<output_dir>/progress.json`, so a rerun of the same command after an interruption goes on from the
first unfinished step (a builder also resumes from its finished shards, DPO from its last checkpoint).
At the end, `summary.json` and `summary.md` hold every round: its pairs, DPO metrics, model and scores.
"""

import json
import logging
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from selfalign.commands import run_entry_point, setup_logging
from selfalign.comparison import comparison_markdown
from selfalign.config import parse_recipe
from selfalign.errors import SelfAlignError
from selfalign.publish.hub import check_can_push

logger = logging.getLogger("selfalign")


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


class Progress:
    """The finished steps of a run, on disk, so that an interrupted run goes on where it stopped."""

    def __init__(self, args: IterateArguments):
        self.path = Path(args.output_dir) / "progress.json"
        settings = {key: value for key, value in asdict(args).items() if key != "rounds"}
        if self.path.is_file():
            saved = json.loads(self.path.read_text())
            if saved["settings"] != settings:
                changed = sorted(key for key in settings if saved["settings"].get(key) != settings[key])
                raise SelfAlignError(
                    f"{args.output_dir} holds a run with other settings ({', '.join(changed)}); "
                    "use another output_dir or the same settings (only `rounds` may grow)"
                )
            self.state = saved
        else:
            self.state = {"settings": settings, "steps": {}}

    def done(self, step: str) -> dict | None:
        return self.state["steps"].get(step)

    def record(self, step: str, result: dict) -> dict:
        self.state["steps"][step] = result
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.state, indent=2) + "\n")
        temporary.replace(self.path)  # atomic: a kill never leaves half a progress file
        return result


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


def write_summary(args: IterateArguments, progress: Progress) -> str:
    """summary.json (every step's record) and summary.md (a table per round); returns the markdown."""
    steps = progress.state["steps"]
    rounds = []
    for number in range(1, args.rounds + 1):
        step = f"round_{number}"
        rounds.append(
            {
                "round": number,
                "pairs": steps[f"{step}/pairs"],
                "dpo": steps[f"{step}/dpo"],
                "model": steps[f"{step}/merged"],
                "eval": steps.get(f"{step}/eval"),
            }
        )
    output_dir = Path(args.output_dir)
    (output_dir / "summary.json").write_text(
        json.dumps(
            {"policy_model": args.policy_model, "start_eval": steps.get("round_0/eval"), "rounds": rounds},
            indent=2,
        )
        + "\n"  # fmt: skip
    )
    lines = [
        f"# CSR: {args.rounds} round{'s' if args.rounds > 1 else ''} from `{args.policy_model}`",
        "",
        "| round | pairs | DPO train loss | model |",
        "|---|---|---|---|",
    ]
    for entry in rounds:
        model = entry["model"]["hub_id"] or Path(entry["model"]["path"]).relative_to(output_dir)
        lines.append(
            f"| {entry['round']} | {entry['pairs']['rows']} | {entry['dpo']['metrics'].get('train_loss', float('nan')):.4f} "
            f"| `{model}` |"
        )
    if args.eval_config:
        reports = {"start": steps["round_0/eval"]["report"]}
        reports.update({f"round {entry['round']}": entry["eval"]["report"] for entry in rounds})
        lines += ["", comparison_markdown(reports).rstrip()]
    markdown = "\n".join(lines) + "\n"
    (output_dir / "summary.md").write_text(markdown)
    return markdown


def main(args: IterateArguments) -> str:
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
    if args.eval_config and not progress.done("round_0/eval"):
        print(f"\n=== The starting policy {args.policy_model}: evaluation", flush=True)
        evaluate(
            args, progress, "round_0/eval", args.policy_model, Path(args.output_dir) / "round_0" / "eval"
        )
    policy = args.policy_model
    for round_number in range(1, args.rounds + 1):
        next_policy = run_round(args, progress, round_number, policy, policy_id)
        policy, policy_id = next_policy, next_policy
    summary = write_summary(args, progress)
    print("\n" + summary)
    return summary


if __name__ == "__main__":
    setup_logging()
    try:
        main(*parse_recipe((IterateArguments,)))
    except SelfAlignError as error:
        sys.exit(f"error: {error}")
