"""Small HTTP building blocks: a request wrapper, a response value and a regex router."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import HubError, bad_request

_CHUNK_SIZE = 1024 * 1024


class Request:
    def __init__(self, method: str, target: str, headers: Message, body: BinaryIO, *, default_host: str):
        url = urlsplit(target)
        self.method = method
        self.path = url.path  # still percent-encoded: routes split on "/" before decoding
        self.query = parse_qs(url.query, keep_blank_values=True)
        self.headers = headers
        self.base_url = f"http://{headers.get('Host') or default_host}"
        self._body = body
        self._remaining = int(headers.get("Content-Length") or 0)
        self._chunked = "chunked" in (headers.get("Transfer-Encoding") or "").lower()

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def flag(self, name: str) -> bool:
        return (self.param(name) or "").lower() in ("1", "true")

    @property
    def token(self) -> str | None:
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        return (token.strip() or None) if scheme.lower() == "bearer" else None

    def iter_body(self) -> Iterator[bytes]:
        """The body, piece by piece (uploads are streamed to disk, not held in memory)."""
        if self._chunked:
            yield from self._iter_chunked_body()
        while self._remaining > 0:
            chunk = self._body.read(min(self._remaining, _CHUNK_SIZE))
            if not chunk:
                raise bad_request("Request body ended early")
            self._remaining -= len(chunk)
            yield chunk

    def _iter_chunked_body(self) -> Iterator[bytes]:
        # http.server does not decode `Transfer-Encoding: chunked` request bodies itself.
        while True:
            size = int(self._body.readline().split(b";")[0], 16)
            if size == 0:
                while self._body.readline().strip():  # optional trailer headers
                    pass
                self._chunked = False
                return
            yield self._body.read(size)
            self._body.readline()

    def read_body(self) -> bytes:
        return b"".join(self.iter_body())

    def json(self):
        try:
            return json.loads(self.read_body() or b"{}")
        except json.JSONDecodeError as error:
            raise bad_request(f"Invalid JSON body: {error}") from error

    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.read_body().decode(), keep_blank_values=True)

    def drain(self) -> None:
        """Consume what a handler left unread, so the kept-alive connection stays in sync."""
        for _ in self.iter_body():
            pass


@dataclass
class Response:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    file: Path | None = None  # when set, bytes [file_offset, file_offset + file_length) are sent instead
    file_offset: int = 0
    file_length: int = 0


def json_response(data, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(data).encode()
    )


def error_response(error: HubError, **extra_body) -> Response:
    # Header values must be latin-1 and single-line; the JSON body keeps the full message.
    header_message = " ".join(error.message.split()).encode("ascii", "replace").decode()
    headers = {"X-Error-Message": header_message, **error.headers}
    if error.code:
        headers["X-Error-Code"] = error.code
    return json_response({"error": error.message, **extra_body}, error.status, headers)


Handler = Callable[..., Response]


@dataclass(frozen=True)
class Route:
    methods: tuple[str, ...]
    pattern: re.Pattern
    handler: Handler
    auth: bool  # requires an `Authorization: Bearer` token


class Router:
    """Maps (method, path) to a handler; named regex groups become its (percent-decoded) arguments."""

    def __init__(self):
        self._routes: list[Route] = []

    def route(self, methods: str, pattern: str, *, auth: bool = False) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self._routes.append(Route(tuple(methods.split("|")), re.compile(pattern), handler, auth))
            return handler

        return register

    def include(self, other: Router) -> None:
        """Match `other`'s routes too, after this one's."""
        self._routes.extend(other._routes)

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str | None]]:
        method = "GET" if method == "HEAD" else method  # HEAD is answered like GET, without the body
        path_known = False
        for route in self._routes:
            match = route.pattern.fullmatch(path)
            if match is None:
                continue
            if method in route.methods:
                params = {
                    key: None if value is None else unquote(value) for key, value in match.groupdict().items()
                }
                return route, params
            path_known = True
        if path_known:
            raise HubError(405, f"Method {method} not allowed on {path}")
        raise HubError(404, f"Not found: {path}")
