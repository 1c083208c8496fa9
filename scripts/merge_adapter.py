"""Merge a LoRA adapter into its base model and save the merged model with its processor.

    python scripts/merge_adapter.py --adapter outputs/llava-v1.6-mistral-7b/eaco/dpo_lora \
        --output_dir outputs/llava-v1.6-mistral-7b/eaco/dpo_merged [--push_to_hub true --hub_model_id your-org/...]

Used between stages: EACO's SFT stage and each CSR iteration start from the merged model. The steps
are `selfalign.train.merge.merge_adapter`.
"""

import sys
from pathlib import Path

from selfalign.config import parse_recipe
from selfalign.errors import SelfAlignError
from selfalign.train.merge import MergeArguments, merge_adapter

RECIPE_DATACLASSES = (MergeArguments,)


def main(args: MergeArguments) -> Path:
    return merge_adapter(args)


if __name__ == "__main__":
    try:
        main(*parse_recipe(RECIPE_DATACLASSES))
    except SelfAlignError as error:
        sys.exit(f"error: {error}")
