"""Finding the models every stage loads: a VLM's processor, checked, and a revision pinned once."""

from selfalign.models.processor import load_vlm_processor
from selfalign.models.revision import pin_revision

__all__ = ["load_vlm_processor", "pin_revision"]
