"""What the loopback test servers (:mod:`tests.zenodo_server`, :mod:`tests.fake_hub`) share:
a quiet request handler with one way to answer, and a threaded server in a context."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class QuietHandler(BaseHTTPRequestHandler):
    """A handler that logs nothing to stderr and answers through :meth:`_send`."""

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              length: int | None = None) -> None:
        """Answer ``status`` with ``headers`` and ``body`` (none to a HEAD); ``length`` may
        promise more bytes than are sent (a cut download)."""
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1",
            port: int = 0) -> Iterator[int]:
    """Run a threaded server for ``handler`` on ``host``; yields its port, stops on exit."""
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
