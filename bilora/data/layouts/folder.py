"""The ``folder`` layout: ``<G>/{0_real,1_fake}/...`` or ``<G>/<category>/{0_real,1_fake}/...``.

The trees the older sets ship as, without a split level: CNNDetection's ``test/`` folder
(``test/<g>/{0_real,1_fake}``, with ``progan``, ``stylegan``, ``stylegan2`` and ``cyclegan``
one category level deeper: ``test/<g>/<category>/{0_real,1_fake}``) or a user's own
``0_real/1_fake`` folders. The generator is the top folder's name; every image goes to one
``split`` (default ``test``). Each generator's reals are its own (all its categories').
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from bilora.api.layouts import Layout
from bilora.data.folders import (
    FAKE,
    REAL,
    SPLITS,
    SourceError,
    iter_image_paths,
    manifest_path,
)
from bilora.data.manifest import Entry

EXPECTED = "<G>/{0_real,1_fake} or <G>/<category>/{0_real,1_fake}"


def _subdirs(folder: Path) -> list[Path]:
    return [d for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")]


def _label_folders(gen_dir: Path) -> list[tuple[Path, int]]:
    """The ``0_real`` / ``1_fake`` folders of one generator, flat or one category deeper;
    the first folder that is neither breaks the layout."""
    subs = _subdirs(gen_dir)
    names = {d.name for d in subs}
    if names & {REAL, FAKE}:
        stray = [d for d in subs if d.name not in (REAL, FAKE)]
        if stray:
            raise SourceError(f"{stray[0]}: beside {REAL}/{FAKE}, not part of the folder layout "
                              f"({EXPECTED})")
        return [(gen_dir / n, 0 if n == REAL else 1) for n in (REAL, FAKE) if n in names]
    if not subs:
        raise SourceError(f"{gen_dir}: no {REAL} or {FAKE} folder (the folder layout expects "
                          f"{EXPECTED})")
    out = []
    for category in subs:
        inner = {d.name for d in _subdirs(category)}
        if not inner & {REAL, FAKE} or inner - {REAL, FAKE}:
            raise SourceError(f"{category}: not a {REAL}/{FAKE} pair (the folder layout "
                              f"expects {EXPECTED})")
        out += [(category / n, 0 if n == REAL else 1) for n in (REAL, FAKE) if n in inner]
    return out


def folder_entries(source: str | os.PathLike, dataset_dir: str | os.PathLike,
                   generators: Sequence[str] | None = None, generator: str | None = None,
                   split: str = "test") -> Iterator[Entry]:
    """Entries of a ``<G>/[<category>/]{0_real,1_fake}`` tree (see the module docstring);
    ``generators`` (or the one ``generator``) picks top folders, all of them by default."""
    root = Path(source)
    if not root.is_dir():
        raise SourceError(f"folder source not found: {root}")
    if split not in SPLITS:
        raise SourceError(f"split {split!r} is not one of {list(SPLITS)}")
    present = [d.name for d in _subdirs(root)]
    wanted = [generator] if generator else list(generators or present)
    missing = [g for g in wanted if g not in present]
    if missing:
        raise SourceError(f"{root / missing[0]}: not found (the folder layout expects {EXPECTED} "
                          f"under {root}; present: {', '.join(present[:12]) or 'nothing'})")
    for gen in wanted:
        count = 0
        for folder, label in _label_folders(root / gen):
            for path in iter_image_paths(folder):
                count += 1
                yield Entry(manifest_path(path, dataset_dir), label, gen, split)
        if not count:
            raise SourceError(f"{root / gen}: no images under its {REAL}/{FAKE} folders")


LAYOUT = Layout(mapper=folder_entries, test_reals="own 0_real images of each generator's folder",
                summary="<G>/[<category>/]{0_real,1_fake}, one split",
                params=("generators", "generator", "split"),
                schema={"properties": {"split": {
                    "enum": list(SPLITS),
                    "description": "folder layout: the split every image goes to (default "
                                   "test)."}}})
