"""The ``canonical`` layout: ``<split>/<generator>/.../{0_real,1_fake}/...``.

CNNDetection's test sets and UniversalFakeDetect; or, for one generator given by name,
``<split>/.../{0_real,1_fake}/...`` (CNNDetection's ProGAN train set, whose
``<split>/<class>/`` level is flattened). The label is the nearest ``0_real`` /
``1_fake`` folder above the image; images under neither are not listed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from bilora.api.layouts import Layout
from bilora.data.folders import FAKE, REAL, SPLITS, SourceError, find_root, labelled, manifest_path
from bilora.data.manifest import Entry


def canonical_entries(source: str | os.PathLike, dataset_dir: str | os.PathLike,
                      generator: str | None = None,
                      split_map: Mapping[str, str] | None = None,
                      generators: Sequence[str] | None = None) -> list[Entry]:
    """Entries of a ``<split>/<generator>/{0_real,1_fake}`` (or one generator's
    ``<split>/{0_real,1_fake}``) folder; see the module docstring."""
    split_map = dict(split_map) if split_map else {s: s for s in SPLITS}
    root = find_root(Path(source), list(split_map), "canonical")
    entries: list[Entry] = []
    found: set[str] = set()
    for src_split, split in split_map.items():
        sdir = root / src_split
        if not sdir.is_dir():
            continue
        if generator is not None:
            base = sdir / generator if (sdir / generator).is_dir() else sdir
            groups = [(generator, base)]
        else:
            if (sdir / REAL).is_dir() or (sdir / FAKE).is_dir():
                raise SourceError(f"{sdir} holds {REAL}/{FAKE} directly: give the generator "
                                  "name (--generator) for this single-generator layout")
            groups = [(d.name, d) for d in sorted(sdir.iterdir())
                      if d.is_dir() and not d.name.startswith(".")
                      and d.name not in (REAL, FAKE)
                      and (not generators or d.name in generators)]
        for gen, folder in groups:
            items = labelled(folder)
            if items:
                found.add(gen)
            entries.extend(Entry(manifest_path(p, dataset_dir), label, gen, split)
                           for p, label in items)
    if not entries:
        raise SourceError(f"no images under {{0_real,1_fake}} folders of the splits "
                          f"{list(split_map)} in {root}")
    wanted = [generator] if generator else list(generators or [])
    missing = [g for g in wanted if g not in found]
    if missing:
        raise SourceError(f"generators {missing} have no images in {root} (splits "
                          f"{list(split_map)})")
    return entries


LAYOUT = Layout(mapper=canonical_entries, test_reals="own reals of its folder",
                summary="<split>/[<G>/]{0_real,1_fake}",
                params=("generator", "split_map", "generators"))
