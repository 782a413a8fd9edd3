"""Loading images listed in manifests as uint8 tensors, optionally degraded.

Every image is read as bytes and checked against the sha1 its manifest recorded before it
is decoded: a file that changed or vanished after its manifest was built stops the job
with one line naming the file and the manifest (never a silent wrong score). Decoding
accepts any image Pillow reads (:func:`bilora.data.images.open_rgb`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from PIL import Image

from bilora.data.images import open_rgb
from bilora.data.manifest import load_rows
from bilora.data.perturbations import jpeg
from bilora.errors import DataError

FITS = ("resize", "crop")  # how an image becomes the detector's square input

__all__ = ["FITS", "ImageChanged", "ImageTable", "Perturbation", "load_rows", "read_checked"]


class ImageChanged(DataError):
    """An image differs from (or is missing since) the manifest that lists it."""


class Perturbation(NamedTuple):
    """One test-time degradation: kind, parsed level, seed and protocol."""

    kind: str
    level: object
    seed: int
    protocol: str = "corrected"
    trigger: dict | None = None  # the backdoor trigger (kind ``trigger``)


def read_checked(path: str, sha1: str, manifest: str) -> bytes:
    """The bytes of ``path``; ImageChanged if they are not those its manifest recorded."""
    how = (f"rebuild it: delete {manifest} and run snakemake again (or `snakemake "
           f"--forcerun {manifest}`)")
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageChanged(f"{path} is listed in {manifest} but no longer exists; "
                           f"{how}") from None
    got = hashlib.sha1(data).hexdigest()
    if got != sha1:
        raise ImageChanged(f"{path} changed after {manifest} was built (sha1 {got}, the "
                           f"manifest has {sha1}); {how}")
    return data


class ImageTable(torch.utils.data.Dataset):
    """Images of a table (``abspath``, ``label``, ``sha1``, ``manifest``) as (uint8 CHW
    tensor, label).

    Each image is decoded, then re-encoded as JPEG at ``jpeg_quality`` when given (the
    format control), then degraded by ``perturb`` when given, then brought to a ``size`` x
    ``size`` square as ``fit`` says: ``resize`` (bicubic), or ``crop``, the centre crop
    without resizing (an image smaller than the crop is padded with zeros around it, as
    torchvision's ``CenterCrop`` does: UnivFD's and NPR's test preprocessing).

    ``stamped`` (a flag per row) with ``trigger``: the backdoor trigger is stamped on
    those images after the format control (training on a poisoned set).
    """

    def __init__(self, rows: pd.DataFrame, size: int | None,
                 perturb: Perturbation | None = None, jpeg_quality: int | None = None,
                 fit: str = "resize", trigger: dict | None = None,
                 stamped: list[bool] | np.ndarray | None = None):
        if fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
        self.fit = fit
        self.paths = rows["abspath"].tolist()
        self.labels = rows["label"].astype(int).tolist()
        self.sha1 = rows["sha1"].tolist()
        self.manifests = (rows["manifest"].tolist() if "manifest" in rows
                          else ["its manifest"] * len(rows))
        self.size = size
        self.perturb = perturb
        self.jpeg_quality = jpeg_quality
        self.trigger = trigger
        self.stamped = ([bool(x) for x in stamped] if stamped is not None
                        else [False] * len(self.paths))
        if len(self.stamped) != len(self.paths):
            raise ValueError(f"stamped has {len(self.stamped)} flags for {len(self.paths)} rows")
        if any(self.stamped) and trigger is None:
            raise ValueError("stamped rows need a trigger")

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> Image.Image:
        """Image ``i`` after the format control and the perturbation, before resizing."""
        img = open_rgb(read_checked(self.paths[i], self.sha1[i], self.manifests[i]))
        if self.jpeg_quality is not None:
            img = jpeg(img, self.jpeg_quality)
        if self.stamped[i]:
            from bilora.data.trigger import stamp

            img = stamp(img, self.trigger)
        if self.perturb is not None:
            from bilora.data.perturbations import apply

            p = self.perturb
            img = apply(img, p.kind, p.level, p.seed, self.sha1[i], protocol=p.protocol,
                        trigger=p.trigger)
        return img

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.image(i)
        if self.size and self.fit == "resize" and img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.BICUBIC)
        arr = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
        if self.size and self.fit == "crop" and img.size != (self.size, self.size):
            from torchvision.transforms.functional import center_crop

            arr = center_crop(arr, [self.size, self.size])
        return arr, self.labels[i]
