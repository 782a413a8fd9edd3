"""Miniatures of the field's other test sets, with their exact published names, for the
GenImage and cross-dataset rehearsals (built in a second or two, deterministic per seed).

* :func:`write_genimage_full`: GenImage's eight ``<Generator>/<subfolder>`` folders as
  published, each ``{train,val}/{ai,nature}`` (:data:`GENIMAGE_FOLDERS`), the paper
  world's own GenImage writer at every folder;
* :func:`write_synthbuster`: ``synthbuster.zip`` (``synthbuster/<generator>/r<id>t.png`` for
  the nine generators) and ``real_RAISE_1k.zip`` (``real_RAISE_1k/r<id>t.png``, the same
  ids), PNG on both sides, as Zenodo record 10066460 and the GRIP server hold them;
* :func:`write_community_forensics`: Hugging Face parquet shards ``data/*.parquet`` whose
  rows hold ``image_name``, ``format``, ``resolution``, the image bytes (``image_data``),
  ``model_name``, ``prompt`` and ``label``, as ``OwensLab/CommunityForensics-Small``
  ships them (FIELD.md section 3);
* :func:`write_cnndetection`: CNNDetection's ``test/<g>/{0_real,1_fake}`` and
  ``test/<g>/<category>/{0_real,1_fake}`` trees (the ``folder`` layout).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

from tests.miniworld import Sizes, _png, _rng, _write_genimage, _write_zip, fake_pixels, real_pixels

#: GenImage's generator folders as published (GenImage-Dataset/GenImage), by the ids
#: workflow/config/genimage.yaml gives them; the factor scales the fakes' side (SD and
#: Wukong 512 px, Midjourney 1024, the others 256 or 128 (BigGAN)).
GENIMAGE_FOLDERS = {
    "SD14": ("stable_diffusion_v_1_4/imagenet_ai_0419_sdv4", 2),
    "SD15": ("stable_diffusion_v_1_5/imagenet_ai_0424_sdv5", 2),
    "ADM": ("ADM/imagenet_ai_0508_adm", 1),
    "BigGAN": ("BigGAN/imagenet_ai_0419_biggan", 1),
    "Midjourney": ("Midjourney/imagenet_midjourney", 3),
    "GLIDE": ("glide/imagenet_glide", 1),
    "VQDM": ("VQDM/imagenet_ai_0419_vqdm", 1),
    "Wukong": ("wukong/imagenet_ai_0424_wukong", 2),
}
SYNTHBUSTER_GENERATORS = ("dalle2", "dalle3", "firefly", "glide", "midjourney-v5",
                          "stable-diffusion-1-3", "stable-diffusion-1-4", "stable-diffusion-2",
                          "stable-diffusion-xl")
#: Community Forensics' ``model_name`` values of the miniature (one with a ``/``, as the
#: hub ids are) and the real sources its reals come from.
CF_GENERATORS = ("stabilityai/stable-diffusion-2", "runwayml/stable-diffusion-v1-5",
                 "DALLE2")
CF_REAL_SOURCES = ("FFHQ", "COCO")
CNNDETECTION = {"san": (), "crn": (), "progan": ("airplane", "cat")}


def write_genimage_full(root: str | Path, seed: int, sizes: Sizes) -> dict[str, Path]:
    """The eight GenImage folders under ``root``; returns generator id -> its folder."""
    paths, _ = _write_genimage(Path(root), seed, sizes, GENIMAGE_FOLDERS)
    return paths


def raise_ids(seed: int, n: int) -> list[str]:
    """``n`` RAISE-like image ids (``r`` + 8 hex digits + ``t``)."""
    return [f"r{hashlib.sha1(f'raise-{seed}-{i}'.encode()).hexdigest()[:8]}t"
            for i in range(n)]


def write_synthbuster(root: str | Path, seed: int, size: int = 32, per_generator: int = 3
                      ) -> dict[str, Path]:
    """``synthbuster.zip`` and ``real_RAISE_1k.zip`` under ``root``; returns name -> path.
    Every generator renders the same ``per_generator`` RAISE ids (as Synthbuster does)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ids = raise_ids(seed, per_generator)
    fakes = {f"synthbuster/{g}/{i}.png": _png(fake_pixels(_rng(seed, "sb", g, i), size, size))
             for g in SYNTHBUSTER_GENERATORS for i in ids}
    reals = {f"real_RAISE_1k/{i}.png": _png(real_pixels(_rng(seed, "raise", i), size * 2,
                                                         size * 3 // 2)) for i in ids}
    out = {"synthbuster.zip": root / "synthbuster.zip",
           "real_RAISE_1k.zip": root / "real_RAISE_1k.zip"}
    _write_zip(out["synthbuster.zip"], fakes)
    _write_zip(out["real_RAISE_1k.zip"], reals)
    return out


def _jpeg(img: Any, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_community_forensics(root: str | Path, seed: int, size: int = 32,
                              per_generator: int = 4, reals_per_source: int = 3,
                              shards: int = 2) -> Path:
    """A Community Forensics miniature: ``root/data/train-0000k-of-0000n.parquet``, rows
    spread over the shards in turn; fakes PNG, reals JPEG (as the set's photos are)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []

    def row(data: bytes, fmt: str, name: str, model: str, label: int) -> dict[str, Any]:
        from PIL import Image

        w, h = Image.open(io.BytesIO(data)).size
        return {"image_name": name, "format": fmt, "resolution": f"{w}x{h}",
                "image_data": data, "model_name": model, "prompt": "" if label == 0 else
                "a photo", "label": label}

    for g in CF_GENERATORS:
        for i in range(per_generator):
            data = _png(fake_pixels(_rng(seed, "cf", g, i), size, size))
            rows.append(row(data, "PNG", f"{g.replace('/', '_')}_{i:05d}.png", g, 1))
    for src in CF_REAL_SOURCES:
        for i in range(reals_per_source):
            data = _jpeg(real_pixels(_rng(seed, "cf", src, i), size + 8, size))
            rows.append(row(data, "JPEG", f"{src.lower()}_{i:05d}.jpg", src, 0))
    out = Path(root) / "data"
    out.mkdir(parents=True, exist_ok=True)
    for k in range(shards):
        part = rows[k::shards]
        table = pa.Table.from_pylist(part, schema=pa.schema([
            ("image_name", pa.string()), ("format", pa.string()), ("resolution", pa.string()),
            ("image_data", pa.binary()), ("model_name", pa.string()), ("prompt", pa.string()),
            ("label", pa.int64())]))
        pq.write_table(table, out / f"train-{k:05d}-of-{shards:05d}.parquet")
    return Path(root)


def write_cnndetection(root: str | Path, seed: int, size: int = 32, per_class: int = 2
                       ) -> Path:
    """CNNDetection's ``test/`` tree under ``root`` (:data:`CNNDETECTION`); returns it."""
    test = Path(root) / "test"
    for g, categories in CNNDETECTION.items():
        for cat in categories or ("",):
            for sub, pixels in (("0_real", real_pixels), ("1_fake", fake_pixels)):
                folder = test / g / cat / sub
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(per_class):
                    img = pixels(_rng(seed, "cnn", g, cat, sub, i), size, size)
                    (folder / f"{i:03d}.png").write_bytes(_png(img))
    return test
