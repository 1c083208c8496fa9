"""Supervised fine-tuning of a vision-language model: a policy, or an EACO Critic on SEI data
(full, LoRA or QLoRA).

    accelerate launch --config_file recipes/accelerate_configs/zero2.yaml \
        scripts/sft.py --config recipes/llava-v1.6-mistral-7b/eaco/critic_sft_qlora.yaml

Any recipe key can be overridden on the command line (`--learning_rate 1.0e-5`). The steps (checks,
data, model, train with resume, save, card, push) are `selfalign.train.run.run_training`.
"""

import sys

from trl import DatasetMixtureConfig, ModelConfig, SFTConfig, SFTTrainer

from selfalign.config import parse_recipe
from selfalign.errors import SelfAlignError
from selfalign.train.arguments import ScriptArguments
from selfalign.train.run import run_training

RECIPE_DATACLASSES = (ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig)


def main(
    script_args: ScriptArguments,
    training_args: SFTConfig,
    model_args: ModelConfig,
    mixture: DatasetMixtureConfig,
):
    run_training(SFTTrainer, "sft", script_args, training_args, model_args, mixture)


if __name__ == "__main__":
    try:
        main(*parse_recipe(RECIPE_DATACLASSES))
    except SelfAlignError as error:
        sys.exit(f"error: {error}")
