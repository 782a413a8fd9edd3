"""A miniature, real-shaped world for rehearsing the paper config, built in seconds.

:func:`build_world` writes, under one folder and deterministically from a seed:

* ``zenodo/``: the files of a Zenodo-shaped record in Ricker et al.'s layout
  (``diffusion_model_deepfakes_lsun_bedroom/{train,val}/<G>/1_fake``, ``test/<G>``,
  ``test/Real``), split into a test zip, a val zip and two train ``.tar.gz`` parts,
  plus a ``README.md`` that is not an archive. :func:`serve_world` serves them
  from a loopback fake Zenodo (``tests/zenodo_server.py``) that by default cuts the
  first download of every file halfway, so a fetch must resume with ``Range``.
* ``bedroom_train_lmdb/``: an LSUN-format LMDB (40-hex-digit keys inserted out of key
  order; JPEG values with one side ``size`` and the other longer, some WebP, one
  grayscale) holding ``skip + 10 x (train + val) + margin`` records.
* ``GenImage/``: the SD v1.4 and GLIDE subsets at paper.yaml's relative paths,
  ``{train,val}/{ai,nature}``: ``ai`` PNGs (SD at twice the side of GLIDE, as 512 vs
  256), ``nature`` ImageNet-like ``.JPEG`` files of varied sizes (one grayscale, one
  CMYK, one PNG under a ``.JPEG`` name, as ImageNet has).
* ``blip2/``: a tiny random BLIP-2 (224 px) saved with ``save_pretrained``.
* ``VLM-DETECT/weights/<g>FineTune/``: seven LoRA adapters for that BLIP-2 exactly in the
  form the Bi-LoRA authors published theirs (PEFT 0.4/0.5 ``adapter_config.json`` naming
  ``ybelkada/blip2-opt-2.7b-fp16-sharded``, ``adapter_model.bin`` whose keys carry no
  adapter name, no processor), one per paper.yaml ``bilora_authors`` checkpoint.
* ``timm/<name>.safetensors``: seeded random full-size state dicts of timm's
  ``resnet50`` and ``legacy_xception`` (fp16) that
  ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...))``
  loads offline.

Fakes and reals differ in one simple way at every size: fakes are smooth content
plus a strong period-8 sawtooth (block) pattern, saved losslessly; reals are the same
kind of content plus strong sensor-like noise, JPEG-compressed once (LSUN records,
ImageNet photos) before any crop.

The expected folder digests of ``test/``, and of ``train/`` and ``val/`` after the
real halves are rebuilt, are computed here with hashlib alone (the authors' shell
pipeline and LSUN recipe re-implemented in a few lines, none of the project's code).

:func:`overlay_for` gives the config overlay for ``workflow/config/paper.yaml`` that
changes only scale and places. ``python -m tests.miniworld DIR --serve`` builds a
world, writes ``DIR/overlay.yaml`` and ``DIR/world.json`` and serves the record
until interrupted.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.zenodo_server import Zenodo, serve

RECORD = "7528113"
ROOT_NAME = "diffusion_model_deepfakes_lsun_bedroom"
#: Ricker et al.'s generators, in the order the LSUN records are handed out.
RICKER_GENERATORS = ("ADM", "DDPM", "Diff-ProjectedGAN", "Diff-StyleGAN2", "IDDPM", "LDM",
                     "PNDM", "ProGAN", "ProjectedGAN", "StyleGAN")
#: The record's archives: name -> (split, generators it holds).
ARCHIVES = {
    f"{ROOT_NAME}_test.zip": ("test", RICKER_GENERATORS),
    f"{ROOT_NAME}_val.zip": ("val", RICKER_GENERATORS),
    f"{ROOT_NAME}_train_part1.tar.gz": ("train", RICKER_GENERATORS[:5]),
    f"{ROOT_NAME}_train_part2.tar.gz": ("train", RICKER_GENERATORS[5:]),
}
#: GenImage subsets: generator -> (folder under GenImage/ as in paper.yaml, ai side / size).
GENIMAGE = {"SD14": ("stable_diffusion_v_1_4/imagenet_ai_0419_sdv4", 2),
            "GLIDE": ("glide/imagenet_glide", 1)}
TIMM_MODELS = ("resnet50", "legacy_xception")
#: The Bi-LoRA authors' adapter folders (weights/<name> in Mamadou-Keita/VLM-DETECT), by
#: training generator as paper.yaml's bilora_authors names them.
AUTHORS_ADAPTERS = {"LDM": "ldmFineTune", "ADM": "admFineTune", "DDPM": "ddpmFineTune",
                    "IDDPM": "iddpmFineTune", "PNDM": "pndmFineTune",
                    "SD14": "stablediffusionFineTune", "GLIDE": "glideFineTune"}
#: The authors' adapter_config.json fields (PEFT 0.5 form), one key today's PEFT lacks.
AUTHORS_CONFIG = {
    "auto_mapping": {"base_model_class": "Blip2ForConditionalGeneration",
                     "parent_library": "transformers.models.blip_2.modeling_blip_2"},
    "base_model_name_or_path": "ybelkada/blip2-opt-2.7b-fp16-sharded", "bias": "none",
    "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
    "layers_pattern": None, "layers_to_transform": None, "lora_alpha": 32,
    "lora_dropout": 0.05, "modules_to_save": None, "peft_type": "LORA", "r": 16,
    "revision": None, "target_modules": ["q_proj", "k_proj"], "task_type": None,
    "merge_weights": False}
#: The tiny BLIP-2 (keys of default.yaml's base_model.tiny) named by path in the overlay.
BLIP2_CFG = {"vision_width": 32, "qformer_width": 32, "text_width": 32, "vision_layers": 1,
             "qformer_layers": 1, "text_layers": 1, "heads": 2, "image_size": 224,
             "patch_size": 32, "num_query_tokens": 4,
             "init_std": {"vision": 0.02, "other": 0.2}}
#: Counts of the rehearsal: what `snakemake all` on paper.yaml + overlay_for(world) uses
#: (measured: 384 CPU-s in jobs plus about 30 CPU-s of Snakemake's own; that is about
#: 3.5-4 min on 2 idle cores, 8-13 min on 2 shared, loaded ones).
REHEARSAL_SIZES = {"lsun_train": 4, "train_fakes": 4, "genimage_train": 4, "test_fakes": 2,
                   "test_reals": 4, "genimage_val": 2}
_ZIP_TIME = (2023, 1, 11, 12, 0, 0)
_MTIME = 1673438400  # the same instant, for tar members


@dataclass(frozen=True)
class Sizes:
    """Counts and image sides; every one a parameter of :func:`build_world`."""

    size: int = 32  # Ricker images and the LSUN crop (the real set: 256)
    lsun_skip: int = 4  # LSUN records before the train/val blocks (real: 10,000)
    lsun_train: int = 6  # LSUN train reals per generator (real: 39,000)
    lsun_val: int = 2  # LSUN val reals per generator (real: 1,000)
    lsun_margin: int = 6  # LMDB records after the last planned one
    train_fakes: int = 6  # train/<G>/1_fake per generator
    val_fakes: int = 2  # val/<G>/1_fake per generator
    test_fakes: int = 4  # test/<G> per generator
    test_reals: int = 8  # test/Real (shared)
    genimage_train: int = 6  # per class (ai, nature) and subset
    genimage_val: int = 4  # per class and subset (the paper's test split)


@dataclass
class World:
    """Everything an overlay or a test needs to know about a built world."""

    root: Path
    seed: int
    sizes: Sizes
    record: str  # Zenodo record id served
    record_dir: Path  # the record's files, as served
    record_files: dict[str, str]  # file key -> md5
    root_name: str  # top folder inside the archives
    generators: tuple[str, ...]  # Ricker generators (archive folders, LSUN order)
    lmdb: Path  # the LSUN-format LMDB
    lmdb_records: int
    genimage: dict[str, Path]  # generator (SD14, GLIDE) -> subset folder
    blip2: Path | None  # tiny BLIP-2 folder (model + processor), 224 px
    blip2_cfg: dict[str, Any]
    adapters: dict[str, Path]  # training generator -> the authors'-form adapter folder
    timm_weights: dict[str, Path]  # timm model name -> safetensors file (fp16)
    digests: dict[str, str]  # Ricker split -> expected tree digest (train/val after rebuild)
    manifest_rows: dict[str, int]  # paper.yaml dataset name -> rows of its manifest
    seconds: dict[str, float] = field(default_factory=dict)  # build time per part
    base_url: str = ""  # set while served by serve_world

    @property
    def lsun(self) -> dict[str, Any]:
        """paper.yaml's ``data.datasets.ricker.lsun`` section for this world."""
        s = self.sizes
        return {"lmdb": str(self.lmdb), "skip": s.lsun_skip, "train_per_generator": s.lsun_train,
                "val_per_generator": s.lsun_val, "size": s.size, "order": list(self.generators)}

    def to_json(self) -> str:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["sizes"] = asdict(self.sizes)
        return json.dumps(d, indent=1, default=str)


# -- images -------------------------------------------------------------------------------

def _rng(seed: int, *name: object) -> np.random.Generator:
    """An independent generator per (seed, image name): counts never shift other images."""
    digest = hashlib.sha1("/".join(map(str, (seed, *name))).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _content(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Smooth colour content, the same kind for reals and fakes (float HxWx3)."""
    grid = rng.integers(60, 190, (3, 3, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC), np.float32)


def fake_pixels(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Fake-like: smooth content plus a strong period-8 sawtooth block pattern."""
    yy, xx = np.mgrid[0:h, 0:w]
    saw = ((xx % 8) + (yy % 8)) / 14.0 - 0.5
    arr = _content(rng, w, h) + 48.0 * saw[..., None]
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def real_pixels(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Real-like: smooth content plus strong sensor-like noise (luma and chroma)."""
    arr = (_content(rng, w, h) + rng.normal(0, 24, (h, w, 1))
           + rng.normal(0, 8, (h, w, 3)))
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def _encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    return _encode(img, "PNG")  # Pillow's defaults, as the authors' script saves


def _crop_box(w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """The authors' centre crop box."""
    left, top = w // 2 - size // 2, h // 2 - size // 2
    return left, top, left + size, top + size


def _lsun_shape(rng: np.random.Generator, size: int) -> tuple[int, int]:
    """(w, h) with one side ``size`` and the other longer, as LSUN's records are."""
    long = size + int(rng.integers(max(1, size // 8), size // 2 + 2))
    return (long, size) if rng.random() < 0.5 else (size, long)


def lsun_record(seed: int, index: int, size: int) -> bytes:
    """The encoded image of the LMDB record at key-order position ``index``."""
    rng = _rng(seed, "lsun", index)
    w, h = _lsun_shape(rng, size)
    img = real_pixels(rng, w, h)
    if index % 7 == 3:
        return _encode(img, "WEBP", quality=90)
    if index % 29 == 5:
        return _encode(img.convert("L"), "JPEG", quality=90)
    return _encode(img, "JPEG", quality=90)


def _test_real(seed: int, i: int, size: int) -> bytes:
    """A test/Real PNG: a real LSUN-like photo (JPEG), centre-cropped, saved as PNG."""
    rng = _rng(seed, "test-real", i)
    w, h = _lsun_shape(rng, size)
    jpeg = Image.open(io.BytesIO(_encode(real_pixels(rng, w, h), "JPEG", quality=90)))
    return _png(jpeg.crop(_crop_box(w, h, size)))


def ricker_files(seed: int, s: Sizes) -> dict[str, bytes]:
    """The record's images, by path below ROOT_NAME (fakes only for train/val)."""
    out: dict[str, bytes] = {}
    for g in RICKER_GENERATORS:
        for split, n in (("train", s.train_fakes), ("val", s.val_fakes), ("test", s.test_fakes)):
            folder = f"{split}/{g}" if split == "test" else f"{split}/{g}/1_fake"
            for i in range(n):
                out[f"{folder}/{i:05d}.png"] = _png(fake_pixels(_rng(seed, split, g, i),
                                                                s.size, s.size))
    for i in range(s.test_reals):
        out[f"test/Real/{i:05d}.png"] = _test_real(seed, i, s.size)
    return out


# -- independent expectations ---------------------------------------------------------------

def folder_digest(files: dict[str, bytes]) -> str:
    """``find DIR -type f -print0 | LC_ALL=C sort -z | xargs -0 sha1sum | cut -d' ' -f1 |
    sha1sum`` of a folder holding ``files`` (relative path -> bytes), by hashlib alone."""
    lines = "".join(hashlib.sha1(files[p]).hexdigest() + "\n"
                    for p in sorted(files, key=str.encode))
    return hashlib.sha1(lines.encode()).hexdigest()


def rebuilt_lsun_reals(records: dict[bytes, bytes], skip: int, train: int, val: int,
                       size: int, order: tuple[str, ...]) -> dict[str, bytes]:
    """The authors' LSUN recipe in a few lines: relative path -> PNG bytes."""
    out = {}
    for index, key in enumerate(sorted(records)):  # an LMDB iterates in key order
        if index < skip:
            continue
        block, within = divmod(index - skip, train + val)
        if block >= len(order):
            break
        img = Image.open(io.BytesIO(records[key]))
        split = "train" if within < train else "val"
        out[f"{split}/{order[block]}/0_real/{index:08}.png"] = _png(
            img.crop(_crop_box(*img.size, size)))
    return out


# -- writers ------------------------------------------------------------------------------

def _dirs(paths: list[str]) -> list[str]:
    """Every folder above ``paths`` (with a trailing slash), parents first."""
    out: set[str] = set()
    for p in paths:
        parts = p.split("/")[:-1]
        out.update("/".join(parts[:i]) + "/" for i in range(1, len(parts) + 1))
    return sorted(out)


def _write_zip(path: Path, files: dict[str, bytes]) -> None:
    """A zip as ``zip -r`` makes one: folder entries, then files (stored, fixed times)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for d in _dirs(list(files)):
            info = zipfile.ZipInfo(d, _ZIP_TIME)
            info.external_attr = (0o40755 << 16) | 0x10
            zf.writestr(info, b"")
        for name in sorted(files):
            info = zipfile.ZipInfo(name, _ZIP_TIME)
            info.external_attr = 0o100644 << 16
            zf.writestr(info, files[name])


def _write_targz(path: Path, files: dict[str, bytes]) -> None:
    """A reproducible .tar.gz (fixed mtimes, owners and gzip header)."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d in _dirs(list(files)):
            info = tarfile.TarInfo(d.rstrip("/"))
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, _MTIME
            tf.addfile(info)
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, _MTIME
            tf.addfile(info, io.BytesIO(files[name]))


def _write_record(out: Path, files: dict[str, bytes], s: Sizes) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    md5 = {}
    for name, (split, gens) in ARCHIVES.items():
        part = {f"{ROOT_NAME}/{p}": b for p, b in files.items()
                if p.startswith(f"{split}/") and p.split("/")[1] in (*gens, "Real")}
        (_write_zip if name.endswith(".zip") else _write_targz)(out / name, part)
        md5[name] = hashlib.md5((out / name).read_bytes()).hexdigest()
    readme = (f"Miniature stand-in for Zenodo record {RECORD} (Ricker et al., LSUN Bedroom): "
              f"{s.size}x{s.size} PNGs; train/val hold only 1_fake, rebuild 0_real from "
              "LSUN.\n")
    (out / "README.md").write_text(readme)
    md5["README.md"] = hashlib.md5(readme.encode()).hexdigest()
    return md5


def _write_lmdb(path: Path, records: dict[bytes, bytes], seed: int) -> None:
    import lmdb

    keys = list(records)
    _rng(seed, "lmdb-order").shuffle(keys)  # inserted out of key order
    env = lmdb.open(str(path), map_size=max(1 << 24, 4 * sum(map(len, records.values()))))
    with env.begin(write=True) as txn:
        for k in keys:
            txn.put(k, records[k])
    env.close()


def _write_genimage(root: Path, seed: int, s: Sizes,
                    folders: dict[str, tuple[str, int]] | None = None
                    ) -> tuple[dict[str, Path], dict[str, int]]:
    """GenImage subsets (generator -> (folder, side factor); default GENIMAGE) under
    ``root``; returns (generator -> folder, generator -> manifest rows)."""
    paths, rows = {}, {}
    for gen, (rel, factor) in (folders or GENIMAGE).items():
        sub = root / rel
        n_rows = 0
        for split, n in (("train", s.genimage_train), ("val", s.genimage_val)):
            (sub / split / "ai").mkdir(parents=True, exist_ok=True)
            (sub / split / "nature").mkdir(parents=True, exist_ok=True)
            side = s.size * factor
            for i in range(n):
                img = fake_pixels(_rng(seed, gen, split, "ai", i), side, side)
                (sub / split / "ai" / f"{i:03d}_{gen.lower()}_{i:05d}.png").write_bytes(_png(img))
                rng = _rng(seed, gen, split, "nature", i)
                w = int(rng.integers(s.size * 5 // 4, s.size * 2 + 1))
                h = int(rng.integers(s.size * 5 // 4, s.size * 2 + 1))
                img = real_pixels(rng, w, h)
                name = (f"ILSVRC2012_val_{i + 1:08d}.JPEG" if split == "val"
                        else f"n0{1440764 + i}_{1000 + i}.JPEG")
                if i == 1:
                    data = _encode(img.convert("L"), "JPEG", quality=90)
                elif i == 2:
                    data = _encode(img.convert("CMYK"), "JPEG", quality=90)
                elif i == 3 and split == "train":  # ImageNet has a PNG under a .JPEG name
                    data = _png(img)
                else:
                    data = _encode(img, "JPEG", quality=90)
                (sub / split / "nature" / name).write_bytes(data)
            n_rows += 2 * n
        paths[gen], rows[gen] = sub, n_rows
    return paths, rows


def _write_timm(path: Path, name: str, seed: int) -> None:
    """Seeded random weights of the full-size timm model ``name`` in timm's key layout,
    stored as fp16 safetensors. BatchNorm statistics are calibrated on random inputs, so
    in eval mode activations stay O(1) as a pretrained network's do."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(int(_rng(seed, "timm", name).integers(2**62)))
    model = timm.create_model(name, pretrained=False)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 64, 64))
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_file(state, str(path))


def _write_blip2(path: Path, seed: int) -> None:
    from transformers.utils import logging

    from bilora.bases.blip2.tiny import make_tiny_blip2

    logging.disable_progress_bar()
    model, processor = make_tiny_blip2(BLIP2_CFG, seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)


def authors_lora(base: str | Path, seed: int = 7) -> tuple[Any, dict[str, Any]]:
    """The BLIP-2 at ``base`` wrapped by a current-PEFT LoRA with the authors' settings, and
    seeded random (non-zero) LoRA weights under the keys PEFT 0.4 saves (no adapter name)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict
    from transformers import Blip2ForConditionalGeneration

    c = AUTHORS_CONFIG
    model = get_peft_model(Blip2ForConditionalGeneration.from_pretrained(base), LoraConfig(
        r=c["r"], lora_alpha=c["lora_alpha"], lora_dropout=c["lora_dropout"],
        target_modules=list(c["target_modules"]), bias=c["bias"]))
    gen = torch.Generator().manual_seed(seed)
    return model, {k: 0.3 * torch.randn(v.shape, generator=gen)
                   for k, v in get_peft_model_state_dict(model).items()}


def write_authors_adapter(folder: str | Path, base: str | Path, seed: int = 7) -> Path:
    """An adapter folder for the BLIP-2 at ``base`` exactly in the authors' form:
    ``adapter_model.bin`` (``torch.save``, keys without an adapter name), their
    ``adapter_config.json``, no processor."""
    import torch

    _, state = authors_lora(base, seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "adapter_model.bin")
    (folder / "adapter_config.json").write_text(json.dumps(AUTHORS_CONFIG, indent=2))
    return folder


# -- the world ----------------------------------------------------------------------------

def build_world(root: str | Path, seed: int = 0, *, timm_models: tuple[str, ...] = TIMM_MODELS,
                blip2: bool = True, **sizes: int) -> World:
    """Build the miniature world under ``root`` (see the module docstring)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    s = Sizes(**sizes)
    secs: dict[str, float] = {}
    t = time.perf_counter()

    def lap(part: str) -> None:
        nonlocal t
        now = time.perf_counter()
        secs[part] = round(now - t, 3)
        t = now

    files = ricker_files(seed, s)
    record_files = _write_record(root / "zenodo", files, s)
    lap("record")
    n_records = s.lsun_skip + len(RICKER_GENERATORS) * (s.lsun_train + s.lsun_val) + s.lsun_margin
    keys = sorted(hashlib.sha1(f"lsun-{seed}-{i}".encode()).hexdigest().encode()
                  for i in range(n_records))
    records = {k: lsun_record(seed, i, s.size) for i, k in enumerate(keys)}
    _write_lmdb(root / "bedroom_train_lmdb", records, seed)
    lap("lmdb")
    reals = rebuilt_lsun_reals(records, s.lsun_skip, s.lsun_train, s.lsun_val, s.size,
                               RICKER_GENERATORS)
    digests = {split: folder_digest({p[len(split) + 1:]: b for p, b in {**files, **reals}.items()
                                     if p.startswith(f"{split}/")})
               for split in ("train", "val", "test")}
    lap("digests")
    genimage, gi_rows = _write_genimage(root / "GenImage", seed, s)
    lap("genimage")
    blip2_dir = None
    adapters: dict[str, Path] = {}
    if blip2:
        blip2_dir = root / "blip2"
        _write_blip2(blip2_dir, seed)
        lap("blip2")
        for i, (gen, name) in enumerate(AUTHORS_ADAPTERS.items()):
            adapters[gen] = write_authors_adapter(root / "VLM-DETECT" / "weights" / name,
                                                  blip2_dir, seed=1000 * seed + i)
        lap("adapters")
    weights = {}
    for name in timm_models:
        (root / "timm").mkdir(exist_ok=True)
        weights[name] = root / "timm" / f"{name}.safetensors"
        _write_timm(weights[name], name, seed)
        lap(f"timm_{name}")
    n_gen = len(RICKER_GENERATORS)
    ricker_rows = (n_gen * (s.lsun_train + s.train_fakes + s.lsun_val + s.val_fakes)
                   + n_gen * (s.test_reals + s.test_fakes))
    return World(
        root=root, seed=seed, sizes=s, record=RECORD, record_dir=root / "zenodo",
        record_files=record_files, root_name=ROOT_NAME, generators=RICKER_GENERATORS,
        lmdb=root / "bedroom_train_lmdb", lmdb_records=n_records, genimage=genimage,
        blip2=blip2_dir, blip2_cfg=dict(BLIP2_CFG), adapters=adapters, timm_weights=weights,
        digests=digests,
        manifest_rows={"ricker": ricker_rows, "genimage_sd14": gi_rows["SD14"],
                       "genimage_glide": gi_rows["GLIDE"]},
        seconds=secs)


@contextmanager
def serve_world(world: World, faults: tuple[str, ...] = ("cut",), host: str = "127.0.0.1",
                port: int = 0) -> Iterator[Zenodo]:
    """Serve the world's record from a loopback fake Zenodo; every file gets ``faults``
    on its first requests (default: the first download is cut halfway)."""
    state = Zenodo(world.record)
    for key in sorted(world.record_files):
        state.add(key, (world.record_dir / key).read_bytes(), *faults)
    with serve(state, host, port) as state:
        world.base_url = state.base
        try:
            yield state
        finally:
            world.base_url = ""


# -- the overlay --------------------------------------------------------------------------

#: The config keys an overlay on paper.yaml may set: scale and places only (``*`` is any
#: detector, dataset or training generator). Places: the BLIP-2 base of ``bilora`` and
#: ``bilora_authors`` and each of the authors' adapter folders (the world's, in their
#: published form). A test holds overlay_for to it; another world built independently uses
#: the same keys.
OVERLAY_KEYS = (
    "run", "device", "threads", "data.root", "data.num_workers",
    "data.sample.train_per_class", "data.sample.test_fakes_per_generator",
    "data.datasets.ricker.zenodo.base_url", "data.datasets.ricker.lsun.lmdb",
    "data.datasets.ricker.lsun.skip", "data.datasets.ricker.lsun.train_per_generator",
    "data.datasets.ricker.lsun.val_per_generator", "data.datasets.ricker.lsun.size",
    "data.datasets.ricker.digests.train", "data.datasets.ricker.digests.val",
    "data.datasets.ricker.digests.test", "data.datasets.*.path",
    "detectors.bilora.base_model.name_or_path",
    "detectors.bilora_authors.base_model.name_or_path",
    "detectors.bilora_authors.weights.checkpoints.*", "detectors.*.pretrained_file",
    "detectors.*.image_size", "detectors.*.train.epochs", "detectors.*.train.batch_size",
    "detectors.*.eval.batch_size", "evaluation.perturbations.downscale",
    "evaluation.group_jobs", "evaluation.attacks.max_images", "evaluation.attacks.train")
#: The attack grid of a rehearsal: the config's grid on a few images of one training
#: generator's cells (scale: fewer images and cells, the same attacks and transfer).
REHEARSAL_ATTACKS = {"max_images": 4, "train": ["LDM"]}


def overlay_for(world: World, base_url: str | None = None, *, run: str = "paper-rehearsal",
                data_root: str = "data/paper-rehearsal", epochs: int = 1,
                train_batch: int = 16, eval_batch: int = 64, threads: int = 1,
                timm_sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """A config overlay for paper.yaml that changes only scale and places (OVERLAY_KEYS):
    counts, epochs, batch sizes, image sizes, device, threads, job count, the BLIP-2 base
    path (of bilora and bilora_authors), the authors'-form adapter folders, the record's
    URL, the LMDB and GenImage folders, local baseline weights, and the world's own folder
    digests (the published ones cannot match a miniature; the checks keep the paper
    config's modes), and the attack grid on 4 images of the LDM cells (REHEARSAL_ATTACKS)."""
    base_url = base_url or world.base_url
    if not base_url:
        raise ValueError("no base_url: serve the world (serve_world) or pass base_url")
    s = world.sizes
    # paper: 224 and 299 px inputs for 256 px images; the same ratios at this size
    timm_sizes = timm_sizes or {"resnet50": round(224 * s.size / 256),
                                "xception": round(299 * s.size / 256)}
    lsun = {k: v for k, v in world.lsun.items() if k != "order"}
    names = {"resnet50": "resnet50", "xception": "legacy_xception"}

    def timm(det: str) -> dict[str, Any]:
        out: dict[str, Any] = {"image_size": timm_sizes[det],
                               "train": {"epochs": epochs, "batch_size": train_batch},
                               "eval": {"batch_size": eval_batch}}
        if names[det] in world.timm_weights:
            out["pretrained_file"] = str(world.timm_weights[names[det]])
        return out

    detectors: dict[str, Any] = {"resnet50": timm("resnet50"), "xception": timm("xception")}
    if world.blip2 is not None:
        detectors["bilora"] = {"base_model": {"name_or_path": str(world.blip2)},
                               "train": {"epochs": epochs, "batch_size": train_batch},
                               "eval": {"batch_size": eval_batch}}
    if world.blip2 is not None and world.adapters:
        detectors["bilora_authors"] = {
            "base_model": {"name_or_path": str(world.blip2)},
            "weights": {"checkpoints": {g: str(p) for g, p in world.adapters.items()}},
            "eval": {"batch_size": eval_batch}}
    return {
        "run": run,
        "device": "cpu",
        "threads": threads,
        "data": {
            "root": data_root,
            "num_workers": 0,
            # the paper's 39,000 / 10,000 at this scale: GenImage's larger splits are sampled
            "sample": {"train_per_class": min(s.lsun_train, s.train_fakes),
                       "test_fakes_per_generator": s.test_fakes},
            "datasets": {
                "ricker": {"zenodo": {"base_url": base_url}, "lsun": lsun,
                           "digests": dict(world.digests)},
                "genimage_sd14": {"path": str(world.genimage["SD14"])},
                "genimage_glide": {"path": str(world.genimage["GLIDE"])},
            },
        },
        "detectors": detectors,
        # paper: downscale 256 px images to 112; the same ratio at this size. One scoring
        # job for the Bi-LoRA group (the paper spreads it over 8 GPUs)
        "evaluation": {"perturbations": {"downscale": [max(1, round(112 * s.size / 256))]},
                       "group_jobs": 1, "attacks": copy.deepcopy(REHEARSAL_ATTACKS)},
    }


#: What an overlay on workflow/config/field.yaml may set besides OVERLAY_KEYS: the
#: generators lists (scale: fewer cells; a trimmed training generator's checkpoint is dropped
#: with a null entry), the CLIP detectors' tower (the world's tiny CLIP: a place) and each
#: released checkpoint's place ({url, size, sha256} of the file the loopback server serves).
FIELD_OVERLAY_KEYS = OVERLAY_KEYS + (
    "generators.train", "generators.test", "detectors.*.base_model.name_or_path",
    "detectors.*.weights.checkpoints.*")
#: The tiny CLIP vision tower of a field rehearsal (baselines/_clip geometry keys): 28 px
#: inputs for 32 px images, as ViT-L/14's 224 for the paper's 256.
CLIP_TINY = {"width": 32, "layers": 1, "heads": 2, "patch_size": 7, "image_size": 28,
             "projection_dim": 16}


def write_tiny_clip(path: str | Path, seed: int = 0) -> Path:
    """A tiny random CLIP vision tower with projection (CLIP_TINY) and its image processor,
    saved with ``save_pretrained``: what ``openai/clip-vit-large-patch14`` is, in small."""
    from baselines._clip import build_tiny

    return build_tiny({"tiny": CLIP_TINY}, path, seed)


def field_overlay_for(world: World, clip: str | Path, released: dict[str, dict[str, Any]],
                      train: list[str], test: list[str], **kw: Any) -> dict[str, Any]:
    """A config overlay for field.yaml that changes only scale and places
    (FIELD_OVERLAY_KEYS): :func:`overlay_for`'s, the generators lists (``train``, ``test``;
    checkpoints of the training generators left out are dropped with null), the CLIP
    detectors' tower ``clip`` and the released checkpoints ``released`` (detector ->
    generator -> ``{url, size, sha256}``). ``kw`` goes to overlay_for."""
    kw = {"run": "field-rehearsal", "data_root": "data/field-rehearsal", **kw}
    over = overlay_for(world, **kw)
    epochs, train_batch = kw.get("epochs", 1), kw.get("train_batch", 16)
    eval_batch = kw.get("eval_batch", 64)
    dets = over["detectors"]
    authors = dets["bilora_authors"]["weights"]["checkpoints"]
    dets["bilora_authors"]["weights"]["checkpoints"] = {
        g: p if g in train else None for g, p in authors.items()}
    trained = {"train": {"epochs": epochs, "batch_size": train_batch},
               "eval": {"batch_size": eval_batch}}
    for det in ("univfd", "clip_lora"):
        dets[det] = {"base_model": {"name_or_path": str(clip)}, **copy.deepcopy(trained)}
    dets["npr"] = {"image_size": round(224 * world.sizes.size / 256), **copy.deepcopy(trained)}
    for det, ckpts in released.items():
        dets[det] = {"base_model": {"name_or_path": str(clip)},
                     "weights": {"checkpoints": copy.deepcopy(ckpts)},
                     "eval": {"batch_size": eval_batch}}
    over["generators"] = {"train": list(train), "test": list(test)}
    return over


def rehearse(world: World, overlay: dict[str, Any], work: str | Path, cores: int = 2,
             paper: str | Path | None = None, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess:
    """Run ``snakemake --cores N all --configfile paper.yaml overlay.yaml`` in ``work``
    while the world is served; returns the finished process (output in ``.stdout``).
    ``paper``: another complete config in paper.yaml's place (field.yaml).

    Jobs run ``python3`` from this interpreter's folder, with HF_HUB_OFFLINE=1 and ``env``.
    """
    import yaml

    repo = Path(__file__).resolve().parents[1]
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "overlay.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    env = {**os.environ, **(env or {}), "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(repo / "Snakefile"),
           "--directory", str(work), "--cores", str(cores), "all", "--configfile",
           str(paper or repo / "workflow" / "config" / "paper.yaml"), str(work / "overlay.yaml")]
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env)


def main(argv: list[str] | None = None) -> int:
    """Build a world (the rehearsal's counts) into DIR, write DIR/overlay.yaml and
    DIR/world.json; with --serve, serve its record until interrupted."""
    import yaml

    ap = argparse.ArgumentParser(prog="python -m tests.miniworld", description=main.__doc__)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=Sizes.size)
    ap.add_argument("--serve", action="store_true")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--no-faults", action="store_true", help="do not cut first downloads")
    args = ap.parse_args(argv)
    world = build_world(args.dir, args.seed, size=args.size, **REHEARSAL_SIZES)
    (args.dir / "world.json").write_text(world.to_json() + "\n")
    print(f"world built in {sum(world.seconds.values()):.1f} s: {world.seconds}")
    with serve_world(world, () if args.no_faults else ("cut",), port=args.port) as state:
        (args.dir / "overlay.yaml").write_text(yaml.safe_dump(overlay_for(world),
                                                              sort_keys=False))
        print(f"record {world.record} at {state.base}; overlay: {args.dir / 'overlay.yaml'}",
              flush=True)
        if args.serve:
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
