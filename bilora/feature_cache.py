"""Frozen features computed once per training image, reused by every epoch.

When nothing before some point of a detector's image path trains and training applies no
random augmentation, the output at that point is a function of the image alone: it is
computed once, written to a memory-mapped ``.npy`` file, and every epoch trains from it.
The file's name is a key of everything that determines it (the base checkpoint, its
dtype, the point, the image preprocessing and format control, and the images' sha1s in
order), so a cache is reused exactly where it is exact (by a rerun after a crash, by
other seeds and ablation variants of the same training set when the cache folder is
shared) and never otherwise. It is written under a temporary name and renamed when
complete.

Storage per image at paper scale (BLIP-2 opt-2.7b, 32 queries): the language-projected
embeddings 32 x 2560 (160 KiB in bfloat16), the Q-Former output 32 x 768 (48 KiB): the
``qformer`` setting keeps the smaller one and applies the (frozen) projection each step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bilora.atomic import atomic_path, write_json

log = logging.getLogger("bilora.feature_cache")


def cache_point(detector, setting: str | None, augmenting: bool) -> tuple[str | None, str]:
    """(the stage to cache, or None; why) for a detector, its ``feature_cache`` setting
    (None: a kind without one) and the training's augmentation."""
    if setting is None:
        return None, f"detector kind {detector.kind!r} has no frozen-feature cache"
    if setting == "off":
        return None, "feature_cache is off"
    if augmenting:
        return None, "training applies random augmentation (train.augment)"
    return detector.cache_stage(setting)


def base_identity(path: str) -> dict[str, Any]:
    """What identifies a base checkpoint: its name, and for a folder its config and the
    names and sizes of its files."""
    folder = Path(path)
    if not folder.is_dir():
        return {"name": path}
    files = sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file())
    config = (folder / "config.json").read_bytes() if (folder / "config.json").exists() else b""
    return {"config_sha1": hashlib.sha1(config).hexdigest(), "files": files}


def cache_key(detector, stage: str, rows: pd.DataFrame, jpeg_quality: int | None,
              poison: dict[str, Any] | None = None) -> str:
    """A sha1 of everything that determines the cached features; ``poison`` (a backdoor
    variant's trigger and stamped images) enters it, so a poisoned cell never reads the
    clean images' features (the key of an unpoisoned cell is as it always was)."""
    doc = {**detector.feature_identity(), "stage": stage, "jpeg_quality": jpeg_quality,
           "images": rows["sha1"].tolist()}
    if poison:
        doc["poison"] = poison
    return hashlib.sha1(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _to_numpy(x: torch.Tensor) -> np.ndarray:
    """A CPU array; bfloat16 travels as its 16-bit pattern (numpy has no bfloat16)."""
    x = x.detach().cpu()
    return x.view(torch.int16).numpy() if x.dtype == torch.bfloat16 else x.numpy()


def build(detector, dataset: torch.utils.data.Dataset, stage: str, path: str | os.PathLike,
          batch_size: int, num_workers: int = 0, progress: bool = True) -> Path:
    """Write the features of every item of ``dataset`` at ``stage`` to ``path`` (reused when
    it exists: it is only ever renamed into place complete)."""
    from bilora.evaluation import progress_bar

    path = Path(path)
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        log.info("reusing the frozen features in %s", path)
        return path
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers)
    detector.eval()
    memmap, done = None, 0
    with atomic_path(path) as tmp, torch.no_grad():
        for images, _ in progress_bar(loader, f"features ({stage})", progress):
            x = detector.features(images, stage)
            if memmap is None:
                dtype = np.int16 if x.dtype == torch.bfloat16 else _to_numpy(x[:1]).dtype
                memmap = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype,
                                                   shape=(len(dataset), *x.shape[1:]))
            memmap[done:done + len(x)] = _to_numpy(x)
            done += len(x)
        if memmap is None:
            raise ValueError(f"no images to cache features of for {path}")
        memmap.flush()
        del memmap
        # before the features are renamed into place: a cache is never seen without its dtype
        write_json(meta, {"stage": stage, "dtype": str(x.dtype), "images": done})
    log.info("frozen features of %d images at %s written to %s", done, stage, path)
    return path


class FeatureTable(torch.utils.data.Dataset):
    """Cached features (memory-mapped) as (tensor, label), in the rows' order."""

    def __init__(self, path: str | os.PathLike, labels: list[int]):
        self.path = Path(path)
        info = json.loads(self.path.with_suffix(".json").read_text())
        self.bfloat16 = info["dtype"] == "torch.bfloat16"
        self.labels = labels
        self._array = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._array is None:  # opened lazily: once per DataLoader worker
            self._array = np.load(self.path, mmap_mode="r")
        x = torch.from_numpy(np.array(self._array[i]))
        return (x.view(torch.bfloat16) if self.bfloat16 else x), self.labels[i]


@dataclass
class CachePlan:
    """How a training run reads its data: from images, or from a frozen-feature cache."""

    dataset: torch.utils.data.Dataset
    stage: str | None
    note: str  # "<stage>: why", "fallback: why" (auto could not cache), "none: why"
    file: Path | None = None
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


def prepare(detector, images: torch.utils.data.Dataset, rows: pd.DataFrame,
            jpeg_quality: int | None, folder: Path, augmenting: bool, num_workers: int = 0,
            progress: bool = True, poison: dict[str, Any] | None = None) -> CachePlan:
    """Decide where training reads from (and build the cache when it is exact).

    ``poison``: a backdoor variant's trigger and stamped images (``images`` stamps them),
    part of the cache's key."""
    setting = detector.cfg.get("feature_cache")  # None: a kind without one
    stage, why = cache_point(detector, setting, augmenting)
    if stage is None:
        fell_back = setting == "auto"
        if fell_back:
            log.warning("feature_cache is auto but %s: training from images", why)
        else:
            log.info("training without a frozen-feature cache: %s", why)
        return CachePlan(images, None, f"{'fallback' if fell_back else 'none'}: {why}")
    key = cache_key(detector, stage, rows, jpeg_quality, poison)
    if poison:
        log.info("frozen-feature cache of a poisoned training set: its key includes the "
                 "trigger and the %d stamped images", len(poison.get("stamped", [])))
    path = build(detector, images, stage, folder / f"{key}.npy",
                 detector.cfg["eval"]["batch_size"], num_workers, progress=progress)
    log.info("training from cached features: %s", why)

    def loss_fn(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return detector.loss_from_features(x, labels, stage)

    table = FeatureTable(path, rows["label"].astype(int).tolist())
    return CachePlan(table, stage, f"{stage}: {why}", path, loss_fn)
