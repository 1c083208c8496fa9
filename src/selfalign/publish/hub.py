"""Checks made before any long run that will push, the one folder-upload path, and revision pinning."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, ResolvedRevision, get_token
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers.utils.hub import resolve_revision

from selfalign.errors import SelfAlignError


def check_can_push(repo_id: str | None, setting: str = "hub_model_id") -> None:
    """Fail before training or building if a later push could not succeed for local reasons.

    `setting` names the recipe key that holds the repo id, for the message.
    """
    if not repo_id:
        raise SelfAlignError(f"pushing to the Hub needs a repo id: set `{setting}` (e.g. my-org/my-name)")
    if repo_id.count("/") != 1:
        raise SelfAlignError(
            f"'{repo_id}' is not a Hub repo id: write it as <namespace>/<name>, e.g. my-org/my-model"
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise SelfAlignError(f"'{repo_id}' is not a valid Hub repo id: {error}") from error
    if get_token() is None:
        raise SelfAlignError(
            "pushing to the Hub needs a token: set HF_TOKEN or run `hf auth login` (the token is never logged)"
        )


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    repo_type: str = "model",
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str,
    ignore_patterns: list[str] | None = None,
) -> str:
    """Create the repo if needed and upload `folder` as one commit; return the commit URL."""
    api = HfApi()
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, repo_type=repo_type, branch=revision, exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type=repo_type,
        revision=revision,
        commit_message=commit_message,
        ignore_patterns=ignore_patterns,
    )
    return commit.commit_url


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
