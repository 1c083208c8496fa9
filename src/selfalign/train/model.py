"""Processor, quantization and LoRA settings for vision-language models."""

from __future__ import annotations

import torch
from peft import LoraConfig
from transformers import BitsAndBytesConfig
from trl import ModelConfig

from selfalign.errors import SelfAlignError

# The vision tower and projector stay in full precision under QLoRA and get no adapters: the
# recipes follow LLaVA's practice of adapting only the language model.
VISION_MODULES = ("model.vision_tower", "model.multi_modal_projector", "model.visual")
ALL_LINEAR_LANGUAGE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def quantization_config(model_args: ModelConfig) -> BitsAndBytesConfig | None:
    """4-bit NF4 (QLoRA) or 8-bit settings from the model arguments; None for full precision."""
    if model_args.load_in_4bit:
        compute_dtype = (
            getattr(torch, model_args.dtype) if model_args.dtype not in (None, "auto") else torch.bfloat16
        )
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=model_args.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=model_args.use_bnb_nested_quant,
            bnb_4bit_compute_dtype=compute_dtype,
            # ZeRO-3 shards parameters by storage dtype: it must match the other weights' dtype.
            bnb_4bit_quant_storage=model_args.bnb_4bit_quant_storage or compute_dtype,
            llm_int8_skip_modules=["lm_head", *VISION_MODULES],
        )
    if model_args.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["lm_head", *VISION_MODULES])
    return None


def lora_config(model_args: ModelConfig) -> LoraConfig | None:
    """LoRA on the language model's linear layers named in the recipe (`all-linear` for all of them)."""
    if not model_args.use_peft:
        return None
    names = model_args.lora_target_modules or ["q_proj", "v_proj"]
    if names == ["all-linear"] or names == "all-linear":
        names = list(ALL_LINEAR_LANGUAGE)
    # A regex string (not a list) makes PEFT match full module paths, which keeps the adapters
    # out of the vision tower, whose attention layers carry the same names.
    target = rf".*language_model\..*\.({'|'.join(names)})"
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=target,
        modules_to_save=model_args.lora_modules_to_save,
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
        bias="none",
    )


def model_init_kwargs(model_args: ModelConfig, training_args) -> dict:
    """`from_pretrained` arguments the trainer uses when it loads the model from its name."""
    return {
        **(training_args.model_init_kwargs or {}),
        "revision": model_args.model_revision,
        "dtype": model_args.dtype,
        "attn_implementation": model_args.attn_implementation,
    }


def keep_adapters_in_float32(model) -> None:
    """Undo TRL's cast of QLoRA adapters to bfloat16.

    Without fp32 master weights (one GPU, plain DDP), AdamW steps below bfloat16's resolution vanish:
    at the recipes' lr of 1e-7, lora_A never moves. The adapters are a few percent of the model, so
    fp32 costs little; PEFT casts the layer input to the adapter's dtype.
    """
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()


def freeze_vision_tower(model) -> int:
    """Stop the vision encoder's weights from training (LLaVA trains only the projector and the language
    model); return how many weights were frozen. LoRA recipes need not ask: their adapters are on the
    language model only."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    tower = base.get_encoder(modality="image")
    if tower is base or tower is base.base_model:
        raise SelfAlignError(f"freeze_vision_tower: {type(base).__name__} has no vision encoder module")
    tower.requires_grad_(False)
    return sum(parameter.numel() for parameter in tower.parameters())
