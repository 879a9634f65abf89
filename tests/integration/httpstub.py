"""What the HTTP stand-ins share: a threading server on 127.0.0.1, started and stopped around a test."""

from __future__ import annotations

import http.server
import threading
from typing import Any


class StubServer:
    """Serves ``handler`` (a BaseHTTPRequestHandler class) on a thread; a context manager."""

    name = "http-stub"

    def __init__(self, handler: type, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = http.server.ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.host = host
        self.port = int(self.server.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def root(self) -> str:
        return "http://%s:%d" % (self.host, self.port)

    def start(self) -> Any:
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def reply(handler: http.server.BaseHTTPRequestHandler, code: int, data: bytes,
          headers: dict[str, str]) -> None:
    """Send a response with a Content-Length (no body for HEAD)."""
    handler.send_response(code)
    handler.send_header("Content-Length", str(len(data)))
    for key, value in headers.items():
        handler.send_header(key, value)
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(data)
