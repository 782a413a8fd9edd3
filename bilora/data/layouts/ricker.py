"""The ``ricker`` layout: Ricker et al.'s extracted archives plus the rebuilt real halves.

``test/<G>/...`` fakes and one shared ``test/Real/`` listed once per test generator (same
path in every row: stored once, hashed once); ``{train,val}/<G>/1_fake`` from the
archives and ``{train,val}/<G>/0_real`` from the LSUN rebuild.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from bilora.api.layouts import Layout
from bilora.data.folders import (
    FAKE,
    REAL,
    SPLITS,
    SourceError,
    find_root,
    list_images,
    manifest_path,
)
from bilora.data.integrity import RICKER_DIGESTS
from bilora.data.manifest import Entry


def ricker_entries(source: str | os.PathLike, dataset_dir: str | os.PathLike,
                   generators: Sequence[str], splits: Sequence[str] = SPLITS,
                   real_dir: str = "Real") -> list[Entry]:
    """Entries of Ricker et al.'s set (extracted archives plus the rebuilt real halves).

    ``source`` is ``diffusion_model_deepfakes_lsun_bedroom`` or a folder holding only it.
    The test split's ``test/<real_dir>`` images are listed once per generator.
    """
    root = find_root(Path(source), list(splits), "ricker")
    entries: list[Entry] = []
    for split in splits:
        if split not in SPLITS:
            raise SourceError(f"unknown split {split!r}; expected some of {list(SPLITS)}")
        sdir = root / split
        if not sdir.is_dir():
            raise SourceError(f"Ricker split folder missing: {sdir} (extract its archive)")
        if split == "test":
            real = list_images(sdir / real_dir)
            if not real:
                raise SourceError(f"no real test images in {sdir / real_dir}")
            real_paths = [manifest_path(p, dataset_dir) for p in real]
            for gen in generators:
                fakes = list_images(sdir / gen)
                if not fakes:
                    raise SourceError(f"no test images for {gen} in {sdir / gen}; present: "
                                      f"{sorted(d.name for d in sdir.iterdir() if d.is_dir())}")
                entries.extend(Entry(p, 0, gen, split) for p in real_paths)
                entries.extend(Entry(manifest_path(p, dataset_dir), 1, gen, split)
                               for p in fakes)
            continue
        for gen in generators:
            for sub, label in ((REAL, 0), (FAKE, 1)):
                folder = sdir / gen / sub
                images = list_images(folder) if folder.is_dir() else []
                if not images:
                    hint = (" (rebuild it from the LSUN LMDB: bilora rebuild-lsun-real)"
                            if sub == REAL else " (extract the archive)")
                    raise SourceError(f"no images in {folder}{hint}")
                entries.extend(Entry(manifest_path(p, dataset_dir), label, gen, split)
                               for p in images)
    return entries


LAYOUT = Layout(mapper=ricker_entries,
                test_reals="shared LSUN Bedroom test reals (Ricker et al.)",
                summary="Ricker et al.'s extracted folders", params=("generators", "splits"),
                required=("generators",), digests=RICKER_DIGESTS)
