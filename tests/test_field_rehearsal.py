"""The field config, rehearsed end to end on the miniature world.

``workflow/config/field.yaml`` plus an overlay that changes only scale and places
(``tests.miniworld.FIELD_OVERLAY_KEYS``): the world of ``tests/test_rehearsal.py``, a tiny
random CLIP saved with ``save_pretrained`` in the place of ``openai/clip-vit-large-patch14``,
and UnivFD's released head as a URL checkpoint: an ``fc_weights.pth`` of the tiny CLIP's
shape served by a loopback server, pinned by its size and sha256. As a user on a login node
would, the test first runs ``bilora prefetch --configfile`` on the merged config (the URL
fetched into ``$BILORA_CHECKPOINTS``), then Snakemake with HF_HUB_OFFLINE=1. Trimmed to two
training generators (LDM, ProGAN: the released weights' row) and four test generators, one
epoch, the smallest sizes.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
import yaml

from bilora import config as C
from tests.conftest import PAPER, ROOT
from tests.miniworld import (
    CLIP_TINY,
    FIELD_OVERLAY_KEYS,
    REHEARSAL_SIZES,
    build_world,
    field_overlay_for,
    rehearse,
    serve_world,
    write_tiny_clip,
)
from tests.test_workflow import job_counts
from tests.zenodo_server import serve

FIELD = ROOT / "workflow" / "config" / "field.yaml"
TRAIN = ["LDM", "ProGAN"]
TEST = ["LDM", "ProGAN", "SD14", "StyleGAN"]
RELEASED = {"univfd_released": "fc_weights.pth"}  # detector -> the file the authors publish


def _leaves(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]
    return out


def test_field_keeps_the_papers_data_generators_and_evaluation():
    field, paper = C.load_yaml(FIELD), C.load_yaml(PAPER)
    assert C.is_complete(field)
    for key in ("data", "evaluation", "resources", "seed"):
        if key == "evaluation":  # the field's attacks transfer UnivFD's images too
            f_src = field[key]["attacks"].pop("transfer")["sources"]
            assert f_src == paper[key]["attacks"].pop("transfer")["sources"] + ["univfd"]
        assert field[key] == paper[key], key
    assert field["generators"]["test"] == paper["generators"]["test"]
    assert field["generators"]["train"] == paper["generators"]["train"] + ["ProGAN"]
    assert field["report"]["published"] == paper["report"]["published"]
    for det in ("bilora", "resnet50", "xception"):
        assert field["detectors"][det] == paper["detectors"][det], det
    authors = {k: v for k, v in field["detectors"]["bilora_authors"].items() if k != "label"}
    assert authors == {k: v for k, v in paper["detectors"]["bilora_authors"].items()
                       if k != "label"}
    cfg = C.load(FIELD)
    released = [d for d, s in cfg["detectors"].items() if C.imported(s)]
    assert released == ["bilora_authors", "univfd_released"]
    assert all("(released weights)" in cfg["detectors"][d]["label"] for d in released)
    assert list(C.checkpoints(cfg["detectors"]["univfd_released"])) == ["ProGAN"]


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    root = tmp_path_factory.mktemp("field")
    world = build_world(root / "world", **REHEARSAL_SIZES)
    clip = write_tiny_clip(root / "world" / "clip")
    gen = torch.Generator().manual_seed(3)
    fc = root / "world" / "released" / "fc_weights.pth"  # the authors' layout, tiny width
    fc.parent.mkdir()
    torch.save({"weight": 0.5 * torch.randn(1, CLIP_TINY["projection_dim"], generator=gen),
                "bias": torch.zeros(1)}, fc)
    data = fc.read_bytes()
    work = root / "work"
    cache = root / "checkpoints"
    env = {"BILORA_CHECKPOINTS": str(cache)}
    t0 = time.perf_counter()
    with serve_world(world), serve() as files:
        files.add("fc_weights.pth", data, "cut")  # the first download cut halfway
        released = {"univfd_released": {"ProGAN": {
            "url": files.file_url("fc_weights.pth"), "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}}}
        overlay = field_overlay_for(world, clip, released, TRAIN, TEST)
        work.mkdir()
        merged = work / "field-merged.yaml"  # what a user prefetches for, on a login node
        merged.write_text(yaml.safe_dump(C.deep_merge(C.load_yaml(FIELD), overlay)))
        pre_env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
        pre = subprocess.run([sys.executable, "-m", "bilora.cli", "prefetch", "--configfile",
                              str(merged)], cwd=work, env={**pre_env, **env}, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert pre.returncode == 0, pre.stdout[-4000:]
        proc = rehearse(world, overlay, work, paper=FIELD, env=env)
    wall = time.perf_counter() - t0
    print(f"\nfield rehearsal: {wall:.0f} s wall (prefetch and snakemake) on "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()}")
    assert proc.returncode == 0, proc.stdout[-6000:]
    return world, work, proc.stdout, overlay, released, cache


@pytest.mark.slow
def test_the_overlay_changes_only_scale_and_places(field):
    _, _, _, overlay, _, _ = field
    for leaf in _leaves(overlay):
        assert any(fnmatch.fnmatchcase(leaf, k) for k in FIELD_OVERLAY_KEYS), leaf
    base = C.load_yaml(FIELD)
    cfg = C.validate(C.deep_merge(base, overlay), "field.yaml + overlay")
    for det, sec in base["detectors"].items():
        for key in ("kind", "lora", "label", "dtype", "readout", "captions"):
            assert cfg["detectors"][det].get(key) == sec.get(key) or key not in sec, (det, key)


@pytest.mark.slow
def test_every_detector_is_a_row_and_released_rows_say_so(field):
    _, work, log, _, _, _ = field
    counts = job_counts(log)
    assert counts["import_checkpoint"] == 2 and counts["train_detector"] == 6 * len(TRAIN)
    res = work / "results" / "field-rehearsal"
    cfg = C.load(FIELD)
    labels = C.labels(cfg)
    table = pd.read_csv(res / "tables" / "robustness_accuracy.csv")
    text = table.to_csv()
    for det in cfg["detectors"]:
        assert labels[det] in text, det
        assert (res / "tables" / f"accuracy_matrix_{det}.md").exists(), det
    assert "(released weights)" in labels["univfd_released"]
    assert "(released weights)" in labels["bilora_authors"]
    metrics = pd.read_parquet(res / "metrics.parquet")
    assert set(metrics.detector) == set(cfg["detectors"])
    rel = metrics[metrics.detector == "univfd_released"]
    assert set(rel.train) == {"ProGAN"} and set(rel.test) == set(TEST)
    assert set(metrics[metrics.detector == "bilora_authors"].train) == {"LDM"}


@pytest.mark.slow
def test_the_released_head_came_from_its_url_pinned(field):
    _, work, _, _, released, cache = field
    ckpt = released["univfd_released"]["ProGAN"]
    model = work / "results" / "field-rehearsal" / "univfd_released" / "train=ProGAN" / \
        "seed=42" / "model"
    prov = json.loads((model / "detector.json").read_text())["provenance"]
    assert prov["checkpoint_source"] == ckpt["url"]
    assert json.loads(prov["checkpoint_sha256"]) == {"fc_weights.pth": ckpt["sha256"]}
    assert (cache / ckpt["sha256"] / "fc_weights.pth").stat().st_size == ckpt["size"]
