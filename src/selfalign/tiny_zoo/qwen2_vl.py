"""Qwen2-VL and Qwen2.5-VL: the ChatML template, dynamic resolution, and the text config, processors
and generation settings the two share; they differ only in the vision tower."""

from __future__ import annotations

import torch
from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from selfalign.tiny_zoo.chat_templates import QWEN2_VL_CHAT_TEMPLATE
from selfalign.tiny_zoo.configs import PATCH_SIZE, Build, ModelSize, special_token_ids
from selfalign.tiny_zoo.tokenizers import qwen2_tokenizer

# Qwen2-VL resizes to a multiple of patch * merge = 16 px within min/max pixel counts:
# 4 to 16 merged tokens per image (64x64 px -> 8x8 patches -> 16 tokens).
_QWEN_MIN_PIXELS = 32 * 32
_QWEN_MAX_PIXELS = 64 * 64


def _qwen_vision_processing() -> dict:
    sizes = {
        "size": {"shortest_edge": _QWEN_MIN_PIXELS, "longest_edge": _QWEN_MAX_PIXELS},
        "patch_size": PATCH_SIZE,
        "temporal_patch_size": 2,
        "merge_size": 2,
    }
    # Qwen2-VL processors need a video processor too, even for image-only use.
    return {
        "image_processor": Qwen2VLImageProcessor(**sizes),
        "video_processor": Qwen2VLVideoProcessor(**sizes),
    }


def _qwen_config_kwargs(tokenizer, vision_config: dict, size: ModelSize) -> dict:
    """Text config, vision config, and the vision and bos/eos/pad token ids of a Qwen2(.5)-VL config."""
    # The Instruct checkpoints' ids: a turn ends with <|im_end|>; <|endoftext|> is bos and pad.
    token_ids = special_token_ids(tokenizer, bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>")
    # Multimodal RoPE: the (temporal, height, width) sections split head_dim / 2 frequencies in the
    # real models' 16:24:24 proportion (8 frequencies -> [2, 3, 3] at the tiny size).
    eighth = size.hidden_size // size.num_attention_heads // 2 // 8
    text_config = {
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 32768,
        "num_key_value_heads": size.num_key_value_heads,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1_000_000.0,
            "mrope_section": [2 * eighth, 3 * eighth, 3 * eighth],
        },
        **size.text_size(),
        **token_ids,
    }
    vision_token_ids = {
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
    }
    return {
        "text_config": text_config,
        "vision_config": vision_config,
        **{name: tokenizer.convert_tokens_to_ids(token) for name, token in vision_token_ids.items()},
        **token_ids,
    }


def _qwen_generation_config(tokenizer) -> GenerationConfig:
    # As in the Instruct checkpoints: stop at the end of the turn or at <|endoftext|>.
    endoftext, im_end = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    return GenerationConfig(bos_token_id=endoftext, eos_token_id=[im_end, endoftext], pad_token_id=endoftext)


def build_qwen2_vl(seed: int, size: ModelSize) -> Build:
    tokenizer = qwen2_tokenizer(QWEN2_VL_CHAT_TEMPLATE)
    processor = Qwen2VLProcessor(
        tokenizer=tokenizer, chat_template=QWEN2_VL_CHAT_TEMPLATE, **_qwen_vision_processing()
    )
    vision_config = {
        "depth": size.vision_depth,
        "embed_dim": size.vision_width,
        "hidden_size": size.hidden_size,  # the patch merger projects into the text model's width
        "num_heads": 2,
        "mlp_ratio": 2,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    config = Qwen2VLConfig(**_qwen_config_kwargs(tokenizer, vision_config, size))
    torch.manual_seed(seed)
    return Qwen2VLForConditionalGeneration(config), processor, _qwen_generation_config(tokenizer)


def build_qwen2_5_vl(seed: int, size: ModelSize) -> Build:
    tokenizer = qwen2_tokenizer(QWEN2_VL_CHAT_TEMPLATE)
    processor = Qwen2_5_VLProcessor(
        tokenizer=tokenizer, chat_template=QWEN2_VL_CHAT_TEMPLATE, **_qwen_vision_processing()
    )
    vision_config = {
        "depth": size.vision_depth,
        "hidden_size": size.vision_width,
        "intermediate_size": 2 * size.vision_width,
        "out_hidden_size": size.hidden_size,
        "num_heads": 2,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        # Window attention over 32-px windows (2x2 merged tokens); the last block attends globally,
        # like the real model's full-attention blocks 7, 15, 23, 31.
        "window_size": 32,
        "fullatt_block_indexes": [size.vision_depth - 1],
    }
    config = Qwen2_5_VLConfig(**_qwen_config_kwargs(tokenizer, vision_config, size))
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config), processor, _qwen_generation_config(tokenizer)
