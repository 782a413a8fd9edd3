"""Decode any image file into 8-bit RGB.

Every image that Pillow decodes is accepted, whatever its size (``MIN_SIDE`` is 1: a
1x1 image is valid), mode, or bit depth:

- ``1``, ``L``, ``P``, ``YCbCr``, ``LAB``, ``HSV``, ``CMYK``: Pillow's conversion (CMYK
  without an ICC profile, the naive inverse; palettes through their colours);
- alpha (``RGBA``, ``LA``, ``PA``, ``P`` with transparency): the alpha channel is dropped,
  colours are kept as stored, not premultiplied or composited on a background;
- 16- and 32-bit integers (``I;16``, ``I;16B``, ``I;16L``, ``I``): scaled by the bit
  depth, ``v * 255 / (2**bits - 1)`` rounded. ``bits`` is the file's BitsPerSample when
  a TIFF declares it, else 16 for ``I;16*`` and for ``I`` images within 0..65535
  (16-bit PNG and PGM), else 31 (``I`` is signed 32-bit); negative values become 0;
- ``F`` (float): rounded and clipped to 0..255;
- animated GIF, WebP, PNG: the first frame.

EXIF orientation and ICC profiles are not applied: pixels are taken as stored, as
torchvision's image loader does.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

MIN_SIDE = 1  # the smallest side accepted: every size that decodes is used, none rejected

_TIFF_BITS_PER_SAMPLE = 258


def _bit_depth(img: Image.Image, arr: np.ndarray) -> int:
    """Bits per sample of a 16/32-bit integer image (see the module docstring)."""
    tags = getattr(img, "tag_v2", None)
    if tags is not None and _TIFF_BITS_PER_SAMPLE in tags:
        bits = tags[_TIFF_BITS_PER_SAMPLE]
        bits = bits[0] if isinstance(bits, tuple) else bits
        if 8 < int(bits) <= 32:
            return int(bits)
    if img.mode.startswith("I;16") or arr.size == 0 or arr.max() <= 0xFFFF:
        return 16
    return 31


def _from_integers(img: Image.Image) -> Image.Image:
    arr = np.asarray(img).astype(np.float64)
    scale = 255.0 / (2.0 ** _bit_depth(img, arr) - 1)
    grey = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """A new 8-bit RGB image from any decoded image (first frame of an animation)."""
    if getattr(img, "is_animated", False):
        img.seek(0)
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        return _from_integers(img)
    if mode == "F":
        grey = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode in ("LA", "La"):  # "La" is premultiplied: LA undoes that
        return img.convert("LA").getchannel("L").convert("RGB")
    if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")  # RGBA -> RGB below drops alpha, colours as stored
    return img.convert("RGB")


def open_rgb(source: str | os.PathLike | bytes) -> Image.Image:
    """Open an image file (path or encoded bytes) as 8-bit RGB, first frame."""
    fp = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    with Image.open(fp) as img:
        img.seek(0)
        return to_rgb(img)
