"""Safe extraction: traversal, absolute paths and symlink escapes are refused."""

from __future__ import annotations

import io
import json
import socket
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from bilora.data.archives import ExtractError, extract_archive, is_extracted


def _zip(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def _tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None,
         mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return path


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and ".bilora-extract" not in p.parts)


GOOD = {"ds/test/ADM/a.png": b"1", "ds/test/Real/r.png": b"2"}


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tar"])
def test_extracts_and_marks_done(tmp_path, kind):
    arch = (_zip(tmp_path / "a.zip", GOOD) if kind == "zip"
            else _tar(tmp_path / f"a.{kind}", GOOD, mode="w:gz" if kind == "tar.gz" else "w"))
    dest = tmp_path / "out"
    assert extract_archive(arch, dest) is True
    assert _files(dest) == sorted(GOOD)
    assert (dest / "ds/test/ADM/a.png").read_bytes() == b"1"
    assert is_extracted(arch, dest)
    marker = json.loads((dest / ".bilora-extract" / f"{arch.name}.done.json").read_text())
    assert marker["size"] == arch.stat().st_size
    assert extract_archive(arch, dest) is False  # idempotent: skipped
    # no temporary folders left beside the destination
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([arch.name, "out"])


def test_several_archives_merge_into_one_tree(tmp_path):
    a = _zip(tmp_path / "train.zip", {"ds/train/ADM/1_fake/x.png": b"x"})
    b = _zip(tmp_path / "val.zip", {"ds/val/ADM/1_fake/y.png": b"y",
                                    "ds/train/ADM/1_fake/z.png": b"z"})
    dest = tmp_path / "out"
    assert [extract_archive(x, dest) for x in (a, b)] == [True, True]
    assert _files(dest) == ["ds/train/ADM/1_fake/x.png", "ds/train/ADM/1_fake/z.png",
                            "ds/val/ADM/1_fake/y.png"]


def _assert_refused(arch: Path, tmp_path: Path, entry: str) -> None:
    dest = tmp_path / "out"
    with pytest.raises(ExtractError) as err:
        extract_archive(arch, dest)
    msg = str(err.value)
    assert str(arch) in msg and entry in msg
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "outside").exists()
    assert _files(dest) == [] if dest.exists() else True
    assert not is_extracted(arch, dest)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("maker", [_zip, _tar])
def test_path_traversal_is_refused_before_writing(tmp_path, maker):
    arch = maker(tmp_path / ("t.zip" if maker is _zip else "t.tar.gz"),
                 {"ds/ok.png": b"ok", "ds/../../evil.txt": b"pwned"})
    _assert_refused(arch, tmp_path, "ds/../../evil.txt")


@pytest.mark.parametrize("maker", [_zip, _tar])
def test_absolute_path_is_refused(tmp_path, maker):
    target = tmp_path / "evil.txt"
    arch = maker(tmp_path / ("a.zip" if maker is _zip else "a.tar.gz"),
                 {"ds/ok.png": b"ok", str(target): b"pwned"})
    _assert_refused(arch, tmp_path, str(target))


@pytest.mark.parametrize("maker", [_zip, _tar])
@pytest.mark.parametrize("link", ["../../outside", "/etc"])
def test_symlink_escape_is_refused(tmp_path, maker, link):
    arch = maker(tmp_path / ("s.zip" if maker is _zip else "s.tar.gz"),
                 {"ds/ok.png": b"ok"}, {"ds/link": link})
    _assert_refused(arch, tmp_path, "ds/link")


@pytest.mark.parametrize("maker", [_zip, _tar])
def test_chained_symlink_escape_is_refused(tmp_path, maker):
    """Each link looks inside on paper; followed on disk, ``a`` leads out."""
    kw = {} if maker is _zip else {"mode": "w"}
    arch = maker(tmp_path / ("c.zip" if maker is _zip else "c.tar"),
                 {}, {"sub/b": "..", "a": "sub/b/.."}, **kw)
    if maker is _tar:  # append a file written through the escaping link
        with tarfile.open(arch, "a") as tf:
            info = tarfile.TarInfo("a/outside")
            info.size = 1
            tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ExtractError) as err:
        extract_archive(arch, tmp_path / "out")
    assert str(arch) in str(err.value) and "'a" in str(err.value)
    assert not (tmp_path / "outside").exists()
    assert not is_extracted(arch, tmp_path / "out")


def test_inside_symlink_is_kept(tmp_path):
    arch = _tar(tmp_path / "l.tar.gz", {"ds/data/x.png": b"x"}, {"ds/alias": "data"})
    extract_archive(arch, tmp_path / "out")
    link = tmp_path / "out" / "ds" / "alias"
    assert link.is_symlink() and (link / "x.png").read_bytes() == b"x"


def test_broken_archive_leaves_no_marker_and_rerun_works(tmp_path):
    good = _zip(tmp_path / "d.zip", {f"ds/f{i}.png": bytes(1000) for i in range(20)})
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])  # a cut copy
    dest = tmp_path / "out"
    with pytest.raises(ExtractError, match=r"d\.zip"):
        extract_archive(good, dest)
    assert not is_extracted(good, dest)
    good.write_bytes(data)
    assert extract_archive(good, dest) is True
    assert len(_files(dest)) == 20


def test_stale_temp_folder_of_a_killed_run_is_removed(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = int(proc.stdout)
    stale = tmp_path / f".out.extract-{socket.gethostname()}-{dead}-abc"
    (stale / "ds").mkdir(parents=True)
    (stale / "ds" / "half.png").write_bytes(b"half")
    extract_archive(_zip(tmp_path / "e.zip", GOOD), tmp_path / "out")
    assert not stale.exists()
    assert not (tmp_path / "out" / "ds" / "half.png").exists()


def test_not_an_archive(tmp_path):
    p = tmp_path / "x.zip"
    p.write_bytes(b"hello")
    with pytest.raises(ExtractError, match=r"x\.zip is neither a zip nor a tar"):
        extract_archive(p, tmp_path / "out")
