"""Checks made before any long run that will push, and the one folder-upload path."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

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
