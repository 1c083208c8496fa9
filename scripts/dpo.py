"""DPO for a vision-language model on a preference dataset (full, LoRA or QLoRA).

    accelerate launch --config_file recipes/accelerate_configs/zero2.yaml \
        scripts/dpo.py --config recipes/llava-1.5-7b/csr/dpo_lora.yaml

Any recipe key can be overridden on the command line (`--learning_rate 1.0e-6`). The steps (checks,
data, model, train with resume, save, card, push) are `selfalign.train.run.run_training`.
"""

import sys

from trl import DatasetMixtureConfig, DPOConfig, DPOTrainer, ModelConfig

from selfalign.config import parse_recipe
from selfalign.errors import SelfAlignError
from selfalign.train.arguments import ScriptArguments
from selfalign.train.run import run_training

RECIPE_DATACLASSES = (ScriptArguments, DPOConfig, ModelConfig, DatasetMixtureConfig)


def main(
    script_args: ScriptArguments,
    training_args: DPOConfig,
    model_args: ModelConfig,
    mixture: DatasetMixtureConfig,
):
    run_training(DPOTrainer, "dpo", script_args, training_args, model_args, mixture)


if __name__ == "__main__":
    try:
        main(*parse_recipe(RECIPE_DATACLASSES))
    except SelfAlignError as error:
        sys.exit(f"error: {error}")
