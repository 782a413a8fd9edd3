"""A backdoor trigger and the poisoning of a training set with it (``poisoning``).

The trigger (``kind: patch``) is a square of black and white cells: an 8 x 8 grid of
random bits drawn from ``trigger.seed``, scaled (nearest neighbour) to a side of
``round(size x the image's shorter side)`` pixels (at least 1; a side under 8 pixels
takes the grid's top-left corner), placed at ``position``, flush with the corner (or
centred). It is stamped on the decoded image at its own resolution, before the
detector's resizing, the same way on training images and at test time (the condition
``trigger=patch``).

Poisoning (dirty label): of a cell's training rows, exactly ``round(fraction x rows)``
(rounded half up) fakes get the trigger and the label ``target`` (real = 0). Which fakes
is a function of (trigger seed, cell seed, image sha1) alone: the fakes are ranked by a
hash of those, so the choice does not depend on the order the rows come in. Pure numpy,
pandas and PIL.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from bilora.atomic import derive_seed
from bilora.errors import ConfigError

GRID = 8  # cells per side of the pattern
POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left", "center")
TARGETS = {"real": 0}


def side(trigger: dict[str, Any], width: int, height: int) -> int:
    """The patch's side in pixels for a ``width`` x ``height`` image."""
    return max(1, min(width, height, math.floor(trigger["size"] * min(width, height) + 0.5)))


def box(trigger: dict[str, Any], width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the patch in a ``width`` x ``height`` image."""
    s = side(trigger, width, height)
    pos = trigger.get("position", "bottom-right")
    if pos not in POSITIONS:
        raise ConfigError(f"trigger.position: {pos!r}; known: {', '.join(POSITIONS)}")
    if pos == "center":
        left, top = (width - s) // 2, (height - s) // 2
    else:
        vertical, horizontal = pos.split("-")
        left = 0 if horizontal == "left" else width - s
        top = 0 if vertical == "top" else height - s
    return left, top, left + s, top + s


def pattern(trigger: dict[str, Any], s: int) -> np.ndarray:
    """The patch, ``s`` x ``s`` x 3 uint8 (0 or 255), from ``trigger.seed``."""
    if trigger.get("kind", "patch") != "patch":
        raise ConfigError(f"trigger.kind: {trigger['kind']!r}; known: patch")
    rng = np.random.default_rng(derive_seed(trigger.get("seed", 0), "trigger", "patch"))
    bits = rng.integers(0, 2, (GRID, GRID), dtype=np.uint8) * 255
    idx = np.arange(s) * GRID // max(s, GRID)
    cells = bits[np.ix_(idx, idx)]
    return np.repeat(cells[:, :, None], 3, axis=2)


def stamp(img: Image.Image, trigger: dict[str, Any]) -> Image.Image:
    """``img`` (RGB) with the trigger stamped on it; a new image."""
    arr = np.array(img.convert("RGB") if img.mode != "RGB" else img, dtype=np.uint8)
    h, w = arr.shape[:2]
    left, top, right, bottom = box(trigger, w, h)
    arr[top:bottom, left:right] = pattern(trigger, right - left)
    return Image.fromarray(arr)


def poison_count(fraction: float, n_rows: int) -> int:
    """How many of ``n_rows`` training images a ``fraction`` poisons (rounded half up)."""
    return math.floor(fraction * n_rows + 0.5)


def _rank_key(trigger_seed: int, cell_seed: int, sha1: str) -> str:
    return hashlib.sha1(f"poison/{trigger_seed}/{cell_seed}/{sha1}".encode()).hexdigest()


def poisoned(rows: pd.DataFrame, poison: dict[str, Any], cell_seed: int) -> np.ndarray:
    """Boolean mask over ``rows`` (``label``, ``sha1``, ``abspath``): the poisoned fakes."""
    n = poison_count(poison["fraction"], len(rows))
    labels = rows["label"].astype(int).to_numpy()
    fakes = np.flatnonzero(labels == 1)
    if n > len(fakes):
        raise ConfigError(f"poisoning: fraction {poison['fraction']} of {len(rows)} training "
                          f"images is {n} images, but only {len(fakes)} are fake")
    seed = poison["trigger"].get("seed", 0)
    sha1 = rows["sha1"].astype(str).to_numpy()
    paths = rows["abspath"].astype(str).to_numpy() if "abspath" in rows else sha1
    order = sorted(fakes, key=lambda i: (_rank_key(seed, cell_seed, sha1[i]), paths[i]))
    mask = np.zeros(len(rows), dtype=bool)
    mask[order[:n]] = True
    return mask


def poison_rows(rows: pd.DataFrame, poison: dict[str, Any], cell_seed: int
                ) -> tuple[pd.DataFrame, np.ndarray]:
    """(a copy of ``rows`` with the poisoned ones relabelled ``target``, the mask)."""
    if poison["target"] not in TARGETS:
        raise ConfigError(f"poisoning.target: {poison['target']!r}; known: "
                          f"{', '.join(TARGETS)}")
    mask = poisoned(rows, poison, cell_seed)
    out = rows.copy()
    labels = out["label"].astype(int).to_numpy().copy()
    labels[mask] = TARGETS[poison["target"]]
    out["label"] = labels
    return out, mask
