"""Evaluate a policy VLM (base, merged, or a LoRA adapter on its base) on held-out shapes-world scenes.

    python dataset_builders/shapes.py --config recipes/shapes/world.yaml --kind eval --output_dir outputs/shapes/eval
    python scripts/evaluate.py --config recipes/shapes/eval.yaml [--model_name_or_path outputs/shapes/policy]

Greedy captions are scored with CHAIR (CHAIR_i, CHAIR_s, object recall, mean caption length) and
greedy answers to the POPE probes with POPE (accuracy, precision, recall, F1, yes-ratio per sampling
strategy). Writes report.json (every number, the recipe, the model id and revision), report.md (a
short table, also printed) and generations.jsonl (what the model wrote) into `output_dir`. The steps
are `selfalign.evaluation.report.evaluate_model`.
"""

import sys
from pathlib import Path

# This file shares its name with the `evaluate` library: run as a script, its folder comes first on
# the import path and `import evaluate` would find this file. Drop the folder before importing.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

from selfalign.config import run_main  # noqa: E402
from selfalign.evaluation.inputs import EvaluationArguments  # noqa: E402
from selfalign.evaluation.report import evaluate_model, markdown_report  # noqa: E402

RECIPE_DATACLASSES = (EvaluationArguments,)


def main(args: EvaluationArguments) -> dict:
    report = evaluate_model(args)
    print(markdown_report(report))
    print(f"report written to {args.output_dir}/report.json and report.md ({report['seconds']} s)")
    return report


if __name__ == "__main__":
    run_main(main, RECIPE_DATACLASSES)
