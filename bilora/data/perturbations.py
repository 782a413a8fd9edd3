"""Test-time degradations of Ricker et al. (after GANDCTAnalysis), seeded per image.

Each perturbation takes a level; ``random`` draws the level per image from Ricker's
ranges (noise std U[5, 20), blur kernel in {3, 5, 7, 9}, JPEG quality an integer in
[10, 75), crop fraction U[0.05, 0.20)). ``mixed`` applies each of crop, blur, noise and
JPEG with probability 1/2, each at a random level, in that order. The randomness of an
image depends only on (seed, image sha1, perturbation, level), not on the protocol, so
scores are reproducible, both protocols draw the same levels and noise for an image, and
an image shared by several test sets is degraded the same way in all of them.

Two protocols (``evaluation.protocol``). ``ricker`` reproduces the behaviour of Ricker
et al.'s code (``src/image_perturbations.py``), quirks included; ``corrected`` does what
that code means to do. Both use reflect-101 borders for the blur.

=========  ==============================================  ================================
kind       ricker (their code's behaviour)                 corrected (intended semantics)
=========  ==============================================  ================================
noise      ``uint8(clip(x + std*N(0,1), 0, 255))``:         ``clip(rint(x + std*N(0,1)))``:
           truncation, mean shift about -0.5 grey level    rounded, no shift
blur       sigma = 4 at every kernel size                  sigma = 0.3*((k-1)/2 - 1) + 0.8,
           (``cv2.BORDER_DEFAULT`` == 4 passed as sigmaX)  OpenCV's for size k: 0.8, 1.1,
                                                           1.4, 1.7 at k = 3, 5, 7, 9
jpeg       RGB array encoded by OpenCV as if BGR: the      Pillow, channels in order
           colour transform and chroma subsampling run
           on swapped channels (= JPEG of the R/B-swapped
           image, swapped back)
crop       ``int(side*p/2)`` cut per edge; OpenCV bicubic  ``round(side*(1-p))`` kept,
           (a = -0.75) to ``dsize=(rows, cols)``: a w x h  centred; Pillow bicubic back
           image comes out h x w (same for square images)  to w x h
downscale  (not in Ricker) as corrected                    shorter side to ``size`` and
                                                           back, Pillow bicubic
=========  ==============================================  ================================

Any decoded image goes through: a side of 1 pixel is blurred with the reflect-101 border,
a crop keeps at least 1 pixel per side, JPEG sides over the format's 65,500 limit are
compressed in 16-pixel-aligned strips. The one deviation from Ricker's code: where
``int(side*p/2)`` is 0 (sides under 1/p pixels) their slice ``img[0:-0]`` is empty and
crashes; here that side is kept whole.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

from bilora.atomic import derive_seed

KINDS = ("none", "noise", "blur", "jpeg", "crop", "downscale", "mixed", "trigger")
TRIGGER_LEVELS = ("patch",)  # ``trigger``: the run's backdoor trigger (bilora/data/trigger.py)
RANDOM = "random"
PROTOCOLS = ("ricker", "corrected")

RICKER_BLUR_SIGMA = 4.0  # cv2.BORDER_DEFAULT, which Ricker's code passes as sigmaX
_JPEG_STRIP = 65_488  # the largest multiple of 16 within JPEG's 65,500-pixel side


def image_rng(seed: int, sha1: str, kind: str, level: object) -> np.random.Generator:
    """The random generator of one (image, perturbation, level)."""
    return np.random.default_rng(derive_seed(seed, sha1, kind, level))


def opencv_sigma(kernel: int) -> float:
    """The sigma OpenCV derives from a kernel size when it is given sigma 0."""
    return 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8


def _kernel(kernel: int) -> int:
    k = int(kernel)
    if k % 2 == 0 or k < 1:
        raise ValueError(f"blur kernel size must be odd and positive, got {kernel}")
    return k


def _fraction(fraction: float) -> float:
    if not 0 <= fraction < 1:
        raise ValueError(f"crop fraction must be in [0, 1), got {fraction}")
    return float(fraction)


def _noisy(img: Image.Image, std: float, rng: np.random.Generator) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float64)
    return arr + rng.normal(0.0, std, arr.shape)


def _gaussian(img: Image.Image, k: int, sigma: float) -> Image.Image:
    import cv2

    out = cv2.GaussianBlur(np.asarray(img), (k, k), sigmaX=sigma, sigmaY=sigma,
                           borderType=cv2.BORDER_REFLECT_101)
    return Image.fromarray(out)


def _in_strips(arr: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``fn`` on strips of at most ``_JPEG_STRIP`` pixels per side, joined back."""
    for axis in (0, 1):
        if arr.shape[axis] > _JPEG_STRIP:
            parts = np.array_split(arr, range(_JPEG_STRIP, arr.shape[axis], _JPEG_STRIP),
                                   axis=axis)
            return np.concatenate([_in_strips(p, fn) for p in parts], axis=axis)
    return fn(np.ascontiguousarray(arr))


# --- corrected: the protocol's intended semantics ---------------------------------------

def noise(img: Image.Image, std: float, rng: np.random.Generator) -> Image.Image:
    """Additive Gaussian noise, ``std`` on the 0-255 scale, rounded and clipped."""
    return Image.fromarray(np.clip(np.rint(_noisy(img, std, rng)), 0, 255).astype(np.uint8))


def blur(img: Image.Image, kernel: int, rng: np.random.Generator | None = None) -> Image.Image:
    """Gaussian blur with an odd ``kernel`` size; sigma as OpenCV derives it from the size."""
    k = _kernel(kernel)
    return _gaussian(img, k, opencv_sigma(k))


def _pil_jpeg(arr: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as out:
        return np.asarray(out.convert("RGB"))


def jpeg(img: Image.Image, quality: int, rng: np.random.Generator | None = None) -> Image.Image:
    """JPEG compression at ``quality`` (Pillow, 4:2:0 chroma subsampling)."""
    q = int(quality)
    return Image.fromarray(_in_strips(np.asarray(img), lambda a: _pil_jpeg(a, q)))


def crop_box(width: int, height: int, fraction: float) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred crop keeping ``1 - fraction`` of each side."""
    _fraction(fraction)
    cw = max(1, round(width * (1 - fraction)))
    ch = max(1, round(height * (1 - fraction)))
    left, top = (width - cw) // 2, (height - ch) // 2
    return left, top, left + cw, top + ch


def crop(img: Image.Image, fraction: float, rng: np.random.Generator | None = None
         ) -> Image.Image:
    """Centre crop removing ``fraction`` of each side's length, resized back (bicubic)."""
    return img.crop(crop_box(*img.size, fraction)).resize(img.size, Image.BICUBIC)


def downscale(img: Image.Image, size: int, rng: np.random.Generator | None = None
              ) -> Image.Image:
    """Downscale so the shorter side is ``size`` pixels, then back up (bicubic)."""
    if size <= 0:
        raise ValueError(f"downscale size must be positive, got {size}")
    w, h = img.size
    s = size / min(w, h)
    small = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
    return small.resize((w, h), Image.BICUBIC)


# --- ricker: the behaviour of Ricker et al.'s code --------------------------------------

def ricker_noise(img: Image.Image, std: float, rng: np.random.Generator) -> Image.Image:
    """Additive Gaussian noise, clipped then truncated to uint8 (mean shift about -0.5)."""
    return Image.fromarray(np.clip(_noisy(img, std, rng), 0.0, 255.0).astype(np.uint8))


def ricker_blur(img: Image.Image, kernel: int, rng: np.random.Generator | None = None
                ) -> Image.Image:
    """Gaussian blur with an odd ``kernel`` size and sigma 4 whatever the size."""
    return _gaussian(img, _kernel(kernel), RICKER_BLUR_SIGMA)


def _cv2_jpeg(arr: np.ndarray, quality: int) -> np.ndarray:
    import cv2

    ok, buf = cv2.imencode(".jpg", arr, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    if not ok:
        raise ValueError(f"OpenCV could not JPEG-encode an image of shape {arr.shape}")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def ricker_jpeg(img: Image.Image, quality: int, rng: np.random.Generator | None = None
                ) -> Image.Image:
    """JPEG by OpenCV on the RGB array read as BGR; the output keeps the input's order."""
    q = int(quality)
    return Image.fromarray(_in_strips(np.asarray(img), lambda a: _cv2_jpeg(a, q)))


def ricker_crop_cuts(rows: int, cols: int, fraction: float) -> tuple[int, int]:
    """Pixels cut from each of top and bottom, and from each of left and right.

    ``int(side * fraction * 0.5)``: under half the side, as ``fraction < 1``.
    """
    _fraction(fraction)
    return int(rows * fraction * 0.5), int(cols * fraction * 0.5)


def ricker_crop(img: Image.Image, fraction: float, rng: np.random.Generator | None = None
                ) -> Image.Image:
    """Ricker's crop: cut ``ricker_crop_cuts``, OpenCV bicubic to dsize=(rows, cols).

    OpenCV's dsize is (width, height), so a w x h image comes out h x w. A cut of 0
    keeps the side whole (their ``img[0:-0]`` would be empty).
    """
    import cv2

    arr = np.asarray(img)
    rows, cols = arr.shape[:2]
    rc, cc = ricker_crop_cuts(rows, cols, fraction)
    cropped = np.ascontiguousarray(arr[rc:rows - rc, cc:cols - cc])
    return Image.fromarray(cv2.resize(cropped, dsize=(rows, cols),
                                      interpolation=cv2.INTER_CUBIC))


# --- protocol dispatch ------------------------------------------------------------------

Perturbation = Callable[[Image.Image, object, np.random.Generator], Image.Image]
_FUNCS: dict[str, dict[str, Perturbation]] = {
    "corrected": {"noise": noise, "blur": blur, "jpeg": jpeg, "crop": crop,
                  "downscale": downscale},
    "ricker": {"noise": ricker_noise, "blur": ricker_blur, "jpeg": ricker_jpeg,
               "crop": ricker_crop, "downscale": downscale},
}


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


def apply(img: Image.Image, kind: str, level: object, seed: int, sha1: str,
          protocol: str = "corrected", trigger: dict | None = None) -> Image.Image:
    """Degrade one image under ``protocol``; ``level`` is a number, or ``random``.

    ``trigger`` (kind ``trigger``, level ``patch``): stamp that backdoor trigger, the same
    under either protocol. Returns an RGB image (``none`` returns an RGB input itself).
    """
    if protocol not in _FUNCS:
        raise KeyError(f"evaluation.protocol: unknown perturbation protocol {protocol!r}; "
                       f"known: {', '.join(PROTOCOLS)}")
    if kind not in KINDS:
        raise KeyError(f"unknown perturbation {kind!r}; known: {', '.join(KINDS)}")
    if img.mode != "RGB":
        from bilora.data.images import to_rgb

        img = to_rgb(img)
    if kind == "none":
        return img
    if kind == "trigger":
        if trigger is None or level not in TRIGGER_LEVELS:
            raise ValueError(f"perturbation trigger={level} needs the run's trigger (poisoning)")
        from bilora.data.trigger import stamp

        return stamp(img, trigger)
    funcs = _FUNCS[protocol]
    rng = image_rng(seed, sha1, kind, level)
    if kind == "mixed":
        for step in ("crop", "blur", "noise", "jpeg"):
            if rng.random() < 0.5:
                img = funcs[step](img, _random_level(step, rng), rng)
        return img
    if level == RANDOM:
        level = _random_level(kind, rng)
    return funcs[kind](img, level, rng)


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
    if level in (RANDOM, "none", "-", *TRIGGER_LEVELS):
        return level
    num = float(level)
    return int(num) if num.is_integer() and "." not in level else num
