"""Atomic writes, file hashes and derived seeds: nothing half-written under a final name.

Every file or folder the harness writes under a name another step reads goes through
:func:`atomic_path` (or the helpers built on it): it is written under a temporary
sibling name and renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; rename it onto ``path`` on success.

    Works for a file, a folder or a symlink. On an exception the temporary is removed and
    an existing ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if tmp.is_dir() and not tmp.is_symlink() and path.exists():
        _remove(path)
    os.replace(tmp, path)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def symlink(target: str | os.PathLike, link: str | os.PathLike) -> None:
    """Make (or replace) ``link`` pointing at ``target``'s absolute path, atomically."""
    with atomic_path(link) as tmp:
        os.symlink(Path(target).resolve(), tmp)


class _CountingReader(io.RawIOBase):
    """A binary reader that reports every chunk read to ``update`` (a progress bar)."""

    def __init__(self, fh: io.BufferedReader, update) -> None:
        self._fh, self._update = fh, update

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._fh.readinto(buffer)
        self._update(n or 0)
        return n


def file_hexdigest(path: str | os.PathLike | bytes, algorithm: str = "sha1",
                   progress: bool = False) -> str:
    """Hex digest of a file's bytes (``hashlib.file_digest``), with an optional progress bar."""
    if not progress:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, algorithm).hexdigest()
    from tqdm import tqdm

    name = os.path.basename(os.fsdecode(path))
    with open(path, "rb") as fh, tqdm(total=os.path.getsize(path), unit="B", unit_scale=True,
                                      desc=f"{algorithm} {name}") as bar:
        return hashlib.file_digest(_CountingReader(fh, bar.update), algorithm).hexdigest()


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (seed, epoch, image sha1, ...), stable across runs."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF
