"""LLaVA-1.5: a CLIP vision tower and a Vicuna-style Llama, the ``USER: ... ASSISTANT:`` template; and
the config and processor settings LLaVA-NeXT shares with it."""

from __future__ import annotations

import torch
from transformers import (
    CLIPImageProcessor,
    GenerationConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from selfalign.tiny_zoo.chat_templates import LLAVA_CHAT_TEMPLATE
from selfalign.tiny_zoo.clip import clip_image_processing, clip_vision_config
from selfalign.tiny_zoo.configs import CLIP_IMAGE_SIZE, PATCH_SIZE, Build, ModelSize, special_token_ids
from selfalign.tiny_zoo.tokenizers import llama_tokenizer


def llava_config_kwargs(tokenizer, size: ModelSize) -> dict:
    return {
        "vision_config": clip_vision_config(size),
        "image_token_index": tokenizer.convert_tokens_to_ids("<image>"),
        "image_seq_length": (CLIP_IMAGE_SIZE // PATCH_SIZE) ** 2,
        "vision_feature_select_strategy": "default",
        "vision_feature_layer": -2,
    }


def llava_processor_kwargs() -> dict:
    # CLIP prepends a CLS embedding that vision_feature_select_strategy="default" drops again. The
    # processor counts patches + num_additional_image_tokens - 1 image tokens, so the CLS must be
    # counted here (1), or image tokens and image features disagree.
    return {
        "patch_size": PATCH_SIZE,
        "vision_feature_select_strategy": "default",
        "num_additional_image_tokens": 1,
    }


def build_llava(seed: int, size: ModelSize) -> Build:
    tokenizer = llama_tokenizer(LLAVA_CHAT_TEMPLATE)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(**clip_image_processing()),
        tokenizer=tokenizer,
        chat_template=LLAVA_CHAT_TEMPLATE,
        **llava_processor_kwargs(),
    )
    token_ids = special_token_ids(tokenizer, bos="<s>", eos="</s>", pad="<pad>")
    # Vicuna-7B style Llama: multi-head attention, 4k context.
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        num_key_value_heads=size.num_attention_heads,
        **size.text_size(),
        **token_ids,
    )
    config = LlavaConfig(text_config=text_config, **llava_config_kwargs(tokenizer, size), **token_ids)
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config), processor, GenerationConfig(**token_ids)
