"""Supervised fine-tuning of a vision-language model: a policy, or an EACO Critic on SEI data (full, LoRA or QLoRA).

    accelerate launch --config_file recipes/accelerate_configs/zero2.yaml \
        scripts/sft.py --config recipes/llava-v1.6-mistral-7b/eaco/critic_sft_qlora.yaml

Any recipe key can be overridden on the command line (`--learning_rate 1.0e-6`).
"""

import sys

from trl import DatasetMixtureConfig, ModelConfig, SFTConfig, SFTTrainer

from selfalign.config import parse_recipe
from selfalign.errors import SelfAlignError
from selfalign.train.arguments import ScriptArguments
from selfalign.train.data import load_training_data
from selfalign.train.model import load_processor, lora_config, model_init_kwargs, quantization_config
from selfalign.train.run import (
    checkpoint_to_resume,
    finish_run,
    plan_publishing,
    setup_logging,
    train_and_evaluate,
)


def main(
    script_args: ScriptArguments,
    training_args: SFTConfig,
    model_args: ModelConfig,
    mixture: DatasetMixtureConfig,
):
    setup_logging(training_args)
    push = plan_publishing(script_args, training_args, model_args)
    resume_from = checkpoint_to_resume(training_args)

    processor = load_processor(model_args, script_args.image_max_pixels)
    evaluate = training_args.eval_strategy != "no"
    data = load_training_data(script_args, mixture, "sft", need_test_split=evaluate)
    training_args.model_init_kwargs = model_init_kwargs(model_args, training_args)

    trainer = SFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["test"] if evaluate else None,
        processing_class=processor,
        quantization_config=quantization_config(model_args),
        peft_config=lora_config(model_args),
    )
    train_and_evaluate(trainer, resume_from, evaluate)
    finish_run(trainer, script_args, training_args, model_args, mixture, push)
    trainer.end()


if __name__ == "__main__":
    try:
        main(*parse_recipe((ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig)))
    except SelfAlignError as error:
        sys.exit(f"error: {error}")
