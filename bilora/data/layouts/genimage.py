"""The ``genimage`` layout: ``<subset>/{train,val}/{ai,nature}/...`` (GenImage: SD v1.4,
GLIDE). ``ai`` is fake, ``nature`` real; ``split_map`` renames splits (GenImage ``val`` ->
``test``, the default)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from bilora.api.layouts import Layout
from bilora.data.folders import SourceError, find_root, list_images, manifest_path
from bilora.data.manifest import Entry


def genimage_entries(source: str | os.PathLike, dataset_dir: str | os.PathLike, generator: str,
                     split_map: Mapping[str, str] | None = None) -> list[Entry]:
    """Entries of a GenImage subset: ``{train,val}/{ai,nature}``; ``ai`` fake, ``nature`` real."""
    split_map = dict(split_map) if split_map else {"train": "train", "val": "test"}
    root = find_root(Path(source), list(split_map), "genimage")
    entries: list[Entry] = []
    for src_split, split in split_map.items():
        for sub, label in (("nature", 0), ("ai", 1)):
            folder = root / src_split / sub
            if not folder.is_dir():
                raise SourceError(f"GenImage folder missing: {folder} (expected "
                                  f"{{train,val}}/{{ai,nature}} under {root})")
            images = list_images(folder)
            if not images:
                raise SourceError(f"no images in {folder}")
            entries.extend(Entry(manifest_path(p, dataset_dir), label, generator, split)
                           for p in images)
    return entries


LAYOUT = Layout(mapper=genimage_entries, test_reals="own GenImage nature (ImageNet) reals",
                summary="<split>/{nature,ai}", params=("generator", "split_map"),
                required=("generator",))
