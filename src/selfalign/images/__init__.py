"""Input images: sources, loading with bad-input handling, prompt sets and stable row ids."""

from selfalign.images.loading import (
    REJECTION_REASONS,
    ImageLimits,
    LoadedImage,
    Rejection,
    SourceItem,
    compute_content_hash,
    load_image_bytes,
    load_image_file,
    shareable_source,
)
from selfalign.images.prompts import PROMPT_SETS, prompt_for, prompt_of, row_id
from selfalign.images.sources import ImageSource, ImageSourceArguments, open_source

__all__ = [
    "PROMPT_SETS",
    "REJECTION_REASONS",
    "ImageLimits",
    "ImageSource",
    "ImageSourceArguments",
    "LoadedImage",
    "Rejection",
    "SourceItem",
    "compute_content_hash",
    "load_image_bytes",
    "load_image_file",
    "open_source",
    "prompt_for",
    "prompt_of",
    "row_id",
    "shareable_source",
]
