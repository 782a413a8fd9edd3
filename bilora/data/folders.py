"""Image folders: what a layout's mapper builds on (listing, labelling, manifest paths).

A path is written relative to the dataset folder when the image lies inside it, else
absolute, so a user's own folder is used where it is and nothing is copied. Image files
are recognised by extension, case-insensitively: see ``IMAGE_EXTENSIONS``. Names
starting with ``.`` (e.g. macOS ``._x.png`` resource forks) are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from bilora.data.manifest import ManifestError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp",
                              ".tif", ".tiff", ".gif"})
SPLITS = ("train", "val", "test")
REAL, FAKE = "0_real", "1_fake"


class SourceError(ManifestError):
    """A source folder does not have the expected layout; the message names the path."""


def is_image(path: str | os.PathLike) -> bool:
    """Whether a file name has an image extension (any case) and is not hidden."""
    name = os.path.basename(path)
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def iter_image_paths(folder: str | os.PathLike) -> Iterator[str]:
    """Image files under ``folder`` (recursive, following links once), streamed one
    directory at a time: each directory's names are sorted and sub-folders entered in
    place, so the order is that of sorted paths and only one directory's listing is held
    per level. Plain strings (``folder`` joined with the names): a ``Path`` per file
    would intern every file name for good (pathlib), memory growing with the listing."""
    seen: set[str] = set()

    def walk(path: str) -> Iterator[Path]:
        real = os.path.realpath(path)
        if real in seen:
            return
        seen.add(real)
        try:
            with os.scandir(path) as it:
                items = sorted(((e.name, e.is_dir()) for e in it), key=lambda t: t[0])
        except (FileNotFoundError, NotADirectoryError):
            return
        for name, is_dir in items:
            if is_dir:
                if not name.startswith("."):
                    yield from walk(os.path.join(path, name))
            elif is_image(name):
                yield os.path.join(path, name)

    yield from walk(os.fspath(folder))


class Listing(Iterable):
    """A folder's entries as a stream that can be iterated again: each iteration lists
    the folder anew (``make()``), nothing is held between them."""

    def __init__(self, make: Callable[[], Iterator]) -> None:
        self._make = make

    def __iter__(self) -> Iterator:
        return self._make()


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive, following links once), sorted by path."""
    return [Path(p) for p in iter_image_paths(folder)]


def manifest_path(path: str | os.PathLike, dataset_dir: str | os.PathLike) -> str:
    """``path`` relative to ``dataset_dir`` (POSIX form) if inside it, else absolute."""
    path = os.path.abspath(path)
    base = os.path.abspath(dataset_dir)
    if path == base:
        return "."
    prefix = base if base.endswith(os.sep) else base + os.sep
    if path.startswith(prefix):
        return Path(path[len(prefix):]).as_posix() if os.sep != "/" else path[len(prefix):]
    return path


def parse_split_map(text: str | Mapping[str, str] | None) -> dict[str, str]:
    """``"train=train,val=test"`` (or a mapping) -> ``{"train": "train", "val": "test"}``."""
    if text is None:
        return {}
    if isinstance(text, Mapping):
        pairs = dict(text)
    else:
        pairs = {}
        for item in filter(None, (p.strip() for p in text.split(","))):
            src, sep, dst = item.partition("=")
            if not sep or not src.strip() or not dst.strip():
                raise SourceError(f"split map item {item!r} is not 'source=target'")
            pairs[src.strip()] = dst.strip()
    bad = sorted(v for v in pairs.values() if v not in SPLITS)
    if bad:
        raise SourceError(f"split map targets {bad} are not among {list(SPLITS)}")
    return pairs


def find_root(source: Path, required: Sequence[str], layout: str) -> Path:
    """``source`` itself, or its only sub-folder, holding one of the ``required`` folders."""
    if not source.is_dir():
        raise SourceError(f"{layout} source folder not found: {source}")
    if any((source / r).is_dir() for r in required):
        return source
    subs = [d for d in sorted(source.iterdir()) if d.is_dir() and not d.name.startswith(".")
            and any((d / r).is_dir() for r in required)]
    if len(subs) == 1:
        return subs[0]
    raise SourceError(f"{source} does not look like a {layout} folder: none of "
                      f"{list(required)} in it" + (f" (candidates: {subs})" if subs else ""))


def labelled(folder: Path) -> list[tuple[Path, int]]:
    """Images under ``folder`` with the label of their nearest 0_real/1_fake ancestor."""
    out = []
    for img in list_images(folder):
        for part in reversed(img.relative_to(folder).parts[:-1]):
            if part in (REAL, FAKE):
                out.append((img, 0 if part == REAL else 1))
                break
    return out
