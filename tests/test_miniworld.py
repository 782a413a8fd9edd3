"""The miniature world: well-formed, and usable by the project's data commands as is."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import lmdb
import pandas as pd
import pytest
import yaml
from PIL import Image

from bilora import config as C
from bilora.cli import main
from tests.miniworld import (
    ARCHIVES,
    OVERLAY_KEYS,
    RICKER_GENERATORS,
    ROOT_NAME,
    Sizes,
    build_world,
    overlay_for,
    serve_world,
)
from tests.zenodo_server import Zenodo, serve

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "workflow" / "config" / "paper.yaml"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A world without the timm weights (their test builds its own)."""
    return build_world(tmp_path_factory.mktemp("world"), seed=0, timm_models=())


@pytest.fixture(scope="module")
def pipeline(world, tmp_path_factory):
    """fetch-zenodo (first download of every file cut halfway), extract --from-fetch and
    rebuild-lsun-real, as the paper config's rules run them; returns (run dir, server)."""
    run = tmp_path_factory.mktemp("run")
    with serve_world(world) as server:
        assert main(["fetch-zenodo", "--base-url", server.base, "--record", world.record,
                     "--lock", str(run / "lock.json"), "--dest", str(run / "archives"),
                     "--backoff-factor", "0", "--quiet"]) == 0
    assert main(["extract", "--from-fetch", str(run / "archives" / "fetch.done.json"),
                 "--dest", str(run / "raw"), "--done", str(run / "extract.done.json")]) == 0
    lsun = world.lsun
    assert main(["rebuild-lsun-real", "--lmdb", lsun["lmdb"],
                 "--dest", str(run / "raw" / ROOT_NAME),
                 "--skip", str(lsun["skip"]), "--train-per-generator",
                 str(lsun["train_per_generator"]), "--val-per-generator",
                 str(lsun["val_per_generator"]), "--size", str(lsun["size"]), "--generators",
                 *lsun["order"], "--quiet"]) == 0
    return run, server


def test_same_seed_same_world_other_seed_other_world(world, tmp_path):
    t0 = time.perf_counter()
    again = build_world(tmp_path / "a", seed=0, timm_models=(), blip2=False)
    seconds = time.perf_counter() - t0
    assert again.record_files == world.record_files and again.digests == world.digests
    other = build_world(tmp_path / "b", seed=1, timm_models=(), blip2=False)
    assert not set(other.record_files.items()) & set(world.record_files.items()) - {
        ("README.md", world.record_files["README.md"])}
    assert set(other.digests.values()).isdisjoint(world.digests.values())
    assert seconds < 5  # measured 0.2-0.3 s (images, archives, LMDB, GenImage)


def test_record_is_ricker_shaped(world):
    s = world.sizes
    assert set(world.record_files) == {*ARCHIVES, "README.md"}
    names: dict[str, list[str]] = {}
    for key in ARCHIVES:
        path = world.record_dir / key
        assert hashlib.md5(path.read_bytes()).hexdigest() == world.record_files[key]
        if key.endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                names[key] = [n for n in zf.namelist() if not n.endswith("/")]
        else:
            with tarfile.open(path) as tf:
                names[key] = [m.name for m in tf.getmembers() if m.isfile()]
    assert all(n.startswith(f"{ROOT_NAME}/") for ns in names.values() for n in ns)
    test = [n.split("/")[2] for n in names[f"{ROOT_NAME}_test.zip"]]
    assert {g: test.count(g) for g in set(test)} == {
        **{g: s.test_fakes for g in RICKER_GENERATORS}, "Real": s.test_reals}
    val = names[f"{ROOT_NAME}_val.zip"]
    assert len(val) == 10 * s.val_fakes and all(n.split("/")[3] == "1_fake" for n in val)
    train = (names[f"{ROOT_NAME}_train_part1.tar.gz"]
             + names[f"{ROOT_NAME}_train_part2.tar.gz"])
    assert sorted({n.split("/")[2] for n in train}) == sorted(RICKER_GENERATORS)
    assert len(train) == 10 * s.train_fakes and all(n.split("/")[3] == "1_fake" for n in train)
    with zipfile.ZipFile(world.record_dir / f"{ROOT_NAME}_test.zip") as zf:
        img = Image.open(io.BytesIO(zf.read(f"{ROOT_NAME}/test/ADM/00000.png")))
        assert img.format == "PNG" and img.size == (s.size, s.size)


def test_lmdb_is_lsun_shaped(world):
    s = world.sizes
    env = lmdb.open(str(world.lmdb), readonly=True, lock=False)
    formats, modes = set(), set()
    with env.begin() as txn:
        keys = [bytes(k) for k, _ in txn.cursor()]
        for _, v in txn.cursor():
            img = Image.open(io.BytesIO(bytes(v)))
            formats.add(img.format)
            modes.add(img.mode)
            assert min(img.size) == s.size and max(img.size) > s.size, img.size
    env.close()
    assert len(keys) == world.lmdb_records == 4 + 10 * 8 + 6
    assert all(len(k) == 40 and int(k, 16) >= 0 for k in keys)
    assert formats == {"JPEG", "WEBP"} and modes == {"RGB", "L"}


def test_fetch_resumes_every_cut_download(world, pipeline):
    run, server = pipeline
    done = json.loads((run / "archives" / "fetch.done.json").read_text())
    assert sorted(f["key"] for f in done["files"]) == sorted(world.record_files)
    for key in world.record_files:
        first, second = server.requests_for(key)
        assert "Range" not in first[2]
        half = len(server.files[key]) // 2
        assert second[2]["Range"] == f"bytes={half}-", key
        assert (run / "archives" / key).read_bytes() == server.files[key]
    extracted = json.loads((run / "extract.done.json").read_text())["archives"]
    assert len(extracted) == len(ARCHIVES)  # README.md skipped: not an archive


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_tree_digests_match_the_worlds_expectation(world, pipeline, split, tmp_path):
    folder = pipeline[0] / "raw" / ROOT_NAME / split
    out = tmp_path / "digest.txt"
    assert main(["tree-digest", str(folder), "--expect", world.digests[split],
                 "--out", str(out)]) == 0
    assert out.read_text() == world.digests[split] + "\n"


@pytest.mark.skipif(not all(map(shutil.which, ["find", "sort", "xargs", "sha1sum"])),
                    reason="needs the coreutils the authors' pipeline uses")
def test_test_digest_is_the_authors_shell_pipeline(world, pipeline):
    proc = subprocess.run("find test -type f -print0 | LC_ALL=C sort -z | xargs -0 sha1sum "
                          "| cut -d' ' -f1 | sha1sum", shell=True, capture_output=True, text=True,
                          cwd=pipeline[0] / "raw" / ROOT_NAME, check=True)
    assert proc.stdout.split()[0] == world.digests["test"]


def test_organize_ricker(world, pipeline):
    run = pipeline[0]
    out = run / "ricker" / "manifest.parquet"
    assert main(["organize", "--layout", "ricker", "--source", str(run / "raw" / ROOT_NAME),
                 "--dataset-dir", str(run / "ricker"), "--generators", *RICKER_GENERATORS,
                 "--max-rejected-fraction", "0", "--out", str(out), "--quiet"]) == 0
    df = pd.read_parquet(out)
    s = world.sizes
    assert len(df) == world.manifest_rows["ricker"]
    counts = df.groupby(["split", "label"]).size().to_dict()
    assert counts == {("train", 0): 10 * s.lsun_train, ("train", 1): 10 * s.train_fakes,
                      ("val", 0): 10 * s.lsun_val, ("val", 1): 10 * s.val_fakes,
                      ("test", 0): 10 * s.test_reals, ("test", 1): 10 * s.test_fakes}
    assert df[(df.split == "test") & (df.label == 0)].path.nunique() == s.test_reals
    assert pd.read_csv(run / "ricker" / "rejects.csv").empty


@pytest.mark.parametrize("generator", ["SD14", "GLIDE"])
def test_organize_genimage(world, generator, tmp_path):
    out = tmp_path / generator / "manifest.parquet"
    assert main(["organize", "--layout", "genimage", "--source", str(world.genimage[generator]),
                 "--dataset-dir", str(out.parent), "--generator", generator, "--split-map",
                 "train=train,val=test", "--max-rejected-fraction", "0", "--out", str(out),
                 "--quiet"]) == 0
    df = pd.read_parquet(out)
    s = world.sizes
    assert len(df) == world.manifest_rows[f"genimage_{generator.lower()}"]
    assert df.groupby(["split", "label"]).size().to_dict() == {
        ("train", 0): s.genimage_train, ("train", 1): s.genimage_train,
        ("test", 0): s.genimage_val, ("test", 1): s.genimage_val}
    nature = [Image.open(p) for p in df[df.label == 0].path]
    assert len({im.size for im in nature}) > 3
    assert {im.mode for im in nature} >= {"RGB", "L", "CMYK"}
    assert {im.format for im in nature} == {"JPEG", "PNG"}
    ai = {Image.open(p).size for p in df[df.label == 1].path}
    assert ai == {(s.size * (2 if generator == "SD14" else 1),) * 2}


def test_tiny_blip2_loads_from_its_path_at_224(world):
    import torch
    from transformers import AutoProcessor, Blip2ForConditionalGeneration

    model = Blip2ForConditionalGeneration.from_pretrained(world.blip2).eval()
    processor = AutoProcessor.from_pretrained(world.blip2)
    assert processor.image_processor.size == {"height": 224, "width": 224}
    assert model.config.vision_config.image_size == 224
    assert model.config.vision_config.patch_size == 32
    images = [Image.open(p).convert("RGB") for p in sorted(
        (world.genimage["GLIDE"] / "val" / "ai").iterdir())[:2]]
    batch = processor(images=images, text=["real", "real"], return_tensors="pt")
    assert batch.pixel_values.shape == (2, 3, 224, 224)
    with torch.no_grad():
        logits = model(**batch).logits[:, -1]
    assert (logits[0] - logits[1]).abs().max() > 1e-3  # the image moves the logits


@pytest.mark.slow  # 7 s: a subprocess importing timm
def test_timm_weights_load_offline_through_pretrained_cfg_overlay(tmp_path):
    """Builds the full-size weights and loads them in a fresh process with
    HF_HUB_OFFLINE=1 through the exact call a `pretrained_file` key would make."""
    code = f"""
import sys, time, torch, timm
from safetensors.torch import load_file
from tests.miniworld import build_world
t = time.perf_counter()
w = build_world({str(tmp_path)!r}, blip2=False, lsun_margin=0)
print("built", round(time.perf_counter() - t, 2), w.seconds)
for name, path in w.timm_weights.items():
    m = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                          num_classes=2).eval()
    sd = load_file(str(path))
    assert sd["conv1.weight"].dtype == torch.float16
    assert torch.equal(m.conv1.weight, sd["conv1.weight"].float()), name
    assert m.get_classifier().out_features == 2
    full = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(full.get_classifier().weight, sd["fc.weight"].float()), name
    with torch.no_grad():
        out = m(torch.randn(4, 3, 32, 32))
    print(name, path.stat().st_size, float(out.abs().max()))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    for name, params in (("resnet50", 25_557_032), ("legacy_xception", 22_855_952)):
        size, peak = lines[name].split()
        assert 2 * params < int(size) < 2 * params * 1.05  # fp16: two bytes per parameter
        assert float(peak) < 20  # calibrated BatchNorm: no exploding activations (measured < 1)


def test_fakes_and_reals_are_learnable(world, pipeline):
    """A 3-layer CNN learns the world's real/fake cue in about a second, across families
    and image sizes (every image resized to 32 px, as the data loader does)."""
    import numpy as np
    import torch

    root = pipeline[0] / "raw" / ROOT_NAME

    def load(paths: list[Path], label: int) -> list[tuple[torch.Tensor, int]]:
        out = []
        for p in paths:
            img = Image.open(p).convert("RGB").resize((32, 32), Image.BICUBIC)
            out.append((torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255, label))
        return out

    gi = world.genimage
    train = (load(sorted(root.glob("train/*/0_real/*.png")), 0)
             + load(sorted(root.glob("train/*/1_fake/*.png")), 1)
             + [x for g in gi.values() for x in load(sorted((g / "train/nature").iterdir()), 0)]
             + [x for g in gi.values() for x in load(sorted((g / "train/ai").iterdir()), 1)])
    test = (load(sorted(root.glob("test/Real/*.png")), 0)
            + load([p for p in sorted(root.glob("test/*/*.png")) if "/Real/" not in str(p)], 1)
            + [x for g in gi.values() for x in load(sorted((g / "val/nature").iterdir()), 0)]
            + [x for g in gi.values() for x in load(sorted((g / "val/ai").iterdir()), 1)])
    x_tr, y_tr = torch.stack([x for x, _ in train]), torch.tensor([y for _, y in train])
    x_te, y_te = torch.stack([x for x, _ in test]), torch.tensor([y for _, y in test])
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
                        nn.Conv2d(32, 32, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(32, 2))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for epoch in range(25):
            order = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(epoch))
            for i in range(0, len(order), 16):
                idx = order[i:i + 16]
                loss = nn.functional.cross_entropy(net((x_tr[idx] - 0.5) / 0.25), y_tr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            acc = (net((x_te - 0.5) / 0.25).argmax(1) == y_te).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    assert acc >= 0.9, acc  # measured 1.0


def _leaves(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def test_overlay_changes_only_scale_and_places(world):
    import fnmatch

    overlay = overlay_for(world, "http://127.0.0.1:9")
    for leaf in _leaves(overlay):
        assert any(fnmatch.fnmatchcase(leaf, k) for k in OVERLAY_KEYS), leaf
    paper = C.load_yaml(PAPER)
    cfg = C.validate(C.deep_merge(paper, overlay), "paper.yaml + overlay")
    assert C.is_complete(paper)
    ricker = cfg["data"]["datasets"]["ricker"]
    assert ricker["lsun"]["lmdb"] == str(world.lmdb) and ricker["lsun"]["size"] == Sizes.size
    assert ricker["zenodo"] == {**paper["data"]["datasets"]["ricker"]["zenodo"],
                                "lock": None, "base_url": "http://127.0.0.1:9"}
    assert cfg["detectors"]["bilora"]["base_model"] == {"source": "pretrained",
                                                        "name_or_path": str(world.blip2)}
    assert cfg["detectors"]["bilora"]["lora"] == paper["detectors"]["bilora"]["lora"]
    assert cfg["generators"] == paper["generators"]
    yaml.safe_dump(overlay)  # plain data: writable as a --configfile


def test_server_answers_closed_ranges_and_416():
    import urllib3

    state = Zenodo()
    state.add("a.bin", bytes(range(100)))
    with serve(state) as z:
        http = urllib3.PoolManager()
        r = http.request("GET", z.file_url("a.bin"), headers={"Range": "bytes=10-19"})
        assert r.status == 206 and r.data == bytes(range(10, 20))
        assert r.headers["Content-Range"] == "bytes 10-19/100"
        r = http.request("GET", z.file_url("a.bin"), headers={"Range": "bytes=100-"})
        assert r.status == 416
