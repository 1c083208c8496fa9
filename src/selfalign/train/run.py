"""The training entry points' one skeleton (`run_training`) and the steps it is made of."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import datasets
import transformers
from transformers import TrainingArguments
from transformers.trainer_utils import get_last_checkpoint
from trl import DatasetMixtureConfig, ModelConfig

from selfalign.errors import SelfAlignError
from selfalign.models import load_vlm_processor
from selfalign.publish.hub import check_can_push, push_folder
from selfalign.publish.model_card import TrainingRun, render_model_card
from selfalign.train.arguments import ScriptArguments
from selfalign.train.data import load_training_data
from selfalign.train.model import (
    freeze_vision_tower,
    keep_adapters_in_float32,
    lora_config,
    model_init_kwargs,
    quantization_config,
)

logger = logging.getLogger("selfalign")
# Hyperparameters a card reports, when the trainer's config has them.
CARD_HYPERPARAMETERS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "lr_scheduler_type",
    "warmup_steps",
    "beta",
    "loss_type",
    "seed",
)


def run_training(
    trainer_class: type,
    data_contract: str,
    script_args: ScriptArguments,
    training_args: TrainingArguments,
    model_args: ModelConfig,
    mixture: DatasetMixtureConfig,
) -> None:
    """Check, load, train (resuming), evaluate, save, write the card, push: the same for SFT and DPO.

    `data_contract` names the columns the trainer reads ("sft" or "dpo", see `selfalign.train.data`).
    """
    setup_logging(training_args)
    push = plan_publishing(script_args, training_args, model_args)
    resume_from = checkpoint_to_resume(training_args)

    processor = load_vlm_processor(
        model_args.model_name_or_path, model_args.model_revision, script_args.image_max_pixels
    )
    evaluate = training_args.eval_strategy != "no"
    data = load_training_data(script_args, mixture, data_contract, need_test_split=evaluate)
    training_args.model_init_kwargs = model_init_kwargs(model_args, training_args)

    trainer = trainer_class(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["test"] if evaluate else None,
        processing_class=processor,
        quantization_config=quantization_config(model_args),
        peft_config=lora_config(model_args),
    )
    if model_args.load_in_4bit:
        keep_adapters_in_float32(trainer.model)
    if script_args.freeze_vision_tower:
        logger.info("vision tower frozen: %d weights", freeze_vision_tower(trainer.model))
    train_and_evaluate(trainer, resume_from, evaluate)
    finish_run(trainer, script_args, training_args, model_args, mixture, push)
    trainer.end()


def setup_logging(training_args: TrainingArguments) -> None:
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stdout
    )
    level = training_args.get_process_log_level()
    logger.setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)


def plan_publishing(
    script_args: ScriptArguments, training_args: TrainingArguments, model_args: ModelConfig
) -> bool:
    """Check the push settings before training starts; return whether to push at the end.

    The trainer's own pushing is switched off: the run pushes once, at the end, with its own card.
    """
    push = training_args.push_to_hub
    training_args.push_to_hub = False
    if push:
        check_can_push(training_args.hub_model_id)
        if Path(model_args.model_name_or_path).exists() and not script_args.base_model_id:
            raise SelfAlignError(
                f"model_name_or_path '{model_args.model_name_or_path}' is a local folder: set `base_model_id` to "
                "its Hub id so that the published card and usage snippet name a model others can download"
            )
    return push


def checkpoint_to_resume(training_args: TrainingArguments) -> str | None:
    """The checkpoint named in the recipe, else the last one in output_dir (an interrupted run)."""
    if training_args.resume_from_checkpoint:
        return training_args.resume_from_checkpoint
    output_dir = Path(training_args.output_dir)
    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if last:
        logger.info("Resuming from %s", last)
    return last


def finish_run(
    trainer, script_args, training_args, model_args, mixture: DatasetMixtureConfig, push: bool
) -> None:
    """Save metrics, state, model and card; push when asked."""
    trainer.save_model(training_args.output_dir)
    if not trainer.accelerator.is_main_process:
        return
    trainer.save_state()
    card = render_model_card(
        training_run(trainer, script_args, training_args, model_args, mixture), script_args.model_role
    )
    card.save(Path(training_args.output_dir) / "README.md")
    logger.info("Model and card saved to %s", training_args.output_dir)
    if push:
        url = push_folder(
            training_args.output_dir,
            training_args.hub_model_id,
            private=training_args.hub_private_repo,
            revision=training_args.hub_revision,
            commit_message=f"{type(trainer).__name__.removesuffix('Trainer')} run with selfalign",
            ignore_patterns=["checkpoint-*", "checkpoint-*/**", "runs/**"],
        )
        logger.info("Pushed to %s", url)


def training_run(trainer, script_args, training_args, model_args, mixture) -> TrainingRun:
    """The card's facts about this run."""
    base_model = script_args.base_model_id or model_args.model_name_or_path
    dataset_names = [config.path for config in mixture.datasets] or [script_args.dataset_name]
    quantization = None
    if model_args.load_in_4bit:
        quantization = f"4-bit {model_args.bnb_4bit_quant_type.upper()} (QLoRA)"
    elif model_args.load_in_8bit:
        quantization = "8-bit"
    hyperparameters = {
        name: getattr(training_args, name) for name in CARD_HYPERPARAMETERS if hasattr(training_args, name)
    }
    if script_args.freeze_vision_tower:
        hyperparameters["freeze_vision_tower"] = True
    lora = None
    if model_args.use_peft:
        lora = {"r": model_args.lora_r, "alpha": model_args.lora_alpha, "dropout": model_args.lora_dropout}
    return TrainingRun(
        repo_id=training_args.hub_model_id or Path(training_args.output_dir).name,
        base_model=base_model,
        trainer=type(trainer).__name__.removesuffix("Trainer"),
        is_adapter=model_args.use_peft,
        # Local folders are left out: a card names only datasets others can download.
        datasets=[name for name in dataset_names if name and not Path(name).exists()],
        method=script_args.method,
        quantization=quantization,
        lora=lora,
        hyperparameters=hyperparameters,
    )


def train_and_evaluate(trainer, resume_from: str | None, evaluate: bool) -> None:
    """Train (resuming if there is a checkpoint), then evaluate if the recipe asks; save the metrics."""
    result = trainer.train(resume_from_checkpoint=resume_from)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    if evaluate:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
