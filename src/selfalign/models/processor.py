"""Loading a vision-language model's processor, checked, for training and for sampling alike."""

from __future__ import annotations

from transformers import AutoProcessor, ProcessorMixin

from selfalign.errors import SelfAlignError


def load_vlm_processor(
    name: str | None, revision: str | None = None, image_max_pixels: int | None = None
) -> ProcessorMixin:
    """The processor of a VLM, checked to take images and to format conversations.

    `image_max_pixels` caps the pixels per image of dynamic-resolution processors (Qwen2-VL family),
    which bounds the image tokens per image; fixed-size processors refuse it.
    """
    if not name:
        raise SelfAlignError("a model name or folder is required (model_name_or_path / policy_model)")
    overrides = {"max_pixels": image_max_pixels} if image_max_pixels else {}
    try:
        processor = AutoProcessor.from_pretrained(name, revision=revision, **overrides)
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
