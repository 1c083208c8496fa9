"""The VLM families and ``build_tiny_model``: which builder makes each family, and the CLIP vision
tower the LLaVA families may start from."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from selfalign.tiny_zoo.clip import clip_weights_sha256, load_clip_vision_tower
from selfalign.tiny_zoo.configs import DEFAULT_PRESET, Build, ModelSize, preset_size
from selfalign.tiny_zoo.folders import build_into, build_spec
from selfalign.tiny_zoo.llava import build_llava
from selfalign.tiny_zoo.llava_next import build_llava_next
from selfalign.tiny_zoo.qwen2_vl import build_qwen2_5_vl, build_qwen2_vl

FAMILIES: tuple[str, ...] = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl")
CLIP_VISION_FAMILIES = ("llava", "llava_next")

_BUILDERS: dict[str, Callable[[int, ModelSize], Build]] = {
    "llava": build_llava,
    "llava_next": build_llava_next,
    "qwen2_vl": build_qwen2_vl,
    "qwen2_5_vl": build_qwen2_5_vl,
}


def build_tiny_model(
    family: str,
    output_dir: str | Path,
    seed: int = 0,
    preset: str = DEFAULT_PRESET,
    vision_tower: str | Path | None = None,
) -> Path:
    """Build a tiny random checkpoint of ``family`` (model, processor, tokenizer) into ``output_dir``.

    ``preset`` picks the sizes (``PRESETS``): "tiny" for tests, "shapes" for the shapes-world policy.
    ``vision_tower``, for the CLIP-based families (``llava``, ``llava_next``), is a tiny CLIP
    checkpoint (``build_tiny_clip``, trained by ``scripts/train_clip.py``) whose vision encoder
    replaces the random one, as LLaVA starts from a pretrained CLIP: a random tower trained jointly
    with the language model from scratch is ignored by it (see recipes/shapes/policy_sft.yaml).
    The folder loads with ``AutoProcessor`` and ``AutoModelForImageTextToText``. Returns ``output_dir``.
    """
    if family not in _BUILDERS:
        raise ValueError(f"Unknown tiny model family {family!r}; valid families: {', '.join(FAMILIES)}")
    size = preset_size(preset)
    spec = build_spec(family, seed, preset)
    if vision_tower is not None:
        if family not in CLIP_VISION_FAMILIES:
            raise ValueError(
                f"vision_tower applies to the CLIP-based families ({', '.join(CLIP_VISION_FAMILIES)}), "
                f"not to {family!r}"
            )
        spec["vision_tower_sha256"] = clip_weights_sha256(Path(vision_tower))

    def write_files(folder: Path) -> None:
        model, processor, generation_config = _BUILDERS[family](seed, size)
        if vision_tower is not None:
            load_clip_vision_tower(model, Path(vision_tower))
        model.generation_config = generation_config
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    return build_into(output_dir, spec, write_files)
