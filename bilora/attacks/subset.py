"""The images attacked: a seeded subset of each test set, the same for every detector."""

from __future__ import annotations

import hashlib
import logging

import pandas as pd

log = logging.getLogger("bilora.attacks")


def _rank(sha1: str, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{sha1}".encode()).hexdigest()


def attack_subset(rows: pd.DataFrame, max_images: int, seed: int) -> pd.DataFrame:
    """Up to ``max_images`` rows of each test set (``generator``): half fakes, half reals,
    chosen by a seeded hash of each image's sha1 and its set, so neither the row order nor
    the detector changes the draw, and sets sharing one real set draw different reals from
    it (as many distinct reals as fakes where the pool allows). A set smaller than
    ``max_images`` is used whole, and a line says so."""
    out = []
    for gen, part in rows.groupby("generator", sort=False):
        n_fake = max_images // 2
        picked = []
        for label, want in ((1, n_fake), (0, max_images - n_fake)):
            side = part[part["label"].astype(int) == label]
            ranks = side["sha1"].map(lambda s, g=gen: _rank(f"{g}:{s}", seed))
            picked.append(side.loc[ranks.sort_values(kind="stable").index[:want]])
        chosen = pd.concat(picked)
        if len(chosen) < max_images:
            log.info("evaluation.attacks.max_images: test set %s has %d fakes and %d reals; "
                     "its %d images are attacked", gen, int((part["label"] == 1).sum()),
                     int((part["label"] == 0).sum()), len(chosen))
        out.append(chosen)
    if not out:
        return rows.iloc[:0].copy()
    return pd.concat(out, ignore_index=True)
