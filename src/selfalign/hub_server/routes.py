"""The Hub's HTTP API as `huggingface_hub`, `datasets` and `transformers` call it: one handler per endpoint.

Response fields follow what the clients parse (`huggingface_hub.hf_api` ModelInfo/DatasetInfo,
RepoFile/RepoFolder, GitCommitInfo, GitRefs, CommitInfo; `_commit_api` for preupload and commit;
`lfs.py` for the Git-LFS batch API; `file_download.get_hf_file_metadata` for resolve headers).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import json
import logging
import re
import secrets
from urllib.parse import urlencode

from .card_checks import card_metadata_errors
from .errors import HubError, bad_request, entry_not_found
from .storage import (
    DEFAULT_BRANCH,
    LFS_SIZE_THRESHOLD,
    AddFile,
    Commit,
    DeleteFile,
    DeleteFolder,
    FileEntry,
    HubStorage,
    Operation,
    RepoId,
    is_lfs_path,
    validate_path_in_repo,
)
from .web import Request, Response, Router, error_response, json_response

logger = logging.getLogger(__name__)

# Every token is accepted and belongs to this one user, who owns the repos created without a namespace.
USER_NAME = "selfalign-tester"

_REPO_TYPE_BY_KIND = {None: "model", "models": "model", "datasets": "dataset", "spaces": "space"}

# Repo addressed through the API (`/api/datasets/org/name`) and on the website (`/datasets/org/name`,
# `/org/name` for models).
_API_REPO = r"/api/(?P<kind>models|datasets|spaces)/(?P<namespace>[^/]+)/(?P<name>[^/]+)"
_WEB_REPO = r"/(?:(?P<kind>datasets|spaces)/)?(?P<namespace>[^/]+)/(?P<name>[^/]+?)"
# Clients percent-encode revisions (`refs%2Fpr%2F1`); like the Hub, also accept these two ref
# families unencoded.
_REVISION = r"(?P<revision>refs/(?:convert|pr)/[^/]+|[^/]+)"

_TREE_PAGE_SIZE = 1000
_EXPANDED_TREE_PAGE_SIZE = 50  # expanded entries cost a history walk each, as on the Hub
_COMMITS_PAGE_SIZE = 50

router = Router()


class HubApp:
    """The server's state (storage and the key that signs LFS upload URLs) and its request dispatch."""

    def __init__(self, storage: HubStorage):
        self.storage = storage
        self._upload_key = secrets.token_bytes(32)

    def handle(self, request: Request) -> Response:
        try:
            route, params = router.match(request.method, request.path)
            if route.auth and request.token is None:
                raise HubError(
                    401, "This request needs an 'Authorization: Bearer <token>' header (any token works)"
                )
            if "namespace" in params:  # handlers of repo routes take one `repo` argument
                repo_type = _REPO_TYPE_BY_KIND[params.pop("kind")]
                params["repo"] = RepoId(repo_type, params.pop("namespace"), params.pop("name"))
            return route.handler(self, request, **params)
        except HubError as error:
            return error_response(error)
        except Exception:
            logger.exception("Error while handling %s %s", request.method, request.path)
            return error_response(HubError(500, "Internal server error"))

    def upload_signature(self, oid: str, size: int) -> str:
        """Uploads go to a URL without the token (as to S3): the signature stands in for it."""
        return hmac.new(self._upload_key, f"{oid}:{size}".encode(), hashlib.sha256).hexdigest()


# ---- account and repo management -----------------------------------------------------------------


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


# ---- reading repos -------------------------------------------------------------------------------


@router.route("GET", rf"{_API_REPO}(?:/revision/{_REVISION})?")
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


@router.route("GET", rf"{_API_REPO}/tree/{_REVISION}(?:/(?P<path>.*))?")
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


@router.route("POST", rf"{_API_REPO}/paths-info/{_REVISION}")
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


@router.route("GET", rf"{_API_REPO}/commits/{_REVISION}")
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


@router.route("GET", rf"{_API_REPO}/refs")
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


# ---- writing: preupload, commit, branches and tags -------------------------------------------------


@router.route("POST", rf"{_API_REPO}/preupload/{_REVISION}", auth=True)
def preupload(app: HubApp, request: Request, repo: RepoId, revision: str) -> Response:
    """Tell the client which files go to LFS and which go inline in the commit, like the Hub does."""
    commit = app.storage.resolve(repo, revision)
    gitattributes_entry = commit.files.get(".gitattributes")
    gitattributes = (
        app.storage.blob_path(gitattributes_entry.sha256).read_text(errors="replace")
        if gitattributes_entry
        else ""
    )
    files = []
    for file in request.json().get("files", []):
        path = validate_path_in_repo(str(file.get("path", "")))
        sample = _base64(file.get("sample", ""), path)
        lfs = (
            int(file.get("size", 0)) >= LFS_SIZE_THRESHOLD
            or b"\0" in sample
            or is_lfs_path(path, gitattributes)
        )
        info = {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
        # The remote oid lets the client skip files that did not change.
        if (existing := commit.files.get(path)) is not None and existing.lfs == lfs:
            info["oid"] = existing.sha256 if lfs else existing.git_oid
        files.append(info)
    return json_response({"files": files, "commitOid": commit.id})


@router.route("POST", rf"{_API_REPO}/commit/{_REVISION}", auth=True)
def create_commit(app: HubApp, request: Request, repo: RepoId, revision: str) -> Response:
    """NDJSON body: a `header` line, then one line per `file`, `lfsFile`, `deletedFile` or `deletedFolder`."""
    try:
        lines = [json.loads(line) for line in request.read_body().splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise bad_request(f"Invalid NDJSON commit payload: {error}") from error
    if not lines or lines[0].get("key") != "header":
        raise bad_request("The first line of a commit payload must be its header")
    header = lines[0].get("value") or {}
    commit, ref = app.storage.commit(
        repo,
        revision,
        [_commit_operation(app, line) for line in lines[1:]],
        title=str(header.get("summary") or "Update"),
        message=str(header.get("description") or ""),
        author=USER_NAME,
        parent_commit=header.get("parentCommit"),
        create_pr=request.flag("create_pr"),
    )
    repo_url = f"{request.base_url}/{repo.url_path}"
    pr_url = f"{repo_url}/discussions/{ref.removeprefix('refs/pr/')}" if ref.startswith("refs/pr/") else None
    return json_response(
        {
            "success": True,
            "commitOid": commit.id,
            "commitUrl": f"{repo_url}/commit/{commit.id}",
            "pullRequestUrl": pr_url,
            "hookOutput": "",
        }
    )


def _commit_operation(app: HubApp, line: dict) -> Operation:
    key, value = line.get("key"), line.get("value") or {}
    path = validate_path_in_repo(str(value.get("path", "")).rstrip("/"))
    if key == "file":
        if value.get("encoding", "base64") != "base64":
            raise bad_request(f"Unsupported encoding for {path}: {value.get('encoding')}")
        return AddFile(path, app.storage.store_regular_file(_base64(value.get("content", ""), path)))
    if key == "lfsFile":
        # Copies send no size: the oid alone names an object uploaded earlier.
        return AddFile(path, app.storage.lfs_file_entry(str(value.get("oid")), value.get("size")))
    if key == "deletedFile":
        return DeleteFile(path)
    if key == "deletedFolder":
        return DeleteFolder(path)
    raise bad_request(f"Unknown commit operation: {key}")


def _base64(text: str, path: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, TypeError) as error:
        raise bad_request(f"Invalid base64 content for {path}") from error


@router.route("POST", rf"{_API_REPO}/branch/(?P<branch>[^/]+)", auth=True)
def create_branch(app: HubApp, request: Request, repo: RepoId, branch: str) -> Response:
    starting_point = request.json().get("startingPoint") or DEFAULT_BRANCH
    app.storage.create_ref(repo, _branch_ref(branch), starting_point)
    return Response(200)


@router.route("DELETE", rf"{_API_REPO}/branch/(?P<branch>[^/]+)", auth=True)
def delete_branch(app: HubApp, request: Request, repo: RepoId, branch: str) -> Response:
    app.storage.delete_ref(repo, _branch_ref(branch))
    return Response(200)


def _branch_ref(branch: str) -> str:
    # Full names create special refs such as `refs/convert/parquet`, which the Hub's own bots write.
    _check_ref_name(branch, "branch")
    if branch.startswith("refs/tags/"):
        raise bad_request(f"Invalid branch name: {branch!r} (tags are created through /tag/)")
    return branch if branch.startswith("refs/") else f"refs/heads/{branch}"


@router.route("POST", rf"{_API_REPO}/tag/{_REVISION}", auth=True)
def create_tag(app: HubApp, request: Request, repo: RepoId, revision: str) -> Response:
    tag = str(request.json().get("tag", ""))
    _check_ref_name(tag, "tag")
    app.storage.create_ref(repo, f"refs/tags/{tag}", revision)
    return Response(200)


@router.route("DELETE", rf"{_API_REPO}/tag/(?P<tag>[^/]+)", auth=True)
def delete_tag(app: HubApp, request: Request, repo: RepoId, tag: str) -> Response:
    app.storage.delete_ref(repo, f"refs/tags/{tag}")
    return Response(200)


def _check_ref_name(name: str, kind: str) -> None:
    # Roughly git's rule: no whitespace, none of ~ ^ : ? * [ \ and no "..".
    if not re.fullmatch(r"[^\s~^:?*\[\\]+", name) or ".." in name:
        raise bad_request(f"Invalid {kind} name: {name!r}")


# ---- Git-LFS: batch API (basic transfer), upload, verify ----------------------------------------


@router.route("POST", rf"{_WEB_REPO}\.git/info/lfs/objects/batch", auth=True)
def lfs_batch(app: HubApp, request: Request, repo: RepoId) -> Response:
    body = request.json()
    if body.get("operation") != "upload":
        raise bad_request("Only the 'upload' operation is supported; download files through /resolve/")
    app.storage.refs(repo)  # 404 for an unknown repo
    repo_base = f"{request.base_url}/{repo.url_path}.git/info/lfs/objects"
    objects = []
    for obj in body.get("objects", []):
        oid, size = obj.get("oid"), obj.get("size")
        if not (
            isinstance(oid, str)
            and re.fullmatch(r"[0-9a-f]{64}", oid)
            and isinstance(size, int)
            and size >= 0
        ):
            error = {
                "code": 422,
                "message": "oid must be a sha256 hex digest and size a non-negative integer",
            }
            objects.append({"oid": str(oid), "size": size if isinstance(size, int) else 0, "error": error})
            continue
        described = {"oid": oid, "size": size, "authenticated": True}
        if not app.storage.has_blob(oid, size):  # no actions = the server has it already
            signature = app.upload_signature(oid, size)
            described["actions"] = {
                "upload": {"href": f"{request.base_url}/lfs-objects/{oid}?size={size}&signature={signature}"},
                "verify": {"href": f"{repo_base}/verify"},
            }
        objects.append(described)
    return json_response(
        {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
        headers={"Content-Type": "application/vnd.git-lfs+json"},
    )


@router.route("PUT", r"/lfs-objects/(?P<oid>[0-9a-f]{64})")
def lfs_upload(app: HubApp, request: Request, oid: str) -> Response:
    try:
        size = int(request.param("size", ""))
    except ValueError as error:
        raise bad_request("Missing or invalid size") from error
    if not hmac.compare_digest(request.param("signature", ""), app.upload_signature(oid, size)):
        raise HubError(403, "Invalid upload URL signature (ask the LFS batch endpoint for a new URL)")
    app.storage.receive_lfs_object(oid, size, request.iter_body())
    return Response(200)


@router.route("POST", rf"{_WEB_REPO}\.git/info/lfs/objects/verify", auth=True)
def lfs_verify(app: HubApp, request: Request, repo: RepoId) -> Response:
    body = request.json()
    if not app.storage.has_blob(str(body.get("oid")), body.get("size")):
        raise HubError(404, f"LFS object {body.get('oid')} with size {body.get('size')} was not uploaded")
    return json_response({"success": True})


@router.route("GET", rf"{_API_REPO}/xet-(?:read|write)-token(?:/.*)?")
def xet_token(app: HubApp, request: Request, repo: RepoId) -> Response:
    # Reached only when a client was imported without HF_HUB_DISABLE_XET=1: say so instead of a bare 404.
    raise HubError(
        501,
        "This offline Hub has no Xet storage: export HF_HUB_DISABLE_XET=1 before importing the HF libraries",
    )


# ---- file downloads ------------------------------------------------------------------------------


@router.route("GET", rf"{_WEB_REPO}/resolve/{_REVISION}/(?P<path>.+)")
def resolve_file(app: HubApp, request: Request, repo: RepoId, revision: str, path: str) -> Response:
    """Serve a file with the headers `hf_hub_download` checks: X-Repo-Commit, ETag, sizes; Range → 206."""
    commit = app.storage.resolve(repo, revision)
    entry = commit.files.get(path)
    if entry is None:
        raise entry_not_found(path, commit_id=commit.id)
    headers = {
        "X-Repo-Commit": commit.id,
        "ETag": f'"{entry.etag}"',
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
    }
    if entry.lfs:
        headers |= {"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)}
    byte_range = _byte_range(request.headers.get("Range"), entry.size)
    blob = app.storage.blob_path(entry.sha256)
    if byte_range is None:
        return Response(200, headers, file=blob, file_offset=0, file_length=entry.size)
    start, end = byte_range
    headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
    return Response(206, headers, file=blob, file_offset=start, file_length=end - start + 1)


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single `bytes=` range; None serves the whole file (as RFC 9110 allows)."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # suffix range: the last N bytes
        start, end = (max(size - int(last), 0), size - 1) if int(last) > 0 else (size, size - 1)
    elif last and int(last) < int(first):
        return None  # an invalid range is ignored, not refused
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size:
        raise HubError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
    return start, end
