"""Zenodo fetch against a real local HTTP server with injected faults (no transport mocks)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import pytest

from bilora.data.fetch import (
    FetchError,
    fetch_zenodo,
    make_pool,
    read_lock,
)
from tests.zenodo_server import RECORD, Zenodo, serve


@pytest.fixture()
def zenodo():
    with serve() as state:
        yield state


def _fetch(state: Zenodo, tmp_path: Path, **kw):
    kw.setdefault("retries", 3)
    kw.setdefault("backoff_factor", 0)
    kw.setdefault("progress", False)
    return fetch_zenodo(state.base, RECORD, tmp_path / "zenodo.lock.json", tmp_path / "dl",
                        chunk=kw.pop("chunk", 4096), **kw)


def _payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(n))


def _no_final(tmp_path: Path, key: str) -> None:
    assert not (tmp_path / "dl" / key).exists()


def test_plain_download_pins_lock_and_verifies(zenodo, tmp_path):
    zenodo.add("test.zip", _payload(50_000))
    zenodo.add("train.zip", _payload(20_000, 1))
    paths = _fetch(zenodo, tmp_path)
    assert [p.name for p in paths] == ["test.zip", "train.zip"]
    assert paths[0].read_bytes() == zenodo.files["test.zip"]
    locked = read_lock(tmp_path / "zenodo.lock.json", zenodo.base, RECORD)
    assert {f.key: f.size for f in locked} == {"test.zip": 50_000, "train.zip": 20_000}
    assert locked[0].md5 == hashlib.md5(zenodo.files["test.zip"]).hexdigest()
    done = json.loads((tmp_path / "dl" / "fetch.done.json").read_text())
    assert [f["key"] for f in done["files"]] == ["test.zip", "train.zip"]
    assert not list((tmp_path / "dl").glob("*.part"))


def test_existing_lock_is_used_and_listing_not_read(zenodo, tmp_path):
    zenodo.add("a.zip", _payload(1000))
    _fetch(zenodo, tmp_path)
    assert sum(1 for r in zenodo.log if r[1] == f"/api/records/{RECORD}") == 1
    zenodo.listing_body = b"this would break a listing read"
    (tmp_path / "dl" / "a.zip").unlink()
    _fetch(zenodo, tmp_path)
    assert sum(1 for r in zenodo.log if r[1] == f"/api/records/{RECORD}") == 1
    assert (tmp_path / "dl" / "a.zip").read_bytes() == zenodo.files["a.zip"]


def test_cut_stream_resumes_with_range_in_same_run(zenodo, tmp_path):
    data = _payload(100_000)
    zenodo.add("test.zip", data, "cut")
    (path,) = _fetch(zenodo, tmp_path)
    assert path.read_bytes() == data
    reqs = zenodo.requests_for("test.zip")
    assert len(reqs) == 2
    assert "Range" not in reqs[0][2]
    assert reqs[1][2]["Range"] == "bytes=50000-"


def test_cut_stream_resumes_on_next_run(zenodo, tmp_path):
    data = _payload(100_000)
    zenodo.add("test.zip", data, "cut")
    with pytest.raises(FetchError, match=r"test\.zip.*was cut.*run again to resume"):
        _fetch(zenodo, tmp_path, retries=0)
    _no_final(tmp_path, "test.zip")
    part = tmp_path / "dl" / "test.zip.part"
    assert part.stat().st_size == 50_000
    (path,) = _fetch(zenodo, tmp_path, retries=0)
    assert path.read_bytes() == data
    assert zenodo.requests_for("test.zip")[1][2]["Range"] == "bytes=50000-"
    assert not part.exists()


def test_server_ignoring_range_restarts_cleanly(zenodo, tmp_path):
    data = _payload(30_000)
    zenodo.add("val.zip", data, "ignore-range")
    (tmp_path / "dl").mkdir()
    # a stale partial file that does not match the data: appending to it would fail the md5
    (tmp_path / "dl" / "val.zip.part").write_bytes(b"\xff" * 12_345)
    (path,) = _fetch(zenodo, tmp_path)
    assert path.read_bytes() == data
    (req,) = zenodo.requests_for("val.zip")
    assert req[2]["Range"] == "bytes=12345-"


def test_503_then_success(zenodo, tmp_path):
    data = _payload(5000)
    zenodo.add("test.zip", data, "503", "503")
    (path,) = _fetch(zenodo, tmp_path)
    assert path.read_bytes() == data
    assert len(zenodo.requests_for("test.zip")) == 3


def test_503_forever_is_a_clear_error(zenodo, tmp_path):
    zenodo.add("test.zip", _payload(5000), *["503"] * 10)
    with pytest.raises(FetchError) as err:
        _fetch(zenodo, tmp_path, retries=2)
    assert "test.zip" in str(err.value) and f"{zenodo.base}/api/records" in str(err.value)
    assert "503" in str(err.value)
    _no_final(tmp_path, "test.zip")
    assert len(zenodo.requests_for("test.zip")) == 3


def test_429_honours_retry_after(zenodo, tmp_path):
    data = _payload(5000)
    zenodo.add("test.zip", data, "429")
    (path,) = _fetch(zenodo, tmp_path)
    assert path.read_bytes() == data
    first, second = zenodo.requests_for("test.zip")
    assert second[0] - first[0] >= 0.95  # Retry-After: 1, with backoff_factor 0


def test_wrong_md5_is_an_error_and_leaves_nothing(zenodo, tmp_path):
    zenodo.add("test.zip", _payload(8000))
    zenodo.md5_override["test.zip"] = "0" * 32
    with pytest.raises(FetchError) as err:
        _fetch(zenodo, tmp_path)
    msg = str(err.value)
    assert "checksum mismatch for test.zip" in msg and zenodo.base in msg and "0" * 32 in msg
    _no_final(tmp_path, "test.zip")
    assert not (tmp_path / "dl" / "test.zip.part").exists()


def test_404_names_file_and_url(zenodo, tmp_path):
    zenodo.add("test.zip", _payload(100), "404")
    with pytest.raises(FetchError) as err:
        _fetch(zenodo, tmp_path)
    msg = str(err.value)
    assert "test.zip" in msg and "404" in msg
    assert f"{zenodo.base}/api/records/{RECORD}/files/test.zip/content" in msg
    _no_final(tmp_path, "test.zip")


@pytest.mark.parametrize("body, fault", [
    (b"<html>maintenance</html>", "not JSON"),
    (json.dumps({"id": 1}).encode(), "no 'files' list"),
    (json.dumps({"files": [{"key": "a.zip", "size": 3, "checksum": "sha256:ab",
                            "links": {"self": "http://x/a"}}]}).encode(), "'checksum'"),
    (json.dumps({"files": [{"key": "a.zip", "size": "3", "checksum": "md5:" + "a" * 32,
                            "links": {"self": "http://x/a"}}]}).encode(), "'size'"),
    (json.dumps({"files": [{"key": "../evil", "size": 3, "checksum": "md5:" + "a" * 32,
                            "links": {"self": "http://x/a"}}]}).encode(), "plain file name"),
    (json.dumps({"files": [{"key": "a.zip", "size": 3, "checksum": "md5:" + "a" * 32,
                            "links": {}}]}).encode(), "'links.self'"),
])
def test_malformed_listing_is_a_clear_error(zenodo, tmp_path, body, fault):
    zenodo.listing_body = body
    with pytest.raises(FetchError) as err:
        _fetch(zenodo, tmp_path)
    msg = str(err.value)
    assert f"{zenodo.base}/api/records/{RECORD}" in msg and fault in msg
    assert not (tmp_path / "zenodo.lock.json").exists()


def test_no_network_and_no_lock_says_so(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FetchError) as err:
        fetch_zenodo(f"http://127.0.0.1:{port}", RECORD, tmp_path / "lock.json",
                     tmp_path / "dl", retries=0, backoff_factor=0, progress=False)
    msg = str(err.value)
    assert f"http://127.0.0.1:{port}/api/records/{RECORD}" in msg
    assert "no lock file" in msg and "Without network" in msg


def test_archives_dir_verifies_and_downloads_nothing(zenodo, tmp_path):
    zenodo.add("test.zip", _payload(3000))
    zenodo.add("train.zip", _payload(2000, 3))
    _fetch(zenodo, tmp_path, patterns=["test.*"])  # pins the lock (all files)
    have = tmp_path / "mine"
    have.mkdir()
    for k, v in zenodo.files.items():
        (have / k).write_bytes(v)
    n_before = len(zenodo.log)
    # the same lock, used where Zenodo cannot be reached (port 9: nothing listens)
    lock2 = json.loads((tmp_path / "zenodo.lock.json").read_text())
    lock2["base_url"] = "http://127.0.0.1:9"
    (tmp_path / "lock2.json").write_text(json.dumps(lock2))
    paths = fetch_zenodo("http://127.0.0.1:9", RECORD, tmp_path / "lock2.json",
                         tmp_path / "dl2", archives_dir=have, progress=False, retries=0)
    assert len(zenodo.log) == n_before  # nothing downloaded, nothing listed
    assert [p.name for p in paths] == ["test.zip", "train.zip"]
    assert paths[0].is_symlink() and paths[0].read_bytes() == zenodo.files["test.zip"]
    # a corrupted local copy is named
    (have / "train.zip").write_bytes(b"x" * 2000)
    with pytest.raises(FetchError, match=r"checksum mismatch for .*mine/train\.zip"):
        fetch_zenodo("http://127.0.0.1:9", RECORD, tmp_path / "lock2.json", tmp_path / "dl2",
                     archives_dir=have, progress=False, retries=0)
    os.remove(have / "train.zip")
    with pytest.raises(FetchError, match=r"train\.zip not found at .*mine/train\.zip"):
        fetch_zenodo("http://127.0.0.1:9", RECORD, tmp_path / "lock2.json", tmp_path / "dl2",
                     archives_dir=have, progress=False, retries=0)


def test_patterns_select_and_unknown_pattern_is_an_error(zenodo, tmp_path):
    zenodo.add("test.zip", _payload(300))
    zenodo.add("train.zip", _payload(200))
    paths = _fetch(zenodo, tmp_path, patterns=["tr*"])
    assert [p.name for p in paths] == ["train.zip"]
    assert not (tmp_path / "dl" / "test.zip").exists()
    with pytest.raises(FetchError, match=r"'val\*' matches no file.*test\.zip, train\.zip"):
        _fetch(zenodo, tmp_path, patterns=["val*"])


def test_disk_check_names_bytes_needed_and_free(zenodo, tmp_path):
    zenodo.add("huge.zip", b"tiny")
    lock = tmp_path / "zenodo.lock.json"
    # pin a lock claiming an enormous size, so the check fails before any download
    zenodo.listing_body = json.dumps({"files": [
        {"key": "huge.zip", "size": 1 << 60, "checksum": "md5:" + "a" * 32,
         "links": {"self": f"{zenodo.base}/api/records/{RECORD}/files/huge.zip/content"}}
    ]}).encode()
    with pytest.raises(FetchError, match=rf"free disk space in .*dl: {1 << 60} bytes needed, "
                                         r"\d+ bytes free"):
        _fetch(zenodo, tmp_path)
    assert lock.exists() and not zenodo.requests_for("huge.zip")


def test_pool_uses_urllib3_retry_policy():
    retry = make_pool(retries=4, backoff_factor=0.5).connection_pool_kw["retries"]
    assert retry.status == 4 and retry.backoff_factor == 0.5
    assert {429, 503} <= set(retry.status_forcelist) and retry.respect_retry_after_header


def test_lock_for_another_record_is_refused(zenodo, tmp_path):
    zenodo.add("a.zip", _payload(100))
    _fetch(zenodo, tmp_path)
    with pytest.raises(FetchError, match=r"zenodo\.lock\.json pins record 7528113, not 42"):
        fetch_zenodo(zenodo.base, "42", tmp_path / "zenodo.lock.json", tmp_path / "dl",
                     progress=False)
