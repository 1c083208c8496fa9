"""A finished run's summary: summary.json (every step's record) and summary.md (a table per round)."""

from __future__ import annotations

import json
from pathlib import Path

from selfalign.evaluation.comparison import comparison_markdown
from selfalign.rounds.arguments import IterateArguments
from selfalign.rounds.progress import Progress


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
        start = steps.get("round_0/eval")
        reports = {"start": start["report"]} if start else {}
        reports.update({f"round {entry['round']}": entry["eval"]["report"] for entry in rounds})
        lines += ["", comparison_markdown(reports).rstrip()]
    markdown = "\n".join(lines) + "\n"
    (output_dir / "summary.md").write_text(markdown)
    return markdown
