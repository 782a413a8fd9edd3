"""The paper's test sets: every generator's fakes scored against one shared real set.

A GenImage subset (SD v1.4 here) organized with ``test_reals_from`` takes the Ricker
manifest's shared test reals instead of its own ImageNet ``nature`` images; per-class caps
are seeded samples recorded in the manifest; LSUN can provide further train blocks.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bilora.cli import main
from bilora.data.lsun import Plan
from bilora.data.manifest import Entry, sample_entries, sampling_notes


def _png(path: Path, seed: int, size=(12, 12), fmt="PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3)).astype(np.uint8)
    Image.fromarray(arr).save(path, format=fmt, **({"quality": 70} if fmt == "JPEG" else {}))


@pytest.fixture()
def world(tmp_path):
    """A Ricker test split (2 generators, 5 shared reals) and a GenImage SD v1.4 subset."""
    ricker = tmp_path / "data" / "ricker"
    root = ricker / "raw" / "diffusion_model_deepfakes_lsun_bedroom"
    for i in range(5):
        _png(root / f"test/Real/{i:05d}.png", i)
    for g in ("ADM", "LDM"):
        for i in range(6):
            _png(root / f"test/{g}/{i:05d}.png", 100 + i)
    sd = tmp_path / "GenImage" / "sd14"
    for split, n_ai, n_nature in (("train", 9, 7), ("val", 14, 4)):
        for i in range(n_ai):
            _png(sd / split / "ai" / f"{i}.png", 200 + i, (16, 16))
        for i in range(n_nature):
            _png(sd / split / "nature" / f"n_{i}.JPEG", 300 + i, (20, 13), "JPEG")
    assert main(["organize", "--layout", "ricker", "--source", str(ricker / "raw"),
                 "--dataset-dir", str(ricker), "--generators", "ADM", "LDM", "--splits",
                 "test", "--max-rejected-fraction", "0", "--out",
                 str(ricker / "manifest.parquet"), "--quiet"]) == 0
    return tmp_path, ricker / "manifest.parquet", sd


def _organize(tmp_path, sd, *extra):
    out = tmp_path / "data" / "sd14" / "manifest.parquet"
    args = ["organize", "--layout", "genimage", "--source", str(sd), "--dataset-dir",
            str(out.parent), "--generator", "SD14", "--split-map", "train=train,val=test",
            "--max-rejected-fraction", "0", "--out", str(out), "--quiet", *extra]
    assert main(args) == 0
    return out


def test_shared_reals_replace_the_own_test_reals(world):
    tmp_path, ricker, sd = world
    out = _organize(tmp_path, sd, "--test-reals-from", str(ricker),
                    "--test-fakes-per-generator", "10", "--seed", "7")
    df = pd.read_parquet(out)
    test = df[df.split == "test"]
    shared = pd.read_parquet(ricker).query("split == 'test' and label == 0")
    # the reals of SD14's test set are the Ricker reals, by identity (sha1) and file
    assert sorted(test[test.label == 0].sha1) == sorted(shared.sha1.unique())
    assert all(Path(p).is_absolute() and "test/Real" in p for p in test[test.label == 0].path)
    assert not test.path.str.contains("nature").any()
    # 14 fakes available, a seeded sample of 10 kept and recorded
    assert (test.label == 1).sum() == 10
    notes = {(n["split"], n["label"]): n for n in sampling_notes(out)}
    assert notes[("test", 1)] == {"generator": "SD14", "split": "test", "label": 1,
                                  "available": 14, "kept": 10, "cap": 10}
    again = _organize(tmp_path, sd, "--test-reals-from", str(ricker),
                      "--test-fakes-per-generator", "10", "--seed", "7")
    assert sorted(pd.read_parquet(again).sha1) == sorted(df.sha1)  # same seed, same sample
    # the train split keeps its own reals (GenImage nature)
    assert (df[(df.split == "train") & (df.label == 0)].format == "JPEG").all()


def test_own_reals_are_an_option_and_capped_like_the_fakes(world):
    tmp_path, _, sd = world
    out = _organize(tmp_path, sd, "--test-fakes-per-generator", "3",
                    "--train-per-class", "8", "--cap-test-reals")
    df = pd.read_parquet(out)
    counts = df.groupby(["split", "label"]).size().to_dict()
    # train: 9 fakes -> 8, 7 reals (fewer than the cap: all kept); test: 14 -> 3, 4 -> 3
    assert counts == {("test", 0): 3, ("test", 1): 3, ("train", 0): 7, ("train", 1): 8}
    short = [n for n in sampling_notes(out) if n["available"] < n["cap"]]
    assert short == [{"generator": "SD14", "split": "train", "label": 0, "available": 7,
                      "kept": 7, "cap": 8}]
    nature = df[(df.split == "test") & (df.label == 0)]
    assert (nature.format == "JPEG").all() and (nature.jpeg_quality == 70).all()
    assert nature.width.tolist() == [20] * 3 and nature.height.tolist() == [13] * 3


def test_sampling_depends_on_the_seed_only():
    entries = [Entry(f"{i}.png", i % 2, "G", "test") for i in range(40)]
    a, _ = sample_entries(entries, {("test", 1): 5}, seed=1, dataset="d")
    b, _ = sample_entries(list(reversed(entries)), {("test", 1): 5}, seed=1, dataset="d")
    c, _ = sample_entries(entries, {("test", 1): 5}, seed=2, dataset="d")
    fakes = lambda xs: sorted(e.path for e in xs if e.label == 1)  # noqa: E731
    assert len(fakes(a)) == 5 and sum(e.label == 0 for e in a) == 20
    assert fakes(a) != fakes(c)
    assert len(fakes(b)) == 5  # input order is part of the draw; the count is not


def test_a_real_set_listed_under_every_generator_gets_one_sample():
    reals = [Entry(f"Real/{i}.png", 0, g, "test") for g in ("A", "B") for i in range(30)]
    kept, _ = sample_entries(reals, {("test", 0): 10}, seed=3, dataset="ricker")
    by_gen = {g: sorted(e.path for e in kept if e.generator == g) for g in ("A", "B")}
    assert len(by_gen["A"]) == 10 and by_gen["A"] == by_gen["B"]


def test_lsun_extra_blocks_follow_every_ricker_block():
    plan = Plan(("ADM", "DDPM"), skip=3, train_per_generator=4, val_per_generator=2,
                extra=("SD14", "GLIDE"))
    assert plan.ricker_end == 3 + 2 * 6 and plan.total == 15 + 2 * 4
    assert plan.target(14) == ("val", "DDPM")
    assert plan.target(15) == ("extra", "SD14") and plan.target(19) == ("extra", "GLIDE")
    assert plan.target(23) is None
    assert plan.folder("extra", "GLIDE") == "../lsun_extra/train/GLIDE/0_real"
    # the Ricker blocks are where they are without extras: their digests cannot change
    plain = Plan(("ADM", "DDPM"), skip=3, train_per_generator=4, val_per_generator=2)
    assert [plain.target(i) for i in range(15)] == [plan.target(i) for i in range(15)]


def test_lsun_train_reals_for_genimage(world, tmp_path):
    import hashlib

    import lmdb

    path = tmp_path / "lmdb"
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(3 + 2 * 6 + 4):
            buf = io.BytesIO()
            Image.new("RGB", (16, 20), (i, 10, 10)).save(buf, format="PNG")
            txn.put(hashlib.sha1(str(i).encode()).hexdigest().encode(), buf.getvalue())
    env.close()
    _, _, sd = world
    raw = tmp_path / "data" / "ricker" / "raw" / "diffusion_model_deepfakes_lsun_bedroom"
    assert main(["rebuild-lsun-real", "--lmdb", str(path), "--dest", str(raw), "--skip", "3",
                 "--train-per-generator", "4", "--val-per-generator", "2", "--size", "16",
                 "--generators", "ADM", "DDPM", "--extra-generators", "SD14", "--quiet"]) == 0
    extra = raw.parent / "lsun_extra"
    assert sorted(p.name for p in (extra / "train/SD14/0_real").iterdir()) == [
        f"{i:08}.png" for i in range(15, 19)]
    marker = json.loads((raw / "lsun_real.done.json").read_text())
    assert marker["params"]["extra"] == ["SD14"]
    out = _organize(tmp_path, sd, "--train-reals-dir", str(extra))
    train = pd.read_parquet(out).query("split == 'train'")
    assert (train.label == 0).sum() == 4 and train[train.label == 0].path.str.contains(
        "lsun_extra").all()
