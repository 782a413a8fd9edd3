"""Loading images listed in manifests as uint8 tensors, optionally degraded."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from bilora.data.manifest import read_manifest, resolve_path


def load_rows(manifests: Sequence[str | os.PathLike], split: str,
              generators: Sequence[str]) -> pd.DataFrame:
    """Rows of ``split`` for ``generators`` from several manifests, with absolute paths.

    Fails naming the generators that no manifest holds.
    """
    frames = []
    for m in manifests:
        df = read_manifest(m)
        df = df[(df["split"] == split) & df["generator"].isin(list(generators))].copy()
        df["abspath"] = [str(resolve_path(Path(m).parent, p)) for p in df["path"]]
        frames.append(df)
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    missing = sorted(set(generators) - set(rows.get("generator", [])))
    if missing:
        raise KeyError(f"no {split} images for generator(s) {missing} in manifests "
                       f"{[str(m) for m in manifests]}")
    return rows


class ImageTable(torch.utils.data.Dataset):
    """Images of a table (``abspath``, ``label``, ``sha1``) as (uint8 CHW tensor, label).

    ``size`` resizes to a square (bicubic, after any degradation); ``perturb`` is a
    (kind, level, seed) triple applied to every image.
    """

    def __init__(self, rows: pd.DataFrame, size: int | None,
                 perturb: tuple[str, object, int] | None = None):
        self.paths = rows["abspath"].tolist()
        self.labels = rows["label"].astype(int).tolist()
        self.sha1 = rows["sha1"].tolist()
        self.size = size
        self.perturb = perturb

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[i]) as im:
            img = im.convert("RGB")
        if self.perturb is not None:
            from bilora.data.perturbations import apply

            kind, level, seed = self.perturb
            img = apply(img, kind, level, seed, self.sha1[i])
        if self.size and img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.BICUBIC)
        arr = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
        return arr, self.labels[i]
