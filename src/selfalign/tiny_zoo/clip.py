"""The tiny CLIP (``CLIPModel`` + ``CLIPProcessor``, for CLIP image-sentence scores), its vision tower
and image processing (which the LLaVA families share), and loading a CLIP checkpoint's vision
encoder into a LLaVA model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPVisionConfig,
    PreTrainedModel,
)

from selfalign.tiny_zoo.configs import CLIP_IMAGE_SIZE, DEFAULT_PRESET, PATCH_SIZE, ModelSize, preset_size
from selfalign.tiny_zoo.folders import build_into, build_spec
from selfalign.tiny_zoo.tokenizers import clip_tokenizer


def clip_vision_config(size: ModelSize) -> CLIPVisionConfig:
    # At least three layers: LLaVA reads features from the second-to-last one (vision_feature_layer=-2).
    return CLIPVisionConfig(
        hidden_size=size.clip_width,
        intermediate_size=2 * size.clip_width,
        num_hidden_layers=size.clip_depth,
        num_attention_heads=size.clip_heads,
        image_size=CLIP_IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=32,
    )


def clip_image_processing() -> dict:
    """Resize the short side, center-crop a square: one CLIP image (or LLaVA-NeXT tile) of 32 px."""
    return {
        "size": {"shortest_edge": CLIP_IMAGE_SIZE},
        "crop_size": {"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
    }


def clip_weights_sha256(clip_dir: Path) -> str:
    weights = clip_dir / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{clip_dir} holds no CLIP checkpoint (no model.safetensors)")
    return hashlib.sha256(weights.read_bytes()).hexdigest()


def load_clip_vision_tower(model: PreTrainedModel, clip_dir: Path) -> None:
    clip = CLIPModel.from_pretrained(clip_dir)
    try:
        model.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    except RuntimeError as error:
        raise ValueError(
            f"the CLIP in {clip_dir} does not fit this model's vision tower (build it with build_tiny_clip): {error}"
        ) from error


def build_tiny_clip(output_dir: str | Path, seed: int = 0, preset: str = DEFAULT_PRESET) -> Path:
    """Build a tiny random ``CLIPModel`` + ``CLIPProcessor`` into ``output_dir`` and return it.

    Its image encoder has the size of ``preset``'s CLIP tower, so that it fits the llava models of
    that preset (``build_tiny_model(..., vision_tower=...)``); the text encoder is the same in all.
    """
    size = preset_size(preset)

    def write_files(folder: Path) -> None:
        tokenizer = clip_tokenizer()
        text_config = {
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
        config = CLIPConfig(
            text_config=text_config, vision_config=clip_vision_config(size).to_dict(), projection_dim=32
        )
        torch.manual_seed(seed)
        CLIPModel(config).save_pretrained(folder)
        image_processor = CLIPImageProcessor(**clip_image_processing())
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)

    return build_into(output_dir, build_spec("clip", seed, preset), write_files)
