"""`HubServer`: the offline Hub-compatible HTTP server, served from a background thread.

Only the standard library is used (`http.server.ThreadingHTTPServer`), so running it needs no
dependency beyond this package. The endpoints live in `routes/`, the on-disk format in
`storage.py`.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .routes import HubApp
from .storage import HubStorage
from .web import Request, Response

logger = logging.getLogger(__name__)


class HubServer:
    """A Hub-compatible server on `host:port` storing repos under `data_dir` (port 0 picks a free port)."""

    def __init__(
        self, data_dir: str | Path, host: str = "127.0.0.1", port: int = 0, *, verbose: bool = False
    ):
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.verbose = verbose
        self.url = f"http://{host}:{port}"  # final once started (port 0 is resolved then)
        self._http_server: _HubHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> HubServer:
        if self._http_server is not None:
            raise RuntimeError("HubServer is already running")
        app = HubApp(HubStorage(self.data_dir))
        self._http_server = _HubHTTPServer((self.host, self.port), app, verbose=self.verbose)
        self.port = self._http_server.server_address[1]
        self.url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(
            target=self._http_server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="hub-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._http_server is None:
            return
        self._http_server.shutdown()
        self._http_server.server_close()
        self._thread.join()
        self._http_server = self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class _HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # kept-alive client connections must not block shutdown

    def __init__(self, address: tuple[str, int], app: HubApp, *, verbose: bool):
        self.app = app
        self.verbose = verbose
        super().__init__(address, _RequestHandler)

    def handle_error(self, request, client_address) -> None:
        # Mostly clients closing a connection mid-download; not worth a traceback unless asked.
        if self.verbose:
            super().handle_error(request, client_address)
        else:
            logger.debug("Connection error from %s", client_address, exc_info=True)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the clients reuse pooled connections
    server: _HubHTTPServer

    def do_GET(self) -> None:
        request = Request(
            self.command, self.path, self.headers, self.rfile, default_host=self._default_host()
        )
        response = self.server.app.handle(request)
        request.drain()
        self._send(response)

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def _default_host(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        length = response.file_length if response.file is not None else len(response.body)
        for name, value in {"Content-Length": str(length), **response.headers}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        if response.file is None:
            self.wfile.write(response.body)
            return
        with open(response.file, "rb") as file:
            file.seek(response.file_offset)
            remaining = response.file_length
            while remaining > 0:
                chunk = file.read(min(remaining, 1024 * 1024))
                if not chunk:  # blobs are immutable, so only a damaged data dir gets here
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)

    def log_message(self, format: str, *args) -> None:
        if self.server.verbose:
            super().log_message(format, *args)
