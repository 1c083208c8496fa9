"""Git-LFS as the clients upload through it: the batch API (basic transfer), the signed upload URL,
verify; and a clear refusal of Xet."""

from __future__ import annotations

import hmac
import re
from typing import TYPE_CHECKING

from ..errors import HubError, bad_request
from ..storage import RepoId
from ..web import Request, Response, Router, json_response
from .urls import API_REPO, WEB_REPO

if TYPE_CHECKING:
    from .app import HubApp

router = Router()


@router.route("POST", rf"{WEB_REPO}\.git/info/lfs/objects/batch", auth=True)
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


@router.route("POST", rf"{WEB_REPO}\.git/info/lfs/objects/verify", auth=True)
def lfs_verify(app: HubApp, request: Request, repo: RepoId) -> Response:
    body = request.json()
    if not app.storage.has_blob(str(body.get("oid")), body.get("size")):
        raise HubError(404, f"LFS object {body.get('oid')} with size {body.get('size')} was not uploaded")
    return json_response({"success": True})


@router.route("GET", rf"{API_REPO}/xet-(?:read|write)-token(?:/.*)?")
def xet_token(app: HubApp, request: Request, repo: RepoId) -> Response:
    # Reached only when a client was imported without HF_HUB_DISABLE_XET=1: say so instead of a bare 404.
    raise HubError(
        501,
        "This offline Hub has no Xet storage: export HF_HUB_DISABLE_XET=1 before importing the HF libraries",
    )
