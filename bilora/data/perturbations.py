"""Test-time degradations (Ricker et al.'s protocol, from GANDCTAnalysis), seeded per image.

Each perturbation takes a level; ``random`` draws the level per image from Ricker's
ranges. ``mixed`` applies each of crop, blur, noise and JPEG with probability 1/2,
each at a random level, in that order. The randomness of an image depends only on
(seed, image sha1, perturbation, level), so scores are reproducible and an image
shared by several test sets is degraded the same way in all of them.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

from bilora.atomic import derive_seed

KINDS = ("none", "noise", "blur", "jpeg", "crop", "downscale", "mixed")
RANDOM = "random"


def image_rng(seed: int, sha1: str, kind: str, level: object) -> np.random.Generator:
    """The random generator of one (image, perturbation, level)."""
    return np.random.default_rng(derive_seed(seed, sha1, kind, level))


def noise(img: Image.Image, std: float, rng: np.random.Generator) -> Image.Image:
    """Additive Gaussian noise, ``std`` on the 0-255 scale."""
    arr = np.asarray(img, dtype=np.float32)
    arr = arr + rng.normal(0.0, std, arr.shape)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def blur(img: Image.Image, kernel: int, rng: np.random.Generator | None = None) -> Image.Image:
    """Gaussian blur with an odd ``kernel`` size; sigma as OpenCV derives it from the size."""
    import torch
    from torchvision.transforms.functional import gaussian_blur

    k = int(kernel)
    if k % 2 == 0 or k < 1:
        raise ValueError(f"blur kernel size must be odd and positive, got {kernel}")
    t = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    out = gaussian_blur(t, [k, k])  # sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
    return Image.fromarray(out.permute(1, 2, 0).numpy())


def jpeg(img: Image.Image, quality: int, rng: np.random.Generator | None = None) -> Image.Image:
    """JPEG compression at ``quality`` (PIL, 4:2:0 chroma subsampling)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def crop(img: Image.Image, fraction: float, rng: np.random.Generator | None = None
         ) -> Image.Image:
    """Centre crop removing ``fraction`` of each side's length, resized back (bicubic)."""
    w, h = img.size
    cw, ch = round(w * (1 - fraction)), round(h * (1 - fraction))
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BICUBIC)


def downscale(img: Image.Image, size: int, rng: np.random.Generator | None = None
              ) -> Image.Image:
    """Downscale so the shorter side is ``size`` pixels, then back up (bicubic)."""
    w, h = img.size
    s = size / min(w, h)
    small = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
    return small.resize((w, h), Image.BICUBIC)


def _random_level(kind: str, rng: np.random.Generator) -> float | int:
    """Ricker et al.'s per-image ranges."""
    if kind == "noise":
        return float(rng.uniform(5, 20))
    if kind == "blur":
        return int(rng.choice([3, 5, 7, 9]))
    if kind == "jpeg":
        return int(rng.integers(10, 75))
    if kind == "crop":
        return float(rng.uniform(0.05, 0.20))
    raise ValueError(f"perturbation {kind!r} has no random level")


_FUNCS: dict[str, Callable] = {"noise": noise, "blur": blur, "jpeg": jpeg, "crop": crop,
                               "downscale": downscale}


def apply(img: Image.Image, kind: str, level: object, seed: int, sha1: str) -> Image.Image:
    """Degrade one RGB image; ``level`` is a number, or ``random`` (per-image level)."""
    if kind not in KINDS:
        raise KeyError(f"unknown perturbation {kind!r}; known: {', '.join(KINDS)}")
    if kind == "none":
        return img
    rng = image_rng(seed, sha1, kind, level)
    if kind == "mixed":
        for step in ("crop", "blur", "noise", "jpeg"):
            if rng.random() < 0.5:
                img = _FUNCS[step](img, _random_level(step, rng), rng)
        return img
    if level == RANDOM:
        level = _random_level(kind, rng)
    return _FUNCS[kind](img, level, rng)


def conditions(spec: dict[str, list]) -> list[tuple[str, str]]:
    """(perturbation, level) pairs from the config's ``evaluation.perturbations`` mapping.

    Levels are kept as strings, as they appear in score tables.
    """
    out = []
    for kind, levels in spec.items():
        if kind not in KINDS:
            raise KeyError(f"evaluation.perturbations.{kind}: unknown perturbation; "
                           f"known: {', '.join(KINDS)}")
        for level in levels:
            out.append((kind, str(level)))
    return out


def parse_level(level: str) -> object:
    """A level string back to the value the perturbation takes."""
    if level in (RANDOM, "none", "-"):
        return level
    num = float(level)
    return int(num) if num.is_integer() and "." not in level else num
