"""Iterative CSR: N rounds of (pairs from the current policy -> DPO with LoRA -> merge the LoRA into the policy).

    python scripts/iterate.py --config recipes/llava-1.5-7b/csr/iterate.yaml

Each round's steps run as the commands a user would type, each finished step is recorded so that a
rerun goes on from the first unfinished one, and every round is published with `push_to_hub`; the
steps are `selfalign.rounds`.
"""

from selfalign.config import run_main
from selfalign.rounds.arguments import IterateArguments
from selfalign.rounds.runner import run_rounds

RECIPE_DATACLASSES = (IterateArguments,)


def main(args: IterateArguments) -> str:
    summary = run_rounds(args)
    print("\n" + summary)
    return summary


if __name__ == "__main__":
    run_main(main, RECIPE_DATACLASSES)
