"""Procedural stand-in data: deterministic, seeded images made by the package itself.

A *real* image is a natural-looking scene: a colour field with a 1/f^a power
spectrum, a few sharp-edged shapes, and sensor noise. Each *generator* stand-in
starts from an image drawn the same way and leaves a documented artifact of its
family, strong enough that small detectors learn it in seconds:

=================  ==========================================================
family             artifact
=================  ==========================================================
gan                2x upsampling from half resolution with a checkerboard
                   (transposed-convolution) pattern: spectral peaks at Nyquist
diffusion          high-frequency deficit (Gaussian low-pass), residual white
                   noise stronger than the real sensor noise, and faint
                   period-4 spectral peaks from the U-Net's upsampling path
                   (as Corvi et al. 2023 found in ADM / DDPM spectra)
latent_diffusion   8-pixel decoder blocks: per-block colour offsets and
                   smoothing inside each 8x8 block
cascaded           4x bicubic upsampling from a low-resolution base, then an
                   unsharp mask (blur then sharpening, ringing halos)
=================  ==========================================================

Stand-ins bear the paper's generator names behind a visible marker
(``sim-LDM``), so no table made from them can be taken for the paper's data.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bilora.atomic import atomic_path, derive_seed
from bilora.data.manifest import Entry, build_manifest

MARKER = "sim-"

# Paper generator -> (family, strength parameters). Several members of a family
# differ in strength so that cross-generator transfer is not trivially perfect.
STAND_INS: dict[str, tuple[str, dict]] = {
    "LDM": ("latent_diffusion", {"offset": 20.0, "smooth": 0.4}),
    "SD14": ("latent_diffusion", {"offset": 30.0, "smooth": 0.5}),
    "ADM": ("diffusion", {"sigma": 1.4, "noise": 8.0, "grid": 7.5}),
    "DDPM": ("diffusion", {"sigma": 1.6, "noise": 10.0, "grid": 8.5}),
    "IDDPM": ("diffusion", {"sigma": 1.5, "noise": 9.0, "grid": 8.0}),
    "PNDM": ("diffusion", {"sigma": 1.8, "noise": 11.0, "grid": 9.5}),
    "GLIDE": ("cascaded", {"factor": 4, "amount": 1.6}),
    "ProGAN": ("gan", {"amp": 9.0, "blur": 0.0}),
    "StyleGAN": ("gan", {"amp": 6.0, "blur": 0.0}),
    "ProjectedGAN": ("gan", {"amp": 8.0, "blur": 0.5}),
    "Diff-StyleGAN2": ("gan", {"amp": 5.0, "blur": 0.7}),
    "Diff-ProjectedGAN": ("gan", {"amp": 6.0, "blur": 0.9}),
}
REAL_NOISE = 2.5


def stand_in_name(paper_name: str) -> str:
    """The marked id of a paper generator's stand-in (``LDM`` -> ``sim-LDM``)."""
    return MARKER + paper_name


def paper_name(generator: str) -> str:
    """The paper generator a stand-in id refers to (``sim-LDM`` -> ``LDM``)."""
    if not generator.startswith(MARKER) or generator[len(MARKER):] not in STAND_INS:
        known = ", ".join(stand_in_name(g) for g in STAND_INS)
        raise KeyError(f"unknown procedural generator {generator!r}; known: {known}")
    return generator[len(MARKER):]


def _gauss_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an HxWxC float image (reflect padding)."""
    if sigma <= 0:
        return img
    radius = max(1, int(3 * sigma + 0.5))
    x = np.arange(-radius, radius + 1)
    k = np.exp(-(x**2) / (2 * sigma**2))
    k /= k.sum()
    pad = np.pad(img, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    tmp = sum(k[i] * pad[:, i : i + img.shape[1]] for i in range(len(k)))
    return sum(k[i] * tmp[i : i + img.shape[0]] for i in range(len(k)))


def scene(rng: np.random.Generator, size: int) -> np.ndarray:
    """A clean natural-looking scene, HxWx3 float in [0, 255] (no sensor noise)."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    alpha = rng.uniform(2.2, 3.0)
    img = np.empty((size, size, 3))
    mix = rng.normal(0, 1, (3, 3)) * 0.3 + np.eye(3)
    base = []
    for _ in range(3):
        spec = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))) / f**(alpha / 2)
        spec[0, 0] = 0
        field = np.fft.ifft2(spec).real
        base.append((field - field.mean()) / (field.std() + 1e-8))
    base = np.stack(base, -1) @ mix.T
    img = 128 + base * rng.uniform(25, 45) + rng.uniform(-40, 40, 3)
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(rng.integers(2, 6)):
        colour = rng.uniform(20, 235, 3)
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(size / 12, size / 3, 2)
        if rng.random() < 0.5:
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            mask = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        shade = 1 + 0.15 * (yy - cy) / size
        img[mask] = (colour[None, :] * shade[mask][:, None]) * 0.85 + img[mask] * 0.15
    return np.clip(img, 0, 255)


def real_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A 'real' photograph: a scene plus sensor noise."""
    return scene(rng, size) + rng.normal(0, REAL_NOISE, (size, size, 3))


def fake_image(rng: np.random.Generator, size: int, generator: str) -> np.ndarray:
    """An image from the stand-in of a paper generator (by its paper name)."""
    family, p = STAND_INS[generator]
    img = scene(rng, size)
    if family == "gan":
        half = img.reshape(size // 2, 2, size // 2, 2, 3).mean((1, 3))
        img = half.repeat(2, 0).repeat(2, 1)
        img = _gauss_blur(img, p["blur"])
        checker = ((np.indices((size, size)).sum(0) % 2) * 2 - 1)[..., None]
        img = img + p["amp"] * checker * (0.5 + img / 255)
        img += rng.normal(0, 1.0, img.shape)
    elif family == "diffusion":
        yy, xx = np.indices((size, size))
        grid = (np.cos(np.pi / 2 * yy) * np.cos(np.pi / 2 * xx))[..., None]
        img = (_gauss_blur(img, p["sigma"]) + rng.normal(0, p["noise"], img.shape)
               + p["grid"] * grid)
    elif family == "latent_diffusion":
        b = 8
        n = size // b
        blocks = img.reshape(n, b, n, b, 3)
        means = blocks.mean((1, 3), keepdims=True)
        blocks = means + (blocks - means) * p["smooth"]
        blocks = blocks + rng.normal(0, p["offset"], (n, 1, n, 1, 3))
        img = blocks.reshape(size, size, 3) + rng.normal(0, 1.0, img.shape)
    elif family == "cascaded":
        small = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize(
            (size // p["factor"],) * 2, Image.BICUBIC)
        up = np.asarray(small.resize((size, size), Image.BICUBIC), dtype=float)
        img = up + p["amount"] * (up - _gauss_blur(up, 1.5))
        img += rng.normal(0, 1.0, img.shape)
    else:  # pragma: no cover - STAND_INS is closed
        raise ValueError(family)
    return img


@dataclass(frozen=True)
class ProceduralSpec:
    """What a procedural dataset holds (all from the config's dataset section)."""

    generators: list[str]
    image_size: int
    train_per_class: int
    test_per_class: int
    seed: int


def write_png(arr: np.ndarray, path: Path) -> None:
    """Save an HxWx3 array as PNG under a temporary name, then rename."""
    with atomic_path(path) as tmp:
        Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)).save(tmp, format="PNG")


def _make_one(job: tuple[int, int, str, int, str], out: Path) -> None:
    seed, size, rel, label, gen = job
    rng = np.random.default_rng(derive_seed(seed, rel))
    arr = real_image(rng, size) if label == 0 else fake_image(rng, size, paper_name(gen))
    write_png(arr, out / rel)


def make_dataset(spec: ProceduralSpec, dataset_dir: str | os.PathLike,
                 max_rejected_fraction: float = 0.0, progress: bool = True, workers: int = 1):
    """Write the canonical layout and manifest of a procedural dataset.

    ``train/<G>/{0_real,1_fake}`` for every generator (its own reals, as in
    Ricker et al.), ``test/<G>/1_fake`` for every generator, and one shared real test
    set ``test/Real/`` stored once and listed as the real half of every test generator.
    """
    from tqdm import tqdm

    out = Path(dataset_dir)
    s = spec.image_size
    if s % 8:
        raise ValueError(f"procedural image_size must be a multiple of 8, got {s}")
    jobs: list[tuple[str, int, str, str]] = []  # (relative path, label, generator, split)
    for gen in spec.generators:
        for label, folder in ((0, "0_real"), (1, "1_fake")):
            for i in range(spec.train_per_class):
                rel = f"train/{gen}/{folder}/{i:06d}.png"
                jobs.append((rel, label, gen, "train"))
    for i in range(spec.test_per_class):
        jobs.append((f"test/Real/{i:06d}.png", 0, "Real", "test"))
    for gen in spec.generators:
        for i in range(spec.test_per_class):
            jobs.append((f"test/{gen}/1_fake/{i:06d}.png", 1, gen, "test"))
    with ProcessPoolExecutor(max(1, workers)) as pool:
        work = pool.map(_make_one, [(spec.seed, s, rel, label, gen) for rel, label, gen, _ in jobs],
                        [out] * len(jobs), chunksize=64)
        for _ in tqdm(work, total=len(jobs), desc=f"procedural {out.name}",
                      disable=not progress, unit="img"):
            pass
    entries = [Entry(rel, label, gen, split) for rel, label, gen, split in jobs if gen != "Real"]
    real_rels = [j[0] for j in jobs if j[2] == "Real"]
    for gen in spec.generators:
        entries.extend(Entry(rel, 0, gen, "test") for rel in real_rels)
    return build_manifest(out, entries, max_rejected_fraction, progress=progress).frame()
