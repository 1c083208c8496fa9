"""The account and its repos: who the token is, creating and deleting repos, and reading them (info,
trees, paths, commits, refs), paginated as the Hub does."""

from __future__ import annotations

import hashlib
import html
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from ..card_checks import card_metadata_errors
from ..errors import HubError, bad_request, entry_not_found
from ..storage import DEFAULT_BRANCH, Commit, FileEntry, RepoId
from ..web import Request, Response, Router, error_response, json_response
from .urls import API_REPO, REVISION

if TYPE_CHECKING:
    from .app import HubApp

# Every token is accepted and belongs to this one user, who owns the repos created without a namespace.
USER_NAME = "selfalign-tester"

_TREE_PAGE_SIZE = 1000
_EXPANDED_TREE_PAGE_SIZE = 50  # expanded entries cost a history walk each, as on the Hub
_COMMITS_PAGE_SIZE = 50

router = Router()


@router.route("GET", r"/api/whoami-v2", auth=True)
def whoami(app: HubApp, request: Request) -> Response:
    return json_response(
        {
            "type": "user",
            "id": hashlib.sha1(USER_NAME.encode()).hexdigest()[:24],
            "name": USER_NAME,
            "fullname": "selfalign offline tester",
            "email": None,
            "emailVerified": False,
            "isPro": False,
            "canPay": False,
            "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "offline hub", "role": "write"}},
        }
    )


@router.route("POST", r"/api/repos/create", auth=True)
def create_repo(app: HubApp, request: Request) -> Response:
    body = request.json()
    repo = _repo_from_body(body)
    private = bool(body.get("private")) or body.get("visibility") == "private"
    url = f"{request.base_url}/{repo.url_path}"
    try:
        app.storage.create_repo(repo, private=private, author=USER_NAME)
    except HubError as error:
        if error.status != 409:
            raise
        return error_response(error, url=url)  # `create_repo(exist_ok=True)` reads the url from the 409
    return json_response({"url": url, "name": str(repo), "id": str(repo)})


@router.route("DELETE", r"/api/repos/delete", auth=True)
def delete_repo(app: HubApp, request: Request) -> Response:
    app.storage.delete_repo(_repo_from_body(request.json()))
    return Response(200)


@router.route("POST", r"/api/validate-yaml")
def validate_yaml(app: HubApp, request: Request) -> Response:
    body = request.json()
    errors = card_metadata_errors(str(body.get("content", "")), body.get("repoType") or "model")
    return json_response(
        {"errors": [{"message": error} for error in errors], "warnings": []}, 400 if errors else 200
    )


def _repo_from_body(body: dict) -> RepoId:
    return RepoId(
        body.get("type") or "model", body.get("organization") or USER_NAME, str(body.get("name", ""))
    )


@router.route("GET", rf"{API_REPO}(?:/revision/{REVISION})?")
def repo_info(app: HubApp, request: Request, repo: RepoId, revision: str | None) -> Response:
    commit = app.storage.resolve(repo, revision or DEFAULT_BRANCH)
    metadata = app.storage.repo_metadata(repo)
    with_blobs = request.flag("blobs")
    return json_response(
        {
            "_id": hashlib.sha1(repo.url_path.encode()).hexdigest()[:24],
            "id": str(repo),
            "author": repo.namespace,
            "sha": commit.id,
            "lastModified": commit.date,
            "createdAt": metadata["createdAt"],
            "private": metadata["private"],
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [_sibling(path, entry, with_blobs) for path, entry in sorted(commit.files.items())],
            "usedStorage": sum(entry.size for entry in commit.files.values()),
        }
    )


def _sibling(path: str, entry: FileEntry, with_blobs: bool) -> dict:
    if not with_blobs:
        return {"rfilename": path}
    sibling = {"rfilename": path, "size": entry.size, "blobId": entry.git_oid}
    if entry.lfs:
        sibling["lfs"] = {"size": entry.size, "sha256": entry.sha256, "pointerSize": entry.pointer_size}
    return sibling


@router.route("GET", rf"{API_REPO}/tree/{REVISION}(?:/(?P<path>.*))?")
def list_tree(app: HubApp, request: Request, repo: RepoId, revision: str, path: str | None) -> Response:
    commit = app.storage.resolve(repo, revision)
    folder = (path or "").strip("/")
    if not commit.folder_exists(folder):
        raise entry_not_found(folder, commit_id=commit.id)
    expand = request.flag("expand")
    items = commit.list_folder(folder, recursive=request.flag("recursive"))
    page, next_url = _page(request, items, _EXPANDED_TREE_PAGE_SIZE if expand else _TREE_PAGE_SIZE)
    entries = [_path_info(app, repo, commit, item_path, entry, expand) for item_path, entry in page]
    return json_response(entries, headers=_link_header(next_url))


@router.route("POST", rf"{API_REPO}/paths-info/{REVISION}")
def paths_info(app: HubApp, request: Request, repo: RepoId, revision: str) -> Response:
    commit = app.storage.resolve(repo, revision)
    # `HfApi.get_paths_info` posts a form; accept JSON as well.
    if "json" in (request.headers.get("Content-Type") or ""):
        body = request.json()
        paths, expand = body.get("paths", []), str(body.get("expand", False)).lower() == "true"
    else:
        form = request.form()
        paths, expand = form.get("paths", []), form.get("expand", ["false"])[0].lower() == "true"
    infos = []
    for path in dict.fromkeys(path.strip("/") for path in paths):  # unique, in order
        if path in commit.files:
            infos.append(_path_info(app, repo, commit, path, commit.files[path], expand))
        elif path and commit.folder_exists(path):
            infos.append(_path_info(app, repo, commit, path, None, expand))
    return json_response(infos)


def _path_info(
    app: HubApp, repo: RepoId, commit: Commit, path: str, entry: FileEntry | None, expand: bool
) -> dict:
    if entry is None:
        info = {"type": "directory", "oid": commit.folder_oid(path), "size": 0, "path": path}
    else:
        info = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": path}
        if entry.lfs:
            info["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
    if expand:
        last = app.storage.last_change(repo, commit, path)
        info["lastCommit"] = {"id": last.id, "title": last.title, "date": last.date}
    return info


@router.route("GET", rf"{API_REPO}/commits/{REVISION}")
def list_commits(app: HubApp, request: Request, repo: RepoId, revision: str) -> Response:
    head = app.storage.resolve(repo, revision)
    page, next_url = _page(request, list(app.storage.history(repo, head)), _COMMITS_PAGE_SIZE)
    formatted = "formatted" in request.query.get("expand[]", [])
    return json_response([_commit_json(commit, formatted) for commit in page], headers=_link_header(next_url))


def _commit_json(commit: Commit, formatted: bool) -> dict:
    data = {
        "id": commit.id,
        "title": commit.title,
        "message": commit.message,
        "date": commit.date,
        "authors": [{"user": commit.author, "avatar": None}],
    }
    if formatted:
        data["formatted"] = {"title": html.escape(commit.title), "message": html.escape(commit.message)}
    return data


@router.route("GET", rf"{API_REPO}/refs")
def list_refs(app: HubApp, request: Request, repo: RepoId) -> Response:
    refs = sorted(app.storage.refs(repo).items())
    groups = {"branches": "refs/heads/", "tags": "refs/tags/", "converts": "refs/convert/"}
    if request.flag("include_prs"):
        groups["pullRequests"] = "refs/pr/"
    return json_response(
        {
            key: [
                {"name": ref.removeprefix(prefix), "ref": ref, "targetCommit": commit_id}
                for ref, commit_id in refs
                if ref.startswith(prefix)
            ]
            for key, prefix in groups.items()
        }
    )


def _page(request: Request, items: list, page_size: int) -> tuple[list, str | None]:
    """One page of `items` and the URL of the next one. The cursor is an offset; clients treat it as opaque."""
    try:
        start = max(int(request.param("cursor", "0")), 0)
        limit = min(max(int(request.param("limit", str(page_size))), 1), page_size)
    except ValueError as error:
        raise bad_request("Invalid cursor or limit") from error
    if start + limit >= len(items):
        return items[start:], None
    query = [(key, value) for key, values in request.query.items() if key != "cursor" for value in values]
    next_url = f"{request.base_url}{request.path}?{urlencode([*query, ('cursor', start + limit)])}"
    return items[start : start + limit], next_url


def _link_header(next_url: str | None) -> dict[str, str]:
    return {"Link": f'<{next_url}>; rel="next"'} if next_url else {}
