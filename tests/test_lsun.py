"""LSUN real-half rebuild on a tiny LMDB: order, names, pixels, resumability."""

from __future__ import annotations

import hashlib
import io
import json
import random

import lmdb
import numpy as np
import pytest
from PIL import Image

from bilora.data.lsun import DONE_NAME, LsunError, Plan, rebuild_lsun_real

SIZE = 16
GENS = ["ADM", "DDPM"]
KW = {"skip": 3, "train_per_generator": 4, "val_per_generator": 2, "size": SIZE,
      "progress": False}
# (width, height, format, mode): one side is SIZE, the other varies, odd differences included
SHAPES = [(16, 23, "JPEG", "RGB"), (31, 16, "WEBP", "RGB"), (16, 16, "PNG", "RGB"),
          (16, 40, "JPEG", "L"), (17, 16, "PNG", "RGBA"), (45, 16, "WEBP", "RGB")]


def _image(i: int) -> tuple[bytes, np.ndarray]:
    w, h, fmt, mode = SHAPES[i % len(SHAPES)]
    rng = np.random.default_rng(i)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())))  # what a decoder gives back
    return buf.getvalue(), decoded


def _expected_crop(decoded: np.ndarray) -> np.ndarray:
    """Independent centre crop: the authors' box around (w // 2, h // 2)."""
    h, w = decoded.shape[:2]
    cx, cy = w // 2, h // 2
    return decoded[cy - SIZE // 2: cy + SIZE // 2, cx - SIZE // 2: cx + SIZE // 2]


@pytest.fixture()
def bedroom(tmp_path):
    """An LMDB of 17 records with hex keys written in shuffled order."""
    keys = sorted(hashlib.sha1(str(i).encode()).hexdigest().encode() for i in range(17))
    records = {k: _image(i) for i, k in enumerate(keys)}  # i = position in key order
    order = list(keys)
    random.Random(0).shuffle(order)
    path = tmp_path / "bedroom_train_lmdb"
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for k in order:
            txn.put(k, records[k][0])
    env.close()
    return path, [records[k][1] for k in keys]


def _pngs(dest):
    return sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.png"))


def test_names_order_and_pixels(bedroom, tmp_path):
    lmdb_path, decoded = bedroom
    dest = tmp_path / "ds"
    assert rebuild_lsun_real(lmdb_path, dest, GENS, **KW) == 12
    assert _pngs(dest) == sorted(
        [f"train/ADM/0_real/{i:08}.png" for i in range(3, 7)]
        + [f"val/ADM/0_real/{i:08}.png" for i in (7, 8)]
        + [f"train/DDPM/0_real/{i:08}.png" for i in range(9, 13)]
        + [f"val/DDPM/0_real/{i:08}.png" for i in (13, 14)])
    for png in dest.rglob("*.png"):
        index = int(png.stem)
        with Image.open(png) as img:
            assert img.format == "PNG" and img.size == (SIZE, SIZE)
            np.testing.assert_array_equal(np.asarray(img), _expected_crop(decoded[index]))
    # record 6 is 16x23: the odd difference rounds down, top edge 3 (torchvision's would be 4)
    got = np.asarray(Image.open(dest / "train/ADM/0_real/00000006.png"))
    np.testing.assert_array_equal(got, decoded[6][3:3 + SIZE])
    assert not np.array_equal(got, decoded[6][4:4 + SIZE])
    marker = json.loads((dest / DONE_NAME).read_text())
    assert marker["params"]["generators"] == GENS and marker["images"] == 12
    assert not list(dest.rglob("*.tmp"))


def test_plan_matches_the_paper_numbers():
    plan = Plan(("ADM", "DDPM", "Diff-ProjectedGAN", "Diff-StyleGAN2", "IDDPM", "LDM", "PNDM",
                 "ProGAN", "ProjectedGAN", "StyleGAN"))
    assert plan.total == 410_000
    assert plan.target(9_999) is None and plan.target(410_000) is None
    assert plan.target(10_000) == ("train", "ADM")
    assert plan.target(48_999) == ("train", "ADM") and plan.target(49_000) == ("val", "ADM")
    assert plan.target(50_000) == ("train", "DDPM")
    assert plan.target(243_418) == ("train", "LDM")  # DATASETS.md's example name 00243418.png
    assert plan.target(409_999) == ("val", "StyleGAN")


def test_resumes_and_is_idempotent(bedroom, tmp_path):
    lmdb_path, _ = bedroom
    dest = tmp_path / "ds"
    rebuild_lsun_real(lmdb_path, dest, GENS, **KW)
    first = {p: p.read_bytes() for p in dest.rglob("*.png")}
    assert rebuild_lsun_real(lmdb_path, dest, GENS, **KW) == 0  # marker matches
    # a killed run: marker gone, one PNG missing, a temporary left behind
    (dest / DONE_NAME).unlink()
    victim = dest / "val/DDPM/0_real/00000013.png"
    victim.unlink()
    (victim.parent / "00000014.png.tmp").write_bytes(b"half")
    assert rebuild_lsun_real(lmdb_path, dest, GENS, **KW) == 1
    assert {p: p.read_bytes() for p in dest.rglob("*.png")} == first
    assert not list(dest.rglob("*.tmp")) and (dest / DONE_NAME).exists()


def test_parallel_workers_write_the_same_files(bedroom, tmp_path):
    lmdb_path, _ = bedroom
    rebuild_lsun_real(lmdb_path, tmp_path / "one", GENS, **KW)
    rebuild_lsun_real(lmdb_path, tmp_path / "two", GENS, workers=2, **KW)
    one, two = ({p.relative_to(d): p.read_bytes() for p in d.rglob("*.png")}
                for d in (tmp_path / "one", tmp_path / "two"))
    assert one == two and len(one) == 12


def test_changed_plan_refuses_stale_files(bedroom, tmp_path):
    lmdb_path, _ = bedroom
    dest = tmp_path / "ds"
    rebuild_lsun_real(lmdb_path, dest, GENS, **KW)
    with pytest.raises(LsunError, match=r"train/ADM/0_real holds 1 files .*00000006\.png"):
        rebuild_lsun_real(lmdb_path, dest, GENS, **{**KW, "train_per_generator": 3})


def test_too_small_lmdb_is_named(bedroom, tmp_path):
    lmdb_path, _ = bedroom
    with pytest.raises(LsunError, match=rf"{lmdb_path} has 17 records; the plan needs 21"):
        rebuild_lsun_real(lmdb_path, tmp_path / "ds", GENS, **{**KW, "skip": 9})


def test_undecodable_or_small_record_is_named(tmp_path):
    path = tmp_path / "bad_lmdb"
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"a", b"not an image")
    env.close()
    with pytest.raises(LsunError, match=r"bad_lmdb record 0 \(key b'a'\): cannot decode"):
        rebuild_lsun_real(path, tmp_path / "ds", ["ADM"], skip=0, train_per_generator=1,
                          val_per_generator=0, size=SIZE, progress=False)
    small = io.BytesIO()
    Image.new("RGB", (10, 16)).save(small, format="PNG")
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"a", small.getvalue())
    env.close()
    with pytest.raises(LsunError, match=r"record 0 .*10x16, smaller than 16x16"):
        rebuild_lsun_real(path, tmp_path / "ds", ["ADM"], skip=0, train_per_generator=1,
                          val_per_generator=0, size=SIZE, progress=False)


def test_missing_lmdb_is_named(tmp_path):
    with pytest.raises(LsunError, match=r"LSUN LMDB not found: .*nowhere"):
        rebuild_lsun_real(tmp_path / "nowhere", tmp_path / "ds", GENS, **KW)


def test_cli_default_order_is_the_papers():
    from bilora.cli import build_parser

    args = build_parser().parse_args(["rebuild-lsun-real", "--lmdb", "x", "--dest", "y"])
    # DATASETS.md: the order in which the authors hand out the LSUN records
    assert args.generators == ["ADM", "DDPM", "Diff-ProjectedGAN", "Diff-StyleGAN2", "IDDPM",
                               "LDM", "PNDM", "ProGAN", "ProjectedGAN", "StyleGAN"]
