"""Safe, restartable extraction of zip and tar archives.

Every member is checked before anything is written: an entry whose path is absolute,
holds a ``..`` component, or is a link whose target leaves the destination is refused
with an :class:`ExtractError` naming the archive and the entry. Device files and fifos
are refused too. As a second line of defence, each write is checked against the real
(symlink-resolved) location of its folder, so nothing can land outside.

An archive is unpacked into a temporary folder beside the destination (same file
system), its tree is then moved into the destination with ``os.replace`` (merging with
what other archives put there), and only then is a completion marker written under
``<dest>/.bilora-extract/``. A killed extraction leaves no marker, so the next run
extracts that archive again; one with a matching marker is skipped.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import shutil
import socket
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bilora.atomic import write_json
from bilora.errors import DataError

MARKER_DIR = ".bilora-extract"


class ExtractError(DataError):
    """An archive could not be extracted safely."""


@dataclass(frozen=True)
class _Member:
    name: str
    kind: str  # "file", "dir", "symlink", "hardlink"
    link: str = ""


def archive_kind(path: str | os.PathLike) -> str:
    """``"zip"`` or ``"tar"`` (plain or compressed), from the file's content."""
    path = Path(path)
    if not path.is_file():
        raise ExtractError(f"archive not found: {path}")
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    raise ExtractError(f"{path} is neither a zip nor a tar archive")


def _zip_members(zf: zipfile.ZipFile) -> list[_Member]:
    out = []
    for info in zf.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            out.append(_Member(info.filename, "symlink", zf.read(info).decode("utf-8")))
        elif info.is_dir():
            out.append(_Member(info.filename, "dir"))
        else:
            out.append(_Member(info.filename, "file"))
    return out


def _tar_members(tf: tarfile.TarFile, archive: Path) -> list[_Member]:
    out = []
    for m in tf.getmembers():
        if m.issym():
            out.append(_Member(m.name, "symlink", m.linkname))
        elif m.islnk():
            out.append(_Member(m.name, "hardlink", m.linkname))
        elif m.isdir():
            out.append(_Member(m.name, "dir"))
        elif m.isfile():
            out.append(_Member(m.name, "file"))
        else:
            raise ExtractError(f"{archive}: entry {m.name!r} is a device file or fifo; refused")
    return out


def _is_absolute(name: str) -> bool:
    return name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":")


def _check_members(archive: Path, members: Iterable[_Member]) -> None:
    """Refuse any member that would land, or point, outside the destination."""
    for m in members:
        name = m.name.replace("\\", "/")
        if not name or _is_absolute(name):
            raise ExtractError(f"{archive}: entry {m.name!r} has an absolute path; refused")
        if ".." in name.split("/"):
            raise ExtractError(
                f"{archive}: entry {m.name!r} would land outside the destination (..); refused")
        if m.kind in ("symlink", "hardlink"):
            link = m.link.replace("\\", "/")
            if not link or _is_absolute(link):
                raise ExtractError(
                    f"{archive}: link entry {m.name!r} -> {m.link!r} is absolute; refused")
            # symlinks resolve from their own folder, tar hard links from the archive root
            base = posixpath.dirname(name.rstrip("/")) if m.kind == "symlink" else ""
            target = posixpath.normpath(posixpath.join(base, link))
            if target == ".." or target.startswith("../"):
                raise ExtractError(
                    f"{archive}: link entry {m.name!r} -> {m.link!r} points outside the "
                    f"destination; refused")


def _inside(root_real: str, path: str) -> bool:
    return os.path.commonpath([root_real, os.path.realpath(path)]) == root_real


def _extract_zip(zf: zipfile.ZipFile, archive: Path, members: Sequence[_Member],
                 root: Path) -> None:
    root_real = os.path.realpath(root)
    for info, m in zip(zf.infolist(), members, strict=True):
        target = root / m.name.replace("\\", "/")
        if not _inside(root_real, target.parent):
            raise ExtractError(f"{archive}: entry {m.name!r} resolves outside the destination "
                               "through a link; refused")
        if m.kind == "dir":
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if not _inside(root_real, target.parent):
            raise ExtractError(f"{archive}: entry {m.name!r} resolves outside the destination "
                               "through a link; refused")
        if m.kind == "symlink":
            os.symlink(m.link, target)
            if not _inside(root_real, target):
                os.unlink(target)
                raise ExtractError(f"{archive}: link entry {m.name!r} -> {m.link!r} resolves "
                                   "outside the destination; refused")
            continue
        with zf.open(info) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)


def _extract_tar(tf: tarfile.TarFile, archive: Path, root: Path) -> None:
    try:
        if hasattr(tarfile, "data_filter"):
            tf.extractall(root, filter="data")
        else:  # Python without extraction filters: members were already checked
            tf.extractall(root)
    except tarfile.FilterError as exc:
        member = getattr(exc, "tarinfo", None)
        name = member.name if member is not None else "?"
        raise ExtractError(f"{archive}: entry {name!r} refused: {exc}") from exc


def _merge_into(src: Path, dest: Path) -> None:
    """Move the tree ``src`` into ``dest``, replacing files, merging folders."""
    dest.mkdir(parents=True, exist_ok=True)
    with os.scandir(src) as it:
        for entry in it:
            target = dest / entry.name
            if entry.is_dir(follow_symlinks=False) and target.is_dir() and not target.is_symlink():
                _merge_into(Path(entry.path), target)
            else:
                if target.is_dir() and not target.is_symlink():
                    raise ExtractError(f"cannot replace the folder {target} with a file")
                try:
                    os.replace(entry.path, target)
                except OSError as exc:
                    if exc.errno != errno.EXDEV:  # dest is a mount point: copy instead
                        raise
                    shutil.move(entry.path, target)


def _temp_prefix(dest: Path) -> str:
    return f".{dest.name}.extract-{socket.gethostname()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(dest: Path) -> None:
    """Remove temporary folders left by killed extractions on this host."""
    prefix = _temp_prefix(dest)
    for tmp in dest.parent.glob(prefix + "*"):
        pid = tmp.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _marker_path(archive: Path, dest: Path) -> Path:
    return dest / MARKER_DIR / f"{archive.name}.done.json"


def _fingerprint(archive: Path) -> dict:
    st = archive.stat()
    return {"archive": str(archive.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def is_extracted(archive: str | os.PathLike, dest: str | os.PathLike) -> bool:
    """Whether ``archive`` was fully extracted into ``dest`` (marker present and matching)."""
    archive, dest = Path(archive), Path(dest)
    marker = _marker_path(archive, dest)
    try:
        done = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    fp = _fingerprint(archive)
    return done.get("size") == fp["size"] and done.get("mtime_ns") == fp["mtime_ns"]


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike, force: bool = False
                    ) -> bool:
    """Safely extract one zip or tar(.gz/.bz2/.xz) archive into ``dest``.

    Returns False when a matching completion marker shows it was already extracted
    (and ``force`` is False), True after extracting it.
    """
    archive, dest = Path(archive), Path(dest)
    if not force and is_extracted(archive, dest):
        return False
    kind = archive_kind(archive)
    dest.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_temp_prefix(dest)}{os.getpid()}-", dir=dest.parent))
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                members = _zip_members(zf)
                _check_members(archive, members)
                _extract_zip(zf, archive, members, tmp)
        else:
            with tarfile.open(archive) as tf:
                _check_members(archive, _tar_members(tf, archive))
                _extract_tar(tf, archive, tmp)
        _merge_into(tmp, dest)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise ExtractError(f"could not extract {archive} into {dest}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_json(_marker_path(archive, dest), _fingerprint(archive))
    return True
