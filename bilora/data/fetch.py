"""Fetch a Zenodo record's files: pinned, resumable, retried, verified, atomic.

1. The record's file listing is read once from Zenodo's REST API
   (``{base_url}/api/records/{record}``: ``files[].key``, ``.size``, ``.checksum``
   as ``md5:<hex>``, ``.links.self``) and pinned in a JSON lock file. While the lock
   file exists the listing is never read again.
2. Each file is downloaded to ``<dest>/<key>.part``. A cut transfer resumes with an
   HTTP ``Range`` request (also on the next run); a server that ignores ``Range``
   (answers 200) makes a clean restart. Connection errors, 5xx and 429 are retried
   with exponential backoff by ``urllib3.util.Retry``, which honours ``Retry-After``;
   a transfer cut after the headers is resumed by this module with the same backoff.
3. The free disk space is checked before the first byte is written.
4. The md5 is checked; only then is the file renamed to its final name with
   ``os.replace``. A wrong checksum removes the ``.part`` file (the next run starts
   over) and raises :class:`FetchError`. Nothing ever sits under a final name unverified.

Files beside the record (a dataset's reals hosted elsewhere: ``extra_files``, each with a
URL and md5, its size given or learned once with a HEAD request) are pinned in the same
lock file (``extra_files``, beside the listing) and fetched by the same code.

A user who already has the archives passes ``archives_dir``: they are checked against
the lock file (size and md5), linked into ``dest``, and nothing is downloaded.

urllib3 brings the transport, connection pooling and the retry policy; Range resume,
md5, the atomic rename and the disk check are written here (pooch and zenodo_get do
not resume a cut download with Range, or not with a pinned lock file).
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError, MaxRetryError, ProtocolError, ReadTimeoutError
from urllib3.util import Retry, Timeout

from bilora.atomic import file_hexdigest, symlink, write_json
from bilora.errors import DataError

LOCK_VERSION = 1
RETRY_STATUSES = (429, 500, 502, 503, 504)
DONE_NAME = "fetch.done.json"
_MD5 = re.compile(r"^[0-9a-f]{32}$")


class FetchError(DataError):
    """A file could not be fetched or verified; the message names the file and URL."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a record, as pinned in the lock file."""

    key: str
    size: int
    md5: str
    url: str


def listing_url(base_url: str, record: str | int) -> str:
    """The REST API address of a Zenodo record."""
    return f"{base_url.rstrip('/')}/api/records/{record}"


def make_pool(retries: int = 5, backoff_factor: float = 1.0, backoff_max: float = 120.0,
              retry_after_max: float = 600.0, connect_timeout: float = 30.0,
              read_timeout: float = 120.0) -> urllib3.PoolManager:
    """A PoolManager retrying connection errors, 5xx and 429 (honouring Retry-After)."""
    kwargs = {}
    if "retry_after_max" in inspect.signature(Retry.__init__).parameters:  # urllib3 >= 2.6
        kwargs["retry_after_max"] = int(retry_after_max)
    retry = Retry(
        total=None, connect=retries, read=retries, status=retries, other=retries, redirect=10,
        allowed_methods=["GET", "HEAD"], status_forcelist=RETRY_STATUSES,
        backoff_factor=backoff_factor, backoff_max=backoff_max,
        respect_retry_after_header=True, raise_on_status=True, **kwargs,
    )
    return urllib3.PoolManager(retries=retry,
                               timeout=Timeout(connect=connect_timeout, read=read_timeout))


def _check_key(key: object, where: str) -> str:
    if not isinstance(key, str) or not key or key in (".", "..") or "/" in key or "\\" in key:
        raise FetchError(f"{where}: file key {key!r} is not a plain file name")
    return key


# (key, size, (md5, its field name, how the raw value is shown), (url, its field name))
_Fields = tuple[object, object, tuple[object, str, str], tuple[object, str]]


def _listing_fields(f: dict) -> _Fields:
    """The fields of a Zenodo listing entry, with the names the errors use."""
    checksum = f.get("checksum")
    md5 = checksum[4:].lower() if isinstance(checksum, str) and checksum.startswith("md5:") \
        else None
    links = f.get("links")
    url = links.get("self") if isinstance(links, dict) else None
    return f.get("key"), f.get("size"), (md5, "checksum", repr(checksum) + ", not 'md5:<hex>'"), \
        (url, "links.self")


def _lock_fields(f: dict) -> _Fields:
    md5 = f.get("md5")
    return f.get("key"), f.get("size"), (md5, "md5", repr(md5) + ", not 32 hex digits"), \
        (f.get("url"), "url")


def _remote_files(files: object, where: str, fields: Callable[[dict], _Fields],
                  empty_hint: str) -> list[RemoteFile]:
    """Validate the ``files`` list of a Zenodo listing or of a lock file (``fields`` maps an
    entry to its key, size, md5 and url); FetchError names ``where`` and the entry."""
    if not isinstance(files, list) or not files:
        raise FetchError(f"{where}: no 'files' list{empty_hint}")
    out = []
    for i, f in enumerate(files):
        at = f"{where}: files[{i}]"
        if not isinstance(f, dict):
            raise FetchError(f"{at} is not an object")
        key, size, (md5, md5_name, md5_shown), (url, url_name) = fields(f)
        key = _check_key(key, at)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise FetchError(f"{at} ({key}): 'size' is {size!r}, not a byte count")
        if not isinstance(md5, str) or not _MD5.match(md5):
            raise FetchError(f"{at} ({key}): '{md5_name}' is {md5_shown}")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise FetchError(f"{at} ({key}): '{url_name}' is {url!r}, not a URL")
        out.append(RemoteFile(key, size, md5, url))
    return out


def parse_listing(data: object, source: str) -> list[RemoteFile]:
    """Turn a Zenodo record JSON into RemoteFiles; FetchError names ``source`` and the fault.

    ``source`` says where the JSON came from, e.g. ``"Zenodo listing at <url>"``.
    """
    if not isinstance(data, dict):
        raise FetchError(f"malformed {source}: expected a JSON object")
    return _remote_files(data.get("files"), f"malformed {source}", _listing_fields,
                         " (is the record public and its id right?)")


def read_listing(http: urllib3.PoolManager, base_url: str, record: str | int) -> list[RemoteFile]:
    """Read a record's file listing from the Zenodo REST API."""
    url = listing_url(base_url, record)
    try:
        resp = http.request("GET", url, headers={"Accept": "application/json"})
    except (MaxRetryError, HTTPError) as exc:
        raise FetchError(f"could not read the Zenodo listing {url}: {exc}") from exc
    if resp.status != 200:
        raise FetchError(f"could not read the Zenodo listing {url}: HTTP {resp.status}")
    try:
        data = json.loads(resp.data)
    except ValueError as exc:
        raise FetchError(f"malformed Zenodo listing at {url}: not JSON ({exc})") from exc
    return parse_listing(data, f"Zenodo listing at {url}")


def write_lock(path: str | os.PathLike, base_url: str, record: str | int,
               files: Sequence[RemoteFile]) -> None:
    """Pin a listing in a JSON lock file (written atomically)."""
    doc = {
        "version": LOCK_VERSION,
        "base_url": base_url.rstrip("/"),
        "record": str(record),
        "listing_url": listing_url(base_url, record),
        "pinned_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": [asdict(f) for f in files],
    }
    write_json(path, doc)


def _lock_doc(path: Path) -> dict:
    """The JSON document of a lock file (any record); FetchError names the file."""
    try:
        doc = json.loads(path.read_text())
    except ValueError as exc:
        raise FetchError(f"lock file {path} is not valid JSON ({exc}); delete it to re-pin "
                         "the listing") from exc
    except OSError as exc:
        raise FetchError(f"cannot read lock file {path}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("version") != LOCK_VERSION:
        raise FetchError(f"lock file {path} is not a version-{LOCK_VERSION} bilora lock file")
    return doc


def read_lock(path: str | os.PathLike, base_url: str | None = None,
              record: str | int | None = None) -> list[RemoteFile]:
    """Read a lock file; it must be for the given record (and base URL) when those are given."""
    path = Path(path)
    doc = _lock_doc(path)
    if record is not None and str(doc.get("record")) != str(record):
        raise FetchError(f"lock file {path} pins record {doc.get('record')}, not {record}; "
                         "delete it to re-pin")
    if base_url is not None and doc.get("base_url") != base_url.rstrip("/"):
        raise FetchError(f"lock file {path} was pinned from {doc.get('base_url')}, not "
                         f"{base_url.rstrip('/')}; delete it to re-pin")
    return _remote_files(doc.get("files"), f"lock file {path}", _lock_fields,
                         "; delete it to re-pin")


def ensure_lock(lock: str | os.PathLike, base_url: str, record: str | int,
                http: urllib3.PoolManager) -> list[RemoteFile]:
    """The pinned files: from the lock file if it exists, else read from Zenodo and pinned."""
    lock = Path(lock)
    if lock.exists():
        return read_lock(lock, base_url, record)
    try:
        files = read_listing(http, base_url, record)
    except FetchError as exc:
        raise FetchError(
            f"{exc}\nThere is no lock file at {lock}, so the listing is needed. Without "
            f"network access, put a lock file pinned elsewhere at {lock} (with the archives "
            "in archives_dir) and nothing will be downloaded.") from exc
    write_lock(lock, base_url, record, files)
    return files


@dataclass(frozen=True)
class ExtraFile:
    """A file beside a record (e.g. a dataset's reals hosted elsewhere), as configured:
    its md5 is given; its size may be unknown (None: learned with a HEAD request, then
    pinned in the lock file)."""

    key: str
    url: str
    md5: str
    size: int | None = None


_EXTRA_FIELDS = ("url", "md5", "size")


def parse_extra_files(spec: object, where: str = "extra_files") -> list[ExtraFile]:
    """``{<file name>: {url, md5, size: int|null}}`` -> ExtraFiles; FetchError names
    ``where``, the file and the field at fault."""
    if spec is None:
        return []
    if not isinstance(spec, dict):
        raise FetchError(f"{where}: expected a mapping of file name -> {{url, md5, size}}")
    out = []
    for key, entry in spec.items():
        at = f"{where}.{key}"
        _check_key(key, where)
        if not isinstance(entry, dict):
            raise FetchError(f"{at}: expected a mapping with {', '.join(_EXTRA_FIELDS)}")
        unknown = sorted(set(entry) - set(_EXTRA_FIELDS))
        if unknown:
            raise FetchError(f"{at}: unknown field(s) {unknown}; known: {list(_EXTRA_FIELDS)}")
        url, md5, size = entry.get("url"), entry.get("md5"), entry.get("size")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise FetchError(f"{at}.url: {url!r} is not a URL")
        if not isinstance(md5, str) or not _MD5.match(md5.lower()):
            raise FetchError(f"{at}.md5: {md5!r} is not 32 hex digits")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool)
                                 or size < 0):
            raise FetchError(f"{at}.size: {size!r} is not a byte count (or null)")
        out.append(ExtraFile(key, url, md5.lower(), size))
    return out


def head_size(http: urllib3.PoolManager, url: str) -> int:
    """The size of the file at ``url``: the Content-Length of a HEAD request (retried)."""
    try:
        resp = http.request("HEAD", url, headers={"Accept-Encoding": "identity"})
    except (MaxRetryError, HTTPError) as exc:
        raise FetchError(f"HEAD {url} failed after retries: {exc}") from exc
    if resp.status != 200:
        raise FetchError(f"HEAD {url}: HTTP {resp.status}; cannot learn the file's size (set "
                         "its size in extra_files)")
    length = resp.headers.get("Content-Length")
    if length is None or not length.isdigit():
        raise FetchError(f"HEAD {url}: no Content-Length ({length!r}); cannot learn the file's "
                         "size (set its size in extra_files)")
    return int(length)


def ensure_extra(lock: str | os.PathLike, extras: Sequence[ExtraFile],
                 http: urllib3.PoolManager, record_keys: Sequence[str] = (),
                 local_dir: str | os.PathLike | None = None) -> list[RemoteFile]:
    """The pinned RemoteFiles of ``extras``, from the lock file's ``extra_files`` list
    (beside the record's listing), pinning those not there yet.

    An unknown size is learned from ``local_dir`` (the user's copy, whose md5 is checked
    anyway) or with a HEAD request, then pinned, so a later run checks the same size. A
    pinned entry whose url or md5 (or a given size) differs from ``extras`` is an error.
    """
    lock = Path(lock)
    doc = _lock_doc(lock)
    pinned = {f.key: f for f in _remote_files(doc["extra_files"], f"lock file {lock}: "
                                              "extra_files", _lock_fields,
                                              "; delete it to re-pin")} \
        if doc.get("extra_files") else {}
    out, changed = [], False
    for e in extras:
        if e.key in record_keys:
            raise FetchError(f"extra_files.{e.key}: also a file of the Zenodo record")
        f = pinned.get(e.key)
        if f is not None:
            if (f.url, f.md5) != (e.url, e.md5) or e.size not in (None, f.size):
                raise FetchError(
                    f"lock file {lock} pins {e.key} as {f.url} (md5 {f.md5}, {f.size} bytes), "
                    f"not {e.url} (md5 {e.md5}, {e.size} bytes); delete its extra_files entry "
                    "(or the lock file) to re-pin")
        else:
            size = e.size
            if size is None and local_dir is not None and (Path(local_dir) / e.key).is_file():
                size = (Path(local_dir) / e.key).stat().st_size
            if size is None:
                size = head_size(http, e.url)
            f = pinned[e.key] = RemoteFile(e.key, size, e.md5, e.url)
            changed = True
        out.append(f)
    if changed:
        doc["extra_files"] = [asdict(f) for f in pinned.values()]
        write_json(lock, doc)
    return out


def select(files: Sequence[RemoteFile], patterns: Sequence[str] | None) -> list[RemoteFile]:
    """Files whose key matches any fnmatch pattern (all when none given)."""
    if not patterns:
        return list(files)
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(f.key, pat) for f in files):
            raise FetchError(f"pattern {pat!r} matches no file of the record; files: "
                             f"{', '.join(f.key for f in files)}")
    return [f for f in files if any(fnmatch.fnmatchcase(f.key, p) for p in patterns)]


def check_disk(dest: str | os.PathLike, needed: int) -> None:
    """Raise FetchError if ``dest``'s file system has less than ``needed`` bytes free."""
    free = shutil.disk_usage(dest).free
    if needed > free:
        raise FetchError(f"not enough free disk space in {dest}: {needed} bytes needed, "
                         f"{free} bytes free")


def _part(dest: Path, f: RemoteFile) -> Path:
    return dest / f"{f.key}.part"


def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)", value or "")
    return int(m.group(1)) if m else None


def _transfer(http: urllib3.PoolManager, f: RemoteFile, part: Path, chunk: int,
              progress: bool) -> None:
    """One HTTP request writing (or appending) to ``part``; raises on a cut transfer."""
    from tqdm import tqdm

    have = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = http.request("GET", f.url, headers=headers, preload_content=False)
    except MaxRetryError as exc:
        raise FetchError(f"download of {f.key} from {f.url} failed after retries: "
                         f"{exc.reason}") from exc
    try:
        if resp.status == 416:  # our offset is past the end: start over
            part.unlink(missing_ok=True)
            raise _Restart()
        if resp.status == 200:
            mode, have = "wb", 0  # no Range asked, or the server ignored it: clean restart
        elif resp.status == 206 and have and _content_range_start(
                resp.headers.get("Content-Range")) == have:
            mode = "ab"
        elif resp.status == 206:  # a range we did not ask for
            part.unlink(missing_ok=True)
            raise _Restart()
        else:
            raise FetchError(f"download of {f.key} from {f.url} failed: HTTP {resp.status}"
                             f"{' (not found)' if resp.status == 404 else ''}")
        try:
            with open(part, mode) as out, tqdm(total=f.size, initial=have, unit="B",
                                               unit_scale=True, desc=f.key,
                                               disable=not progress) as bar:
                for block in resp.stream(chunk, decode_content=False):
                    out.write(block)
                    have += len(block)
                    bar.update(len(block))
                    if have > f.size:
                        break
        except OSError as exc:  # the local side: disk full, permissions
            raise FetchError(f"cannot write {part} (downloading {f.key} from {f.url}): "
                             f"{exc}") from exc
    finally:
        resp.release_conn()


class _Restart(Exception):
    pass


def download(http: urllib3.PoolManager, f: RemoteFile, dest: str | os.PathLike,
             retries: int = 5, backoff_factor: float = 1.0, backoff_max: float = 120.0,
             chunk: int = 1 << 20, progress: bool = True,
             digest: tuple[str, str] | None = None) -> Path:
    """Download one file to ``dest/<key>``, resuming ``.part``; verify size and md5 (or
    ``digest``, an (algorithm, hex) pair such as a pinned sha256), then rename.

    Transfers cut after the response headers are resumed up to ``retries`` times in this
    call (with exponential backoff); the ``.part`` file stays for the next run otherwise.
    """
    dest = Path(dest)
    final, part = dest / f.key, _part(dest, f)
    cuts = restarts = 0
    while True:
        if part.exists() and part.stat().st_size > f.size:
            part.unlink()
        if part.exists() and part.stat().st_size == f.size:
            break  # complete from an earlier run; verified below
        try:
            _transfer(http, f, part, chunk, progress)
        except _Restart:
            restarts += 1
            if restarts > 2:
                raise FetchError(f"download of {f.key} from {f.url}: the server keeps "
                                 "answering ranges that do not fit the partial file") from None
            continue
        except (ProtocolError, ReadTimeoutError) as exc:
            cuts += 1
            if cuts > retries:
                have = part.stat().st_size if part.exists() else 0
                raise FetchError(
                    f"download of {f.key} from {f.url} was cut {cuts} times ({exc}); "
                    f"{have} of {f.size} bytes kept in {part}, run again to resume") from exc
            time.sleep(min(backoff_max, backoff_factor * 2 ** (cuts - 1)))
            continue
        else:
            have = part.stat().st_size if part.exists() else 0
            if have == f.size:
                break
            if have > f.size:
                part.unlink()
                raise FetchError(f"download of {f.key} from {f.url} sent more than the "
                                 f"{f.size} bytes the lock file pins; the partial file was "
                                 "removed")
            cuts += 1  # ended early without an error: resume
        if cuts > retries:
            raise FetchError(f"download of {f.key} from {f.url} did not complete after "
                             f"{cuts} tries; partial data kept in {part}, run again to resume")
    algorithm, want = digest or ("md5", f.md5)
    got = file_hexdigest(part, algorithm, progress=progress)
    if got != want:
        part.unlink()
        raise FetchError(f"checksum mismatch for {f.key} from {f.url}: {algorithm} {got}, "
                         f"expected {want}; the download was removed, run again to start over")
    os.replace(part, final)
    return final


def verify_local(f: RemoteFile, path: str | os.PathLike, progress: bool = True) -> Path:
    """Check a file the user already has against the lock (size, then md5)."""
    path = Path(path)
    if not path.is_file():
        raise FetchError(f"{f.key} not found at {path} (pinned in the lock file; "
                         f"download from {f.url})")
    size = path.stat().st_size
    if size != f.size:
        raise FetchError(f"{path} has {size} bytes, the lock file pins {f.size} for {f.key}")
    got = file_hexdigest(path, "md5", progress=progress)
    if got != f.md5:
        raise FetchError(f"checksum mismatch for {path}: md5 {got}, the lock file pins {f.md5} "
                         f"for {f.key}")
    return path


def fetch_zenodo(base_url: str, record: str | int, lock: str | os.PathLike,
                 dest: str | os.PathLike, archives_dir: str | os.PathLike | None = None,
                 patterns: Sequence[str] | None = None, retries: int = 5,
                 backoff_factor: float = 1.0, backoff_max: float = 120.0,
                 retry_after_max: float = 600.0, verify_existing: bool = False,
                 chunk: int = 1 << 20, progress: bool = True,
                 http: urllib3.PoolManager | None = None,
                 extra_files: Mapping[str, Any] | None = None) -> list[Path]:
    """Fetch (or, with ``archives_dir``, verify) a Zenodo record's files into ``dest``.

    ``extra_files`` (``{<name>: {url, md5, size}}``, see :func:`parse_extra_files`) are
    files beside the record, pinned in the same lock file (:func:`ensure_extra`) and
    fetched or verified the same way. Returns the paths in ``dest`` and writes
    ``dest/fetch.done.json`` listing them. Files already under their final name (placed
    there only after verification) are trusted unless ``verify_existing``.
    """
    extras = parse_extra_files(extra_files)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    http = http or make_pool(retries, backoff_factor, backoff_max, retry_after_max)
    listed = ensure_lock(lock, base_url, record, http)
    files = select(listed, patterns)
    if extras:
        files += ensure_extra(lock, extras, http, [f.key for f in listed], archives_dir)
    paths: list[Path] = []
    if archives_dir is not None:
        archives_dir = Path(archives_dir)
        for f in files:
            src = verify_local(f, archives_dir / f.key, progress=progress)
            target = dest / f.key
            if target.resolve() != src.resolve():
                symlink(src, target)
            paths.append(target)
    else:
        todo = []
        for f in files:
            final = dest / f.key
            if final.exists():
                if final.stat().st_size != f.size:
                    raise FetchError(f"{final} exists with {final.stat().st_size} bytes, the "
                                     f"lock file pins {f.size}; remove it to download again")
                if verify_existing:
                    verify_local(f, final, progress=progress)
            else:
                todo.append(f)
        part_sizes = [min(_part(dest, f).stat().st_size, f.size) if _part(dest, f).exists()
                      else 0 for f in todo]
        check_disk(dest, sum(f.size for f in todo) - sum(part_sizes))
        for f in todo:
            download(http, f, dest, retries=retries, backoff_factor=backoff_factor,
                     backoff_max=backoff_max, chunk=chunk, progress=progress)
        paths = [dest / f.key for f in files]
    write_json(dest / DONE_NAME, {"files": [
        {"key": f.key, "size": f.size, "md5": f.md5, "path": str(p)}
        for f, p in zip(files, paths, strict=True)]})
    return paths
