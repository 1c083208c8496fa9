"""LLaVA-NeXT (v1.6): a CLIP vision tower and Mistral, the ``[INST] ... [/INST]`` template, anyres
tiling."""

from __future__ import annotations

import torch
from transformers import (
    GenerationConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    MistralConfig,
)

from selfalign.tiny_zoo.chat_templates import LLAVA_NEXT_CHAT_TEMPLATE
from selfalign.tiny_zoo.clip import clip_image_processing
from selfalign.tiny_zoo.configs import Build, ModelSize, special_token_ids
from selfalign.tiny_zoo.llava import llava_config_kwargs, llava_processor_kwargs
from selfalign.tiny_zoo.tokenizers import llama_tokenizer

# LLaVA-NeXT's anyres grids (height, width): 1x2, 2x1 and 2x2 tiles, like the real 336-px pinpoints.
_LLAVA_NEXT_PINPOINTS = [[32, 64], [64, 32], [64, 64]]


def build_llava_next(seed: int, size: ModelSize) -> Build:
    tokenizer = llama_tokenizer(LLAVA_NEXT_CHAT_TEMPLATE)
    image_processor = LlavaNextImageProcessor(
        image_grid_pinpoints=_LLAVA_NEXT_PINPOINTS, **clip_image_processing()
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=LLAVA_NEXT_CHAT_TEMPLATE,
        **llava_processor_kwargs(),
    )
    token_ids = special_token_ids(tokenizer, bos="<s>", eos="</s>", pad="<pad>")
    # Mistral-7B-v0.2 style: grouped-query attention, no sliding window, rope theta 1e6.
    text_config = MistralConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=32768,
        num_key_value_heads=size.num_key_value_heads,
        sliding_window=None,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        **size.text_size(),
        **token_ids,
    )
    config = LlavaNextConfig(
        text_config=text_config,
        image_grid_pinpoints=_LLAVA_NEXT_PINPOINTS,
        **llava_config_kwargs(tokenizer, size),
        **token_ids,
    )
    torch.manual_seed(seed)
    return LlavaNextForConditionalGeneration(config), processor, GenerationConfig(**token_ids)
