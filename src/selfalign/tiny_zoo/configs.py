"""What every family's config is made of: the size presets, the image and patch sizes, the bos/eos/pad
ids; and the (model, processor, generation config) triple a family's builder returns.

Two presets: "tiny" (the default: text hidden 64 x 2 layers, Qwen vision width 32 x 2 blocks, CLIP
vision width 32 x 3 layers), small enough for every test, and "shapes", a wider and deeper one for
the shapes-world policy, which must learn to caption from scratch in a few CPU minutes
(recipes/shapes/policy_sft.yaml), with a CLIP tower wide enough to tell shapes apart
(recipes/shapes/clip.yaml). Images, patches and tokenizers are the same in both.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import GenerationConfig, PreTrainedModel, ProcessorMixin


@dataclass(frozen=True)
class ModelSize:
    """The sizes a preset sets: the text model's, the Qwen vision tower's and the CLIP vision tower's
    (LLaVA's, and the tiny CLIP's image encoder)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vision_width: int
    vision_depth: int
    clip_width: int
    clip_depth: int
    clip_heads: int

    def text_size(self) -> dict:
        return {
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
        }


PRESETS: dict[str, ModelSize] = {
    "tiny": ModelSize(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vision_width=32,
        vision_depth=2,
        clip_width=32,
        clip_depth=3,
        clip_heads=2,
    ),
    "shapes": ModelSize(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vision_width=64,
        vision_depth=2,
        # 32 x 3 could not tell shapes apart however trained (shape discrimination <= 0.75, see
        # recipes/shapes/clip.yaml); 64 x 4 can, once pretrained on the scenes' objects.
        clip_width=64,
        clip_depth=4,
        clip_heads=4,
    ),
}
DEFAULT_PRESET = "tiny"
CLIP_IMAGE_SIZE = 32  # LLaVA's image (and LLaVA-NeXT's tile) side: (32 / 8)^2 = 16 patches
PATCH_SIZE = 8

Build = tuple[PreTrainedModel, ProcessorMixin, GenerationConfig]


def special_token_ids(tokenizer, bos: str, eos: str, pad: str) -> dict[str, int]:
    """bos/eos/pad ids, set in the text config and (as in the real config.json files) at the top level."""
    tokens = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}
    return {name: tokenizer.convert_tokens_to_ids(token) for name, token in tokens.items()}


def preset_size(preset: str) -> ModelSize:
    if preset not in PRESETS:
        raise ValueError(f"Unknown size preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[preset]
