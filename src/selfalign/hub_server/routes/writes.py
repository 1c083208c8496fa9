"""Writing to repos: preupload (which files go to LFS), commits, branches and tags."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import TYPE_CHECKING

from ..errors import bad_request
from ..storage import (
    DEFAULT_BRANCH,
    LFS_SIZE_THRESHOLD,
    AddFile,
    DeleteFile,
    DeleteFolder,
    Operation,
    RepoId,
    is_lfs_path,
    validate_path_in_repo,
)
from ..web import Request, Response, Router, json_response
from .repos import USER_NAME
from .urls import API_REPO, REVISION

if TYPE_CHECKING:
    from .app import HubApp

router = Router()


@router.route("POST", rf"{API_REPO}/preupload/{REVISION}", auth=True)
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


@router.route("POST", rf"{API_REPO}/commit/{REVISION}", auth=True)
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


@router.route("POST", rf"{API_REPO}/branch/(?P<branch>[^/]+)", auth=True)
def create_branch(app: HubApp, request: Request, repo: RepoId, branch: str) -> Response:
    starting_point = request.json().get("startingPoint") or DEFAULT_BRANCH
    app.storage.create_ref(repo, _branch_ref(branch), starting_point)
    return Response(200)


@router.route("DELETE", rf"{API_REPO}/branch/(?P<branch>[^/]+)", auth=True)
def delete_branch(app: HubApp, request: Request, repo: RepoId, branch: str) -> Response:
    app.storage.delete_ref(repo, _branch_ref(branch))
    return Response(200)


def _branch_ref(branch: str) -> str:
    # Full names create special refs such as `refs/convert/parquet`, which the Hub's own bots write.
    _check_ref_name(branch, "branch")
    if branch.startswith("refs/tags/"):
        raise bad_request(f"Invalid branch name: {branch!r} (tags are created through /tag/)")
    return branch if branch.startswith("refs/") else f"refs/heads/{branch}"


@router.route("POST", rf"{API_REPO}/tag/{REVISION}", auth=True)
def create_tag(app: HubApp, request: Request, repo: RepoId, revision: str) -> Response:
    tag = str(request.json().get("tag", ""))
    _check_ref_name(tag, "tag")
    app.storage.create_ref(repo, f"refs/tags/{tag}", revision)
    return Response(200)


@router.route("DELETE", rf"{API_REPO}/tag/(?P<tag>[^/]+)", auth=True)
def delete_tag(app: HubApp, request: Request, repo: RepoId, tag: str) -> Response:
    app.storage.delete_ref(repo, f"refs/tags/{tag}")
    return Response(200)


def _check_ref_name(name: str, kind: str) -> None:
    # Roughly git's rule: no whitespace, none of ~ ^ : ? * [ \ and no "..".
    if not re.fullmatch(r"[^\s~^:?*\[\\]+", name) or ".." in name:
        raise bad_request(f"Invalid {kind} name: {name!r}")
