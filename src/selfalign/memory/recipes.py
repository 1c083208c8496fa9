"""What a training recipe asks for, read as the training scripts read it, in the terms the estimate needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from selfalign.errors import SelfAlignError


@dataclass
class TrainingSetup:
    """What a recipe asks for, in the terms the estimate needs."""

    trainer: Literal["dpo", "sft"] = "dpo"
    finetuning: Literal["full", "lora", "qlora", "lora_8bit"] = "lora"
    model_role: Literal["policy", "critic"] = "policy"
    dtype_bytes: int = 2  # bytes per weight as loaded (`dtype`)
    mixed_precision: bool = True  # bf16/fp16 autocast (`bf16`/`fp16`)
    per_device_batch_size: int = 1
    activation_checkpointing: bool = True
    lora_r: int = 128
    lora_dropout: float = 0.05
    lora_target_regex: str | None = None  # from selfalign.train.model.lora_config
    use_dora: bool = False
    lora_modules_to_save: tuple[str, ...] = ()
    double_quant: bool = True
    quantization_skip_modules: tuple[str, ...] = ()
    optimizer: str = "adamw_torch_fused"
    precompute_ref_log_probs: bool = False
    disable_dropout: bool = True  # TRL's DPOConfig zeroes every dropout, LoRA's included

    @property
    def peft(self) -> bool:
        return self.finetuning != "full"

    @property
    def quantized(self) -> bool:
        return self.finetuning in ("qlora", "lora_8bit")

    def describe(self) -> str:
        kind = {
            "full": "full fine-tuning",
            "lora": f"LoRA r={self.lora_r}",
            "qlora": f"QLoRA r={self.lora_r} (4-bit NF4{', double quant' if self.double_quant else ''})",
            "lora_8bit": f"LoRA r={self.lora_r} on an 8-bit base",
        }[self.finetuning]
        role = ", critic" if self.model_role == "critic" else ""
        return f"{self.trainer.upper()}{role}, {kind}"


@dataclass
class RecipeInfo:
    path: str
    model_name: str
    base_model_id: str | None
    setup: TrainingSetup


def trainer_of(path: str | Path, recipe: dict) -> Literal["dpo", "sft"]:
    """DPO or SFT: from the recipe's file name (dpo_*, *sft*) or, failing that, from DPO-only keys."""
    stem = Path(path).stem
    if stem.startswith("dpo") or "_dpo" in stem:
        return "dpo"
    if "sft" in stem:
        return "sft"
    return "dpo" if {"beta", "loss_type", "precompute_ref_log_probs"} & set(recipe) else "sft"


def read_recipe(path: str | Path, overrides: Sequence[str] = (), trainer: str | None = None) -> RecipeInfo:
    """Parse a recipe (strictly, as the training scripts do, command-line overrides included)."""
    from trl import DatasetMixtureConfig, DPOConfig, ModelConfig, SFTConfig

    from selfalign.config import parse_recipe
    from selfalign.train.arguments import ScriptArguments
    from selfalign.train.model import VISION_MODULES, lora_config

    try:
        recipe = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as error:
        raise SelfAlignError(f"{path}: recipe file not found") from error
    kind = trainer or trainer_of(path, recipe if isinstance(recipe, dict) else {})
    config_class = DPOConfig if kind == "dpo" else SFTConfig
    # `use_cpu` only lets the training arguments be built on a machine without a GPU (their bf16 check);
    # nothing here reads it.
    script_args, training_args, model_args, _ = parse_recipe(
        (ScriptArguments, config_class, ModelConfig, DatasetMixtureConfig),
        ["--config", str(path), *overrides, "--use_cpu", "true"],
    )
    if model_args.load_in_4bit:
        finetuning = "qlora"
    elif model_args.load_in_8bit:
        finetuning = "lora_8bit"
    else:
        finetuning = "lora" if model_args.use_peft else "full"
    if finetuning in ("qlora", "lora_8bit") and not model_args.use_peft:
        raise SelfAlignError(
            f"{path}: a quantized base needs use_peft: true (quantized weights cannot be trained)"
        )
    lora = lora_config(model_args)
    dtype = model_args.dtype if model_args.dtype not in (None, "auto") else "bfloat16"
    setup = TrainingSetup(
        trainer=kind,
        finetuning=finetuning,
        model_role=script_args.model_role,
        dtype_bytes=4 if dtype == "float32" else 2,
        mixed_precision=bool(training_args.bf16 or training_args.fp16),
        per_device_batch_size=training_args.per_device_train_batch_size,
        activation_checkpointing=bool(training_args.activation_checkpointing),
        lora_r=model_args.lora_r,
        lora_dropout=model_args.lora_dropout,
        lora_target_regex=lora.target_modules if lora else None,
        use_dora=bool(model_args.use_dora),
        lora_modules_to_save=tuple(model_args.lora_modules_to_save or ()),
        double_quant=bool(model_args.use_bnb_nested_quant),
        quantization_skip_modules=("lm_head", *VISION_MODULES),
        optimizer=str(getattr(training_args.optim, "value", training_args.optim)),
        precompute_ref_log_probs=bool(getattr(training_args, "precompute_ref_log_probs", False)),
        disable_dropout=bool(getattr(training_args, "disable_dropout", False)),
    )
    return RecipeInfo(str(path), model_args.model_name_or_path, script_args.base_model_id, setup)


def default_lora_regex(names: Sequence[str] = ("all-linear",)) -> str:
    """The target regex `selfalign.train.model.lora_config` builds for these names."""
    from trl import ModelConfig

    from selfalign.train.model import lora_config

    return lora_config(ModelConfig(use_peft=True, lora_target_modules=list(names))).target_modules
