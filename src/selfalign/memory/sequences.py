"""The tokens of one training sequence: text lengths around the image, and the image tokens per model family."""

from __future__ import annotations

from dataclasses import dataclass

from selfalign.memory.recipes import TrainingSetup

# Default text lengths (tokens) around the image, per kind of run; the CLI can override them.
DEFAULT_TEXT_TOKENS = {
    "dpo": (64, 256),  # a short instruction; a detailed answer (the longer of chosen/rejected)
    "sft": (64, 256),
    # The critic's evaluation instruction holds question, response and rubric; it answers with scores + rationale.
    "critic": (512, 128),
}
# Qwen2-VL / Qwen2.5-VL: 28x28 pixels per image token (14-px patches merged 2x2).
QWEN_MAX_PIXELS_ASSUMED = 1280 * 28 * 28


@dataclass
class SequenceSpec:
    prompt_tokens: int
    image_tokens: int  # tokens the image takes in the language model's sequence
    response_tokens: int
    vision_tokens: int  # tokens the vision tower runs over per image (all tiles / patches)
    assumption: str

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.image_tokens + self.response_tokens


def image_tokens_for(config, max_pixels: int | None = None) -> tuple[int, int, str]:
    """(language-model image tokens, vision-tower tokens, the assumption stated) for one image."""
    model_type = config.model_type
    vision = getattr(config, "vision_config", None)
    if model_type == "llava":
        side = vision.image_size // vision.patch_size
        tokens = getattr(config, "image_seq_length", None) or side * side
        return (
            tokens,
            side * side + 1,
            f"LLaVA-1.5: {tokens} image tokens per image ({vision.image_size}-px input, {vision.patch_size}-px patches)",
        )
    if model_type == "llava_next":
        side = vision.image_size // vision.patch_size
        tiles = 1 + max(
            (h // vision.image_size) * (w // vision.image_size) for h, w in config.image_grid_pinpoints
        )
        return (
            tiles * side * side,
            tiles * (side * side + 1),
            f"LLaVA-NeXT anyres: up to {tiles} x {side * side} = {tiles * side * side} image tokens "
            f"(base image + {tiles - 1} tiles, the largest grid; row-newline tokens left out)",
        )
    if model_type in ("qwen2_vl", "qwen2_5_vl"):
        pixels = max_pixels or QWEN_MAX_PIXELS_ASSUMED
        unit = vision.patch_size * vision.spatial_merge_size
        tokens = pixels // (unit * unit)
        merge = vision.spatial_merge_size**2
        default_note = (
            "; the processor's default max_pixels (12845056) allows up to 16384, so cap max_pixels "
            "for training"
            if max_pixels is None
            else ""
        )
        return (
            tokens,
            tokens * merge,
            f"Qwen2-VL dynamic resolution: image tokens = max_pixels / ({unit}x{unit}); assumed max_pixels = "
            f"{pixels} -> {tokens} image tokens{default_note}",
        )
    tokens = getattr(config, "image_seq_length", None) or 576
    return tokens, tokens, f"{model_type}: assumed {tokens} image tokens per image (pass --image_tokens)"


def sequence_for(
    config,
    setup: TrainingSetup,
    prompt_tokens: int | None = None,
    response_tokens: int | None = None,
    image_tokens: int | None = None,
    max_pixels: int | None = None,
) -> SequenceSpec:
    kind = "critic" if setup.model_role == "critic" else setup.trainer
    default_prompt, default_response = DEFAULT_TEXT_TOKENS[kind]
    lm_tokens, vision_tokens, assumption = image_tokens_for(config, max_pixels)
    if image_tokens is not None:
        vision_tokens = round(vision_tokens * image_tokens / lm_tokens) if lm_tokens else image_tokens
        lm_tokens = image_tokens
        assumption = f"{image_tokens} image tokens per image (given)"
    return SequenceSpec(
        prompt_tokens=default_prompt if prompt_tokens is None else prompt_tokens,
        image_tokens=lm_tokens,
        response_tokens=default_response if response_tokens is None else response_tokens,
        vision_tokens=vision_tokens,
        assumption=assumption,
    )
