"""Named prompt sets for sources without their own instructions, and the stable row id.

The choice of prompt depends only on the image's content hash, so every process and every re-run
asks the same question about the same picture, whatever the order or sharding of the input.
"""

from __future__ import annotations

import hashlib

from selfalign.errors import SelfAlignError
from selfalign.images.loading import LoadedImage

PROMPT_SETS: dict[str, tuple[str, ...]] = {
    # Open 'describe the image' requests, the kind CSR and EACO sample long answers for.
    "describe": (
        "Describe this image.",
        "Describe this image in detail.",
        "What do you see in this picture? Describe it.",
        "Give a detailed description of everything shown in this image.",
        "Write a thorough description of this picture.",
        "Explain what this image shows.",
        "Tell me what is in this image, with as much detail as you can.",
        "Describe the scene in this image: the objects, their colours and where they are.",
        "Look carefully at the image and describe what it contains.",
        "Provide a description of the contents of this image.",
    ),
    # Short captions, for quick builds and for small models with a short generation budget.
    "caption": (
        "Write a short caption for this image.",
        "Describe the image in one sentence.",
        "Summarise what this image shows in a few words.",
        "What is the main subject of this image?",
        "Give a one-line description of this picture.",
    ),
}


def prompt_for(prompt_set: str, content_hash: str) -> str:
    """The prompt of `prompt_set` for the image with `content_hash`, the same on every run."""
    prompts = _prompt_set(prompt_set)
    digest = hashlib.sha256(f"{prompt_set}\n{content_hash}".encode()).digest()
    return prompts[int.from_bytes(digest[:8], "big") % len(prompts)]


def row_id(content_hash: str, prompt: str) -> str:
    """A stable 16-hex-digit id from the image content and the prompt (DESIGN.md §3 `id`)."""
    return hashlib.sha256(f"{content_hash}\n{prompt}".encode()).hexdigest()[:16]


def check_prompt_set(prompt_set: str) -> None:
    """Raise a `SelfAlignError` naming the known sets if `prompt_set` is not one of them."""
    _prompt_set(prompt_set)


def _prompt_set(name: str) -> tuple[str, ...]:
    if name not in PROMPT_SETS:
        known = ", ".join(sorted(PROMPT_SETS))
        raise SelfAlignError(f"unknown prompt set '{name}'; the known prompt sets are: {known}")
    return PROMPT_SETS[name]


def prompt_of(loaded: LoadedImage, prompt_set: str | None) -> str:
    """The input's own instruction if it has one, else the choice of `prompt_set` for its image."""
    if loaded.item.instruction:
        return loaded.item.instruction
    if prompt_set is None:
        raise SelfAlignError(
            f"{loaded.item.source}: the input has no instruction and the recipe sets no prompt_set"
        )
    return prompt_for(prompt_set, loaded.content_hash)
