"""A loopback fake of the Hugging Face Hub's HTTP protocol (model and dataset repos), for tests.

It serves model repos and dataset repos from local folders (``{repo_id: folder}``), each as
one commit whose ``sha`` is derived from its files, and answers exactly the calls
``huggingface_hub`` (2.x, on httpx2) makes for ``snapshot_download`` and ``hf_hub_download``
(a dataset repo's routes are the same under ``/api/datasets/`` and ``/datasets/``):

``GET /api/models/{repo}/revision/{rev}``         ``repo_info``: ``id``, ``sha``, ``siblings``
``GET /api/models/{repo}/tree/{rev}[/{path}]``    ``list_repo_tree``: ``?recursive=``, entries
                                                  ``{type, oid, size, path[, lfs]}``, paged
                                                  ``page_size`` at a time by a ``Link: rel=next``
``HEAD|GET /{repo}/resolve/{rev}/{filename}``     a file: ``X-Repo-Commit``, ``ETag``,
                                                  ``Content-Length``; an LFS file (by suffix,
                                                  as ``.gitattributes`` makes it on the Hub)
                                                  answers 302 to the CDN with
                                                  ``X-Linked-Etag`` (its sha256) and
                                                  ``X-Linked-Size``
``GET /api/agent-harnesses``                     the client's best-effort telemetry registry
                                                  (once a day): an empty one
``GET /cdn/{sha256}``                             LFS content, on ``http://{cdn_host}:{port}``:
                                                  another origin, so the client drops its
                                                  auth header and downloads from there

No ``X-Xet-*`` header is ever sent, so the client takes its plain HTTP download path.
``rev`` is ``main`` or the commit sha. Content requests honour ``Range: bytes=a-[b]`` (206
with ``Content-Range``). Unknown repos, revisions and files answer 404 with the Hub's
``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) and
``X-Error-Message`` headers and a JSON ``{"error": ...}`` body.

Faults are queued per file name (``Hub.fault``) and consumed one per request of a kind:

``cut``       a content GET promises the whole body, sends half of it, hangs up
``503``       a ``resolve`` HEAD answers 503 (the Hub being briefly down)

Both are faults huggingface_hub recovers from by itself (2.4.0): ``http_get`` resumes a
broken body with a ``Range`` from the end of its last whole ``DOWNLOAD_CHUNK_SIZE`` (10 MiB)
chunk, so a cut in a smaller file restarts it from 0; a failed HEAD is retried with backoff
on 5xx. A 503 to the content GET is not retried (only 408 and 429 are), so it is not offered.

Every request is logged as ``(method, path, headers)`` in ``Hub.log``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from tests.loopback import QuietHandler, serving

#: Files the Hub stores in LFS (its default ``.gitattributes`` patterns, the ones used here).
LFS_SUFFIXES = (".safetensors", ".bin", ".msgpack", ".pt", ".pth", ".h5", ".onnx", ".ckpt",
                ".parquet")
FAULTS = ("cut", "503")
_RANGE = re.compile(r"^\s*bytes=(\d+)-(\d*)\s*$")
_API = re.compile(r"^/api/(?P<kind>models|datasets)/(?P<repo>[^/]+(?:/[^/]+)?)/"
                  r"(?P<op>revision|tree)/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
_RESOLVE = re.compile(r"^/(?:(?P<kind>datasets)/)?(?P<repo>[^/]+(?:/[^/]+)?)/resolve/"
                      r"(?P<rev>[^/]+)/(?P<file>.+)$")


@dataclass(frozen=True)
class RepoFile:
    """One file of a served repo, with the ids the Hub gives it."""

    path: str
    data: bytes

    @property
    def lfs(self) -> bool:
        return self.path.endswith(LFS_SUFFIXES)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        """The git-lfs pointer git stores in place of an LFS file."""
        return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
                f"size {len(self.data)}\n").encode()

    @property
    def oid(self) -> str:
        """The git blob id (of the pointer, for an LFS file), as the tree endpoint gives it."""
        blob = self.pointer if self.lfs else self.data
        return hashlib.sha1(b"blob %d\0" % len(blob) + blob).hexdigest()

    def entry(self) -> dict:
        out = {"type": "file", "oid": self.oid, "size": len(self.data), "path": self.path}
        if self.lfs:
            out["lfs"] = {"oid": self.sha256, "size": len(self.data),
                          "pointerSize": len(self.pointer)}
        return out


class Repo:
    """A model (or dataset) repo: the files of a folder (read once), at one commit."""

    def __init__(self, repo_id: str, folder: str | Path, dataset: bool = False) -> None:
        self.id = repo_id
        self.prefix = "/datasets" if dataset else ""  # of its resolve URLs
        root = Path(folder)
        self.files = {p.relative_to(root).as_posix(): RepoFile(p.relative_to(root).as_posix(),
                                                               p.read_bytes())
                      for p in sorted(root.rglob("*")) if p.is_file()}
        listing = "\n".join(f"{f.path} {f.oid}" for f in self.files.values())
        self.sha = hashlib.sha1(f"{repo_id}\n{listing}".encode()).hexdigest()

    def folders(self) -> list[str]:
        out = {"/".join(p.split("/")[:i]) for p in self.files for i in range(1, p.count("/") + 1)}
        return sorted(out)


class Hub:
    """State of the fake Hub: repos, faults, and a log of requests."""

    def __init__(self, repos: dict[str, str | Path] | None = None, page_size: int = 1000,
                 cdn_host: str = "localhost",
                 datasets: dict[str, str | Path] | None = None) -> None:
        self.repos = {r: Repo(r, folder) for r, folder in (repos or {}).items()}
        self.datasets = {r: Repo(r, folder, dataset=True)
                         for r, folder in (datasets or {}).items()}
        self.page_size = page_size  # the Hub's page: 1000 tree entries
        self.cdn_host = cdn_host
        self.faults: dict[tuple[str, str], list[str]] = {}  # (repo, file) -> faults
        self.log: list[tuple[str, str, dict[str, str]]] = []
        self.base = ""
        self.cdn = ""
        self._lock = threading.Lock()

    def fault(self, repo: str, filename: str, *faults: str) -> None:
        """Queue ``faults`` for ``filename`` of ``repo``; each hits the next request of its
        kind (``cut``: a content GET; ``503``: a ``resolve`` HEAD)."""
        unknown = [f for f in faults if f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown faults {unknown}; known: {list(FAULTS)}")
        self.faults.setdefault((repo, filename), []).extend(faults)

    def take_fault(self, repo: str, filename: str, kind: str) -> bool:
        with self._lock:
            queue = self.faults.get((repo, filename), [])
            if queue and queue[0] == kind:
                queue.pop(0)
                return True
        return False

    def requests_for(self, repo: str, filename: str) -> list[tuple[str, str, dict[str, str]]]:
        """Requests of ``filename`` of ``repo``: its ``resolve`` HEAD/GETs and CDN GETs."""
        served = self.repos.get(repo) or self.datasets[repo]
        f = served.files[filename]
        names = {f"{served.prefix}/{repo}/resolve/{r}/{quote(filename)}"
                 for r in ("main", served.sha)}
        return [r for r in self.log
                if urlsplit(r[1]).path in names or r[1].startswith(f"/cdn/{f.sha256}")]

    def content_requested(self, repo: str) -> set[str]:
        """The files of ``repo`` whose content was requested (a GET of them)."""
        return {name for name in (self.repos.get(repo) or self.datasets[repo]).files
                if any(m == "GET" for m, _, _ in self.requests_for(repo, name))}

    def find(self, sha256: str) -> tuple[Repo, RepoFile] | None:
        for repo in [*self.repos.values(), *self.datasets.values()]:
            for f in repo.files.values():
                if f.lfs and f.sha256 == sha256:
                    return repo, f
        return None


def _handler(state: Hub) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the Hub and httpx2 speak it

        def _json(self, obj: object, headers: dict[str, str] | None = None) -> None:
            self._send(200, json.dumps(obj).encode(),
                       {"Content-Type": "application/json; charset=utf-8", **(headers or {})})

        def _error(self, code: str, message: str, headers: dict[str, str] | None = None
                   ) -> None:
            self._send(404, json.dumps({"error": message}).encode(),
                       {"Content-Type": "application/json; charset=utf-8",
                        "X-Error-Code": code, "X-Error-Message": message, **(headers or {})})

        def _repo_rev(self, repo_id: str, rev: str, kind: str | None = None) -> Repo | None:
            """The repo (a dataset's, ``kind`` ``datasets``) at ``rev``, or None after
            answering the Hub's 404."""
            repo = (state.datasets if kind == "datasets" else state.repos).get(repo_id)
            if repo is None:
                self._error("RepoNotFound", "Repository not found")
                return None
            if unquote(rev) not in ("main", repo.sha):
                self._error("RevisionNotFound", f"Invalid rev id: {unquote(rev)}")
                return None
            return repo

        def _content(self, data: bytes, headers: dict[str, str], cut: bool) -> None:
            """``data`` (or the asked ``Range`` of it) as a download answers it."""
            start, end = 0, len(data) - 1
            m = _RANGE.match(self.headers.get("Range") or "")
            status = 200
            if m is not None:
                start = int(m.group(1))
                end = min(int(m.group(2)), end) if m.group(2) else end
                if start >= len(data) or start > end:
                    self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                    return
                headers = {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"}
                status = 206
            body = data[start:end + 1]
            headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
                       **headers}
            if cut and self.command == "GET":  # promise everything, send half, hang up
                self._send(status, body[: len(body) // 2], headers, length=len(body))
                self.close_connection = True
                return
            self._send(status, body, headers)

        def _api(self, m: re.Match, query: dict[str, list[str]]) -> None:
            repo = self._repo_rev(unquote(m["repo"]), m["rev"], m["kind"])
            if repo is None:
                return
            if m["op"] == "revision":
                self._json({"id": repo.id, "modelId": repo.id, "sha": repo.sha,
                            "private": False, "gated": False, "disabled": False,
                            "siblings": [{"rfilename": p} for p in repo.files]})
                return
            base = unquote(m["path"] or "").strip("/")
            recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
            if base and base not in repo.files and base not in repo.folders():
                self._error("EntryNotFound", f"{base} does not exist on \"{m['rev']}\"",
                            {"X-Repo-Commit": repo.sha})
                return
            prefix = f"{base}/" if base else ""
            entries = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(),
                        "size": 0, "path": d} for d in repo.folders()]
            entries += [f.entry() for f in repo.files.values()]
            entries = [e for e in entries if e["path"].startswith(prefix) and (
                recursive or "/" not in e["path"][len(prefix):])]
            entries.sort(key=lambda e: (e["type"] != "directory", e["path"]))
            cursor = int(query.get("cursor", ["0"])[0])
            page = entries[cursor:cursor + state.page_size]
            headers = {}
            if cursor + state.page_size < len(entries):
                path = urlsplit(self.path).path
                flag = "true" if recursive else "false"
                nxt = (f"{state.base}{path}?recursive={flag}&expand=false"
                       f"&cursor={cursor + state.page_size}")
                headers["Link"] = f'<{nxt}>; rel="next"'
            self._json(page, headers)

        def _resolve(self, m: re.Match) -> None:
            repo = self._repo_rev(unquote(m["repo"]), m["rev"], m["kind"])
            if repo is None:
                return
            name = unquote(m["file"])
            f = repo.files.get(name)
            if f is None:
                self._error("EntryNotFound", "Entry not found", {"X-Repo-Commit": repo.sha})
                return
            if self.command == "HEAD" and state.take_fault(repo.id, name, "503"):
                self._send(503, b"Service Unavailable", {"Content-Type": "text/plain"})
                return
            headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{f.oid}"'}
            if f.lfs:  # the Hub's LFS answer: a redirect to the CDN, the blob's id and size
                self._send(302, b"", {**headers, "X-Linked-Etag": f'"{f.sha256}"',
                                      "X-Linked-Size": str(len(f.data)),
                                      "Location": f"{state.cdn}/cdn/{f.sha256}"})
                return
            self._content(f.data, headers, state.take_fault(repo.id, name, "cut"))

        def _cdn(self, sha256: str) -> None:
            found = state.find(sha256)
            if found is None:
                self._send(404, b"not found", {"Content-Type": "text/plain"})
                return
            repo, f = found
            self._content(f.data, {"ETag": f'"{f.sha256}"'},
                          state.take_fault(repo.id, f.path, "cut"))

        def _route(self) -> None:
            state.log.append((self.command, self.path, dict(self.headers)))
            parts = urlsplit(self.path)
            if parts.path.startswith("/cdn/"):
                self._cdn(parts.path[len("/cdn/"):])
            elif parts.path == "/api/agent-harnesses":
                self._json({"standardEnvVars": [], "harnesses": {}})
            elif (m := _API.match(parts.path)) and self.command == "GET":
                self._api(m, parse_qs(parts.query))
            elif m := _RESOLVE.match(parts.path):
                self._resolve(m)
            else:
                self._send(404, b"not found", {"Content-Type": "text/plain"})

        do_GET = do_HEAD = _route  # noqa: N815 - http.server's names

    return Handler


@contextmanager
def serve(state: Hub | None = None, host: str = "127.0.0.1", port: int = 0) -> Iterator[Hub]:
    """Serve ``state`` (a new empty Hub by default) on ``host``; ``state.base`` is its URL
    (``HF_ENDPOINT``), ``state.cdn`` the same server under ``state.cdn_host``."""
    state = state or Hub()
    with serving(_handler(state), host, port) as bound:
        state.base = f"http://{host}:{bound}"
        state.cdn = f"http://{state.cdn_host}:{bound}"
        yield state
