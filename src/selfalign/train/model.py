"""Processor, quantization and LoRA settings for vision-language models."""

from __future__ import annotations

import torch
from peft import LoraConfig
from transformers import AutoProcessor, BitsAndBytesConfig, ProcessorMixin
from trl import ModelConfig

from selfalign.errors import SelfAlignError

# The vision tower and projector stay in full precision under QLoRA and get no adapters: the
# recipes follow LLaVA's practice of adapting only the language model.
VISION_MODULES = ("model.vision_tower", "model.multi_modal_projector", "model.visual")
ALL_LINEAR_LANGUAGE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def load_processor(model_args: ModelConfig, image_max_pixels: int | None = None) -> ProcessorMixin:
    """Load the model's processor and check that it can format conversations."""
    name = model_args.model_name_or_path
    if not name:
        raise SelfAlignError("model_name_or_path is required")
    overrides = {"max_pixels": image_max_pixels} if image_max_pixels else {}
    try:
        processor = AutoProcessor.from_pretrained(name, revision=model_args.model_revision, **overrides)
    except (OSError, ValueError) as error:
        raise SelfAlignError(f"could not load a processor from '{name}': {error}") from error
    if not isinstance(processor, ProcessorMixin):
        raise SelfAlignError(
            f"'{name}' has a tokenizer but no image processor: it is not a vision-language model"
        )
    if image_max_pixels and getattr(processor.image_processor.size, "longest_edge", None) != image_max_pixels:
        raise SelfAlignError(
            f"image_max_pixels applies to dynamic-resolution processors (Qwen2-VL family); '{name}' uses "
            f"{type(processor.image_processor).__name__}, which resizes to a fixed size"
        )
    if processor.chat_template is None and processor.tokenizer.chat_template is None:
        raise SelfAlignError(
            f"'{name}' has no chat template, so conversations cannot be formatted for it. Add one to the "
            "processor (chat_template.jinja) or use the instruct/chat variant of the model."
        )
    return processor


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
