"""File downloads: `resolve` with the headers `hf_hub_download` checks, and byte ranges."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..errors import HubError, entry_not_found
from ..storage import RepoId
from ..web import Request, Response, Router
from .urls import REVISION, WEB_REPO

if TYPE_CHECKING:
    from .app import HubApp

router = Router()


@router.route("GET", rf"{WEB_REPO}/resolve/{REVISION}/(?P<path>.+)")
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
