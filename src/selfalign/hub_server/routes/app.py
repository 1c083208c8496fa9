"""The server's application: its state and the dispatch of a request to its endpoint."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets

from ..errors import HubError
from ..storage import HubStorage, RepoId
from ..web import Request, Response, Router, error_response
from . import downloads, lfs, repos, writes
from .urls import REPO_TYPE_BY_KIND

logger = logging.getLogger(__name__)

# Every endpoint, matched in this order.
ROUTER = Router()
for endpoints in (repos, writes, lfs, downloads):
    ROUTER.include(endpoints.router)


class HubApp:
    """The server's state (storage and the key that signs LFS upload URLs) and its request dispatch."""

    def __init__(self, storage: HubStorage):
        self.storage = storage
        self._upload_key = secrets.token_bytes(32)

    def handle(self, request: Request) -> Response:
        try:
            route, params = ROUTER.match(request.method, request.path)
            if route.auth and request.token is None:
                raise HubError(
                    401, "This request needs an 'Authorization: Bearer <token>' header (any token works)"
                )
            if "namespace" in params:  # handlers of repo routes take one `repo` argument
                repo_type = REPO_TYPE_BY_KIND[params.pop("kind")]
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
