"""The ``synthbuster`` layout: Synthbuster (Bammey 2023) and its RAISE-1k reals, test only.

``synthbuster/<generator>/r<id>t.png`` for nine generators (Zenodo record 10066460,
``synthbuster.zip``) and ``real_RAISE_1k/r<id>t.png`` for the 1000 RAISE reals the fakes'
prompts were written from (a separate download, ``real_RAISE_1k.zip``: an ``extra_files``
entry of the dataset section). Both zips extract under the dataset's ``raw/``, so the reals
are found beside the ``synthbuster`` folder (or inside it). Every image goes to the one
split ``test``; each generator's test set pairs its fakes with all 1000 reals (listed once
per generator: stored once, hashed once). PNG on both sides.

A dataset section for it (the reals' size is learned with a HEAD request and pinned in the
lock file beside the record's listing)::

    synthbuster:
      source: zenodo
      layout: synthbuster
      zenodo: {base_url: "https://zenodo.org", record: "10066460", files: [synthbuster.zip],
               retries: 5}
      extra_files:
        real_RAISE_1k.zip:
          url: "https://www.grip.unina.it/download/prog/DMimageDetection/real_RAISE_1k.zip"
          md5: a6aad7728226218f22a28b9c9aacaa2c
          size: null
      archives_dir: null
      root_name: synthbuster
      splits: [test]
      generators: [dalle2, dalle3, firefly, glide, midjourney-v5, stable-diffusion-1-3,
                   stable-diffusion-1-4, stable-diffusion-2, stable-diffusion-xl]
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from bilora.api.layouts import Layout
from bilora.data.folders import SourceError, manifest_path
from bilora.data.manifest import Entry

#: The nine generator folders of ``synthbuster.zip``.
GENERATORS = ("dalle2", "dalle3", "firefly", "glide", "midjourney-v5", "stable-diffusion-1-3",
              "stable-diffusion-1-4", "stable-diffusion-2", "stable-diffusion-xl")
#: The folder of the RAISE-1k reals (``real_RAISE_1k.zip``).
REAL_DIR = "real_RAISE_1k"
ROOT = "synthbuster"
EXPECTED = (f"{ROOT}/<generator>/r<id>t.png and {REAL_DIR}/r<id>t.png beside or inside "
            f"{ROOT}/")
_NAME = re.compile(r"^r[0-9A-Za-z]+t\.png$")


def _images(folder: Path) -> list[Path]:
    """The ``r<id>t.png`` files of one flat folder (hidden names skipped); anything else in
    it breaks the layout."""
    out = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if not p.is_file() or not _NAME.match(p.name):
            raise SourceError(f"{p}: not an r<id>t.png image (the synthbuster layout expects "
                              f"{EXPECTED})")
        out.append(p)
    if not out:
        raise SourceError(f"{folder}: no r<id>t.png images (the synthbuster layout expects "
                          f"{EXPECTED})")
    return out


def _real_dir(root: Path) -> Path:
    """``real_RAISE_1k`` beside ``root`` or inside it."""
    for cand in (root.parent / REAL_DIR, root / REAL_DIR):
        if cand.is_dir():
            return cand
    raise SourceError(f"{root.parent / REAL_DIR}: not found, nor {root / REAL_DIR} (the "
                      f"synthbuster layout expects {EXPECTED}; extract real_RAISE_1k.zip there)")


def synthbuster_entries(source: str | os.PathLike, dataset_dir: str | os.PathLike,
                        generators: Sequence[str] | None = None,
                        splits: Sequence[str] | None = None) -> list[Entry]:
    """Entries of Synthbuster: ``source`` is the ``synthbuster`` folder (or a folder holding
    it); ``generators`` picks generator folders (default the nine), ``splits`` may only be
    ``[test]``. The RAISE reals are listed once per generator."""
    root = Path(source)
    if not root.is_dir():
        raise SourceError(f"synthbuster source folder not found: {root}")
    if root.name != ROOT and (root / ROOT).is_dir():
        root = root / ROOT
    if splits is not None and list(splits) != ["test"]:
        raise SourceError(f"splits {list(splits)}: the synthbuster layout has one split, test")
    wanted = list(generators or GENERATORS)
    for gen in wanted:
        if not (root / gen).is_dir():
            present = sorted(d.name for d in root.iterdir() if d.is_dir()
                             and not d.name.startswith("."))
            raise SourceError(f"{root / gen}: not found (the synthbuster layout expects "
                              f"{EXPECTED}; present: {', '.join(present) or 'nothing'})")
    reals = _images(_real_dir(root))
    real_paths = [manifest_path(p, dataset_dir) for p in reals]
    real_ids = {p.name for p in reals}
    entries: list[Entry] = []
    for gen in wanted:
        fakes = _images(root / gen)
        unmatched = [p.name for p in fakes if p.name not in real_ids]
        if unmatched:
            logging.getLogger("bilora.data").warning(
                "synthbuster %s: %d of %d fakes have no real of the same id (first: %s)",
                gen, len(unmatched), len(fakes), unmatched[0])
        entries.extend(Entry(p, 0, gen, "test") for p in real_paths)
        entries.extend(Entry(manifest_path(p, dataset_dir), 1, gen, "test") for p in fakes)
    return entries


LAYOUT = Layout(
    mapper=synthbuster_entries,
    test_reals="the 1000 RAISE-1k reals, shared by the nine Synthbuster generators (PNG)",
    summary="Synthbuster: synthbuster/<generator>/r<id>t.png with real_RAISE_1k/ beside it, "
            "test only",
    params=("generators", "splits"),
    # constraints on the section's own keys (under allOf: not keys the layout brings);
    # splits given (a zenodo section's default, [train, val, test], is Ricker's)
    schema={"required": ["splits"], "allOf": [{"properties": {
        "generators": {"items": {"enum": list(GENERATORS)}},
        "splits": {"type": ["array", "null"], "items": {"const": "test"}},
    }}]},
    licence="Synthbuster: CC BY-NC-SA 4.0 per its Zenodo record (10066460); RAISE-1k reals: "
            "non-commercial research use only",
)
