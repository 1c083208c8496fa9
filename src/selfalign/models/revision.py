"""Pinning a model to one revision, so that its weights, processor and card all come from one commit."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ResolvedRevision
from transformers.utils.hub import resolve_revision


def pin_revision(model_name_or_path: str, revision: str | None) -> tuple[str | ResolvedRevision | None, str]:
    """Resolve a branch or tag once, so that every file of a model comes from the same commit.

    Returns what to pass as `revision=` to every `from_pretrained` of the model, and the revision to
    record in cards and rows: "local" for a folder, the commit for a Hub repo, or the revision as
    requested when neither the Hub nor the cache could resolve it.
    """
    resolved = resolve_revision(model_name_or_path, revision)
    if Path(model_name_or_path).is_dir():
        return resolved, "local"
    if isinstance(resolved, ResolvedRevision):
        return resolved, resolved.resolved
    return resolved, revision or "main"
