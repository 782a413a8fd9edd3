"""A loopback fake of Zenodo's REST API with fault injection, for tests and rehearsals.

It serves ``/api/records/<record>`` (JSON: ``files[].key``, ``.size``,
``.checksum`` as ``md5:<hex>``, ``.links.self``) and each file at
``/api/records/<record>/files/<key>/content`` with HTTP ``Range`` (``bytes=a-`` and
``bytes=a-b``; 206 with ``Content-Range``, 416 past the end).

Files beside the record (a dataset's reals hosted elsewhere) are served at
``/download/<key>``, with the same ``Range`` handling and fault queue, and answer ``HEAD``
with their ``Content-Length`` (a HEAD consumes a queued ``503``/``429``/``404`` fault, and
leaves a ``cut`` or ``ignore-range`` to the next GET).

Faults are queued per file and consumed one per request for that file:

``cut``           promise the whole body, send half of it, hang up
``503`` / ``429`` answer that status (``429`` with ``Retry-After: 1``)
``404``           answer 404
``ignore-range``  answer 200 with the whole file even when a ``Range`` was asked

Every request is logged as ``(monotonic time, path, headers)``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler

from tests.loopback import QuietHandler, serving

RECORD = "7528113"
FAULTS = ("cut", "503", "429", "404", "ignore-range")
_RANGE = re.compile(r"^\s*bytes=(\d+)-(\d*)\s*$")


class Zenodo:
    """State of the fake Zenodo: files, listing, faults, and a log of requests."""

    def __init__(self, record: str = RECORD) -> None:
        self.record = str(record)
        self.files: dict[str, bytes] = {}
        self.md5_override: dict[str, str] = {}
        self.faults: dict[str, list[str]] = {}  # key -> faults consumed one per request
        self.listing_body: bytes | None = None  # replaces the generated listing
        self.downloads: dict[str, bytes] = {}  # files beside the record: /download/<key>
        self.log: list[tuple[float, str, dict[str, str]]] = []
        self.heads: list[str] = []  # paths of HEAD requests
        self.base = ""

    def add(self, key: str, data: bytes, *faults: str) -> None:
        """Serve ``data`` as the record's file ``key``; ``faults`` hit its first requests."""
        unknown = [f for f in faults if f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown faults {unknown}; known: {list(FAULTS)}")
        self.files[key] = data
        self.faults[key] = list(faults)

    def add_download(self, key: str, data: bytes, *faults: str) -> None:
        """Serve ``data`` at ``/download/<key>``, beside the record (not in its listing)."""
        unknown = [f for f in faults if f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown faults {unknown}; known: {list(FAULTS)}")
        self.downloads[key] = data
        self.faults[key] = list(faults)

    def download_url(self, key: str) -> str:
        return f"{self.base}/download/{key}"

    def file_url(self, key: str) -> str:
        return f"{self.base}/api/records/{self.record}/files/{key}/content"

    def listing(self) -> bytes:
        if self.listing_body is not None:
            return self.listing_body
        return json.dumps({"id": int(self.record), "files": [
            {"key": k, "size": len(v),
             "checksum": "md5:" + self.md5_override.get(k, hashlib.md5(v).hexdigest()),
             "links": {"self": self.file_url(k)}}
            for k, v in self.files.items()]}).encode()

    def requests_for(self, key: str) -> list[tuple[float, str, dict[str, str]]]:
        return [r for r in self.log if r[1].endswith(f"/files/{key}/content")
                or r[1] == f"/download/{key}"]


def _handler(state: Zenodo) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def _file(self) -> tuple[str, bytes | None]:
            """The key and bytes of the file the path names (None: no such file)."""
            prefix = f"/api/records/{state.record}/files/"
            if self.path.startswith(prefix) and self.path.endswith("/content"):
                key = self.path[len(prefix):-len("/content")]
                return key, state.files.get(key)
            if self.path.startswith("/download/"):
                key = self.path[len("/download/"):]
                return key, state.downloads.get(key)
            return "", None

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
            state.heads.append(self.path)
            key, data = self._file()
            if data is None:
                self._send(404, b"not found")
                return
            queue = state.faults[key]
            if queue and queue[0] in ("404", "503", "429"):
                fault = queue.pop(0)
                self._send(int(fault), b"fault", {"Retry-After": "1"} if fault == "429" else {})
                return
            self._send(200, b"", length=len(data))

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            state.log.append((time.monotonic(), self.path, dict(self.headers)))
            if self.path == f"/api/records/{state.record}":
                self._send(200, state.listing(), {"Content-Type": "application/json"})
                return
            key, data = self._file()
            if data is None:
                self._send(404, b"not found")
                return
            fault = state.faults[key].pop(0) if state.faults[key] else ""
            if fault in ("404", "503", "429"):
                headers = {"Retry-After": "1"} if fault == "429" else {}
                self._send(int(fault), b"fault", headers)
                return
            start, end = 0, len(data) - 1
            m = _RANGE.match(self.headers.get("Range") or "")
            ranged = m is not None and fault != "ignore-range"
            if ranged:
                start = int(m.group(1))
                end = min(int(m.group(2)), end) if m.group(2) else end
                if start >= len(data) or start > end:
                    self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                    return
            body = data[start:end + 1]
            if ranged:
                headers = {"Content-Range": f"bytes {start}-{end}/{len(data)}"}
                status = 206
            else:
                headers, status = {}, 200
            if fault == "cut":  # promise everything, send half, hang up
                self._send(status, body[: len(body) // 2], headers, length=len(body))
                self.close_connection = True
                return
            self._send(status, body, headers)

    return Handler


@contextmanager
def serve(state: Zenodo | None = None, host: str = "127.0.0.1",
          port: int = 0) -> Iterator[Zenodo]:
    """Serve ``state`` (a new empty one by default) on ``host``; ``state.base`` is its URL."""
    state = state or Zenodo()
    with serving(_handler(state), host, port) as bound:
        state.base = f"http://{host}:{bound}"
        yield state
