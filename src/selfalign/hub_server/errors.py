"""Errors the server turns into HTTP responses the Hub client libraries understand.

`huggingface_hub.utils.hf_raise_for_status` maps the `X-Error-Code` header to its exception types
(RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError), so every error carries one
where the real Hub sends one.
"""


class HubError(Exception):
    def __init__(
        self, status: int, message: str, *, code: str | None = None, headers: dict[str, str] | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})


def repo_not_found(repo_id: str) -> HubError:
    return HubError(404, f"Repository not found: {repo_id}", code="RepoNotFound")


def revision_not_found(revision: str) -> HubError:
    return HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")


def entry_not_found(path: str, *, commit_id: str | None = None) -> HubError:
    # The client caches "this file does not exist at this commit" when the 404 names the commit.
    headers = {"X-Repo-Commit": commit_id} if commit_id else None
    return HubError(404, f"Entry not found: {path}", code="EntryNotFound", headers=headers)


def bad_request(message: str) -> HubError:
    return HubError(400, message)
