"""`monitor serve --http HOST:PORT`: the report pages under --out over HTTP, read-only.

GET and HEAD only; files under --out only (no path outside it, no hidden file, no folder listing);
nothing cached by the browser, so a live page shows the newest files. Standard library only.
"""

from __future__ import annotations

import os
import socket
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REQUEST_TIMEOUT_S = 10.0  # a client that stops sending loses its connection, not a thread for ever


class ReportRequestHandler(SimpleHTTPRequestHandler):
    """Serves files under `directory`; everything else is 404."""

    server_version = "monitor-report"
    sys_version = ""
    timeout = REQUEST_TIMEOUT_S

    def translate_path(self, path: str) -> str:
        """The file for a URL path, or a name that exists nowhere when the path would leave the folder,
        names a hidden file (.monitor/, temporary files) or goes through a link."""
        translated = super().translate_path(path)
        base = os.path.abspath(self.directory)
        lexical = os.path.relpath(os.path.abspath(translated), base)
        real = os.path.relpath(os.path.realpath(translated), os.path.realpath(base))
        parts = lexical.split(os.sep)
        if real != lexical or parts[0] == ".." or any(part.startswith(".") and part != "." for part in parts):
            return os.path.join(base, ".monitor", "no-such-file")  # nothing writes there: a 404
        return translated

    def list_directory(self, path):  # type: ignore[no-untyped-def]
        self.send_error(404, "no listing; the report is index.html (it appears once a run has started)")
        return None

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        """Quiet: the monitor's terminal belongs to its dashboard."""


class ReportServer:
    """A ThreadingHTTPServer on (host, port) for `folder`, in a daemon thread: `start`, then `close`."""

    def __init__(self, host: str, port: int, folder: Path) -> None:
        server_class = type("Server", (ThreadingHTTPServer,), {
            "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET,
            "daemon_threads": True, "block_on_close": False})
        self.server = server_class((host, port), partial(ReportRequestHandler, directory=str(folder)))
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="monitor-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def start(self) -> ReportServer:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stops taking requests (within the poll interval) and closes the socket; requests under way
        end on their own (daemon threads), so this never waits for a client."""
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()
