"""GenImage's protocol and the cross-dataset config, rehearsed end to end on miniatures.

``workflow/config/genimage.yaml`` (train SD v1.4, test GenImage's eight generators) and
``workflow/config/cross-dataset.yaml`` (Ricker, GenImage, Synthbuster, Community Forensics
and CNNDetection) each run with an overlay that changes only scale and places
(:data:`DATASET_OVERLAY_KEYS`) on the paper rehearsal's world plus the miniatures of
``tests/miniworld_datasets.py``, written with the published folder and file names.
Synthbuster comes through a second loopback Zenodo (record 10066460, its zip's first
download cut halfway) and the RAISE reals through the same server's plain download URL;
Community Forensics from parquet shards on disk. The tests read the tables a user reads:
dataset-grouped columns, the pairing table, the format audit.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import time

import pandas as pd
import pytest

from bilora import config as C
from tests.conftest import ROOT
from tests.miniworld import (
    OVERLAY_KEYS,
    REHEARSAL_SIZES,
    build_world,
    overlay_for,
    rehearse,
    serve_world,
)
from tests.miniworld_datasets import (
    CF_GENERATORS,
    GENIMAGE_FOLDERS,
    SYNTHBUSTER_GENERATORS,
    write_cnndetection,
    write_community_forensics,
    write_genimage_full,
    write_synthbuster,
)
from tests.test_workflow import job_counts
from tests.zenodo_server import Zenodo, serve

pytestmark = pytest.mark.slow
GENIMAGE = ROOT / "workflow" / "config" / "genimage.yaml"
CROSS = ROOT / "workflow" / "config" / "cross-dataset.yaml"
#: What these overlays may set besides OVERLAY_KEYS: every dataset's place (its folder, its
#: Zenodo URL, the extra file's URL and the miniature's checksums, Community Forensics' local
#: copy in place of the hub) and, for scale, the generators (fewer cells; a dataset's list
#: trimmed to what its miniature holds).
DATASET_OVERLAY_KEYS = OVERLAY_KEYS + (
    "data.datasets.*.path", "data.datasets.*.zenodo.base_url", "data.datasets.*.hub",
    "data.datasets.*.extra_files.*.url", "data.datasets.*.extra_files.*.md5",
    "data.datasets.*.extra_files.*.size", "data.datasets.*.generators", "data.datasets.*.lsun.*",
    "data.datasets.*.digests.*", "generators.train", "generators.test")
CROSS_TRAIN = ["LDM", "SD14"]
CNN = ["san", "progan"]
CF = "stabilityai--stable-diffusion-2"
CROSS_TEST = ["LDM", "ProGAN", "SD14", "GLIDE", "dalle3", "midjourney-v5", "stable-diffusion-xl",
              CF, *CNN]
SB_RECORD = "10066460"


def _leaves(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]
    return out


def _base(world, run: str) -> dict:
    """overlay_for's scale and places without its datasets (each config names its own)."""
    over = overlay_for(world, "http://unused.invalid", run=run, data_root=f"data/{run}")
    over["data"]["datasets"] = {}
    over["detectors"].pop("bilora_authors", None)
    over["evaluation"].pop("attacks")  # these configs attack nothing
    return over


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    w = build_world(root / "world", **REHEARSAL_SIZES)
    extra = {"genimage": write_genimage_full(root / "world" / "GenImage-full", 0, w.sizes),
             "synthbuster": write_synthbuster(root / "world" / "synthbuster", 0, w.sizes.size),
             "cf": write_community_forensics(root / "world" / "cf", 0, w.sizes.size),
             "cnn": write_cnndetection(root / "world" / "CNNDetection", 0, w.sizes.size)}
    return root, w, extra


def _run(world, config, overlay, name):
    root, w, _ = world
    work = root / name
    t0 = time.perf_counter()
    proc = rehearse(w, overlay, work, paper=config)
    print(f"\n{name} rehearsal: {time.perf_counter() - t0:.0f} s wall on {os.cpu_count()} "
          f"CPUs, load {os.getloadavg()}")
    assert proc.returncode == 0, proc.stdout[-6000:]
    return work, proc.stdout


@pytest.fixture(scope="module")
def genimage(world):
    root, w, extra = world
    over = _base(w, "genimage-rehearsal")
    gi_root = next(iter(extra["genimage"].values())).parents[1]
    over["data"]["datasets"] = {"genimage": {"path": str(gi_root)}}
    work, log = _run(world, GENIMAGE, over, "genimage")
    return work, log, over


@pytest.fixture(scope="module")
def cross(world):
    root, w, extra = world
    zips = extra["synthbuster"]
    raise_zip = zips["real_RAISE_1k.zip"].read_bytes()
    with serve_world(w) as ricker, serve(Zenodo(SB_RECORD)) as sb:
        sb.add("synthbuster.zip", zips["synthbuster.zip"].read_bytes(), "cut")
        sb.add_download("real_RAISE_1k.zip", raise_zip, "cut")
        over = _base(w, "cross-rehearsal")
        paper_ds = overlay_for(w, ricker.base)["data"]["datasets"]
        over["data"]["datasets"] = {
            "ricker": paper_ds["ricker"],
            "genimage_sd14": paper_ds["genimage_sd14"],
            "genimage_glide": paper_ds["genimage_glide"],
            "synthbuster": {"zenodo": {"base_url": sb.base}, "extra_files": {
                "real_RAISE_1k.zip": {"url": sb.download_url("real_RAISE_1k.zip"),
                                      "md5": hashlib.md5(raise_zip).hexdigest(),
                                      "size": None}}},
            "community_forensics": {"path": str(extra["cf"]), "hub": None},
            "cnndetection": {"path": str(extra["cnn"]), "generators": CNN},
        }
        over["generators"] = {"train": CROSS_TRAIN, "test": CROSS_TEST}
        work, log = _run(world, CROSS, over, "cross")
        requests = sb.requests_for("synthbuster.zip")
    return work, log, over, requests


def _merged(config, overlay) -> dict:
    return C.validate(C.deep_merge(C.load_yaml(config), overlay), f"{config.name} + overlay")


@pytest.mark.parametrize("config", [GENIMAGE, CROSS], ids=["genimage", "cross-dataset"])
def test_the_configs_are_complete_and_keep_the_papers_method(config):
    cfg, paper = C.load_yaml(config), C.load_yaml(ROOT / "workflow" / "config" / "paper.yaml")
    assert C.is_complete(cfg)
    C.load(config)  # validates, layouts and all
    for det in ("bilora", "resnet50", "xception"):
        assert cfg["detectors"][det] == paper["detectors"][det], det


def test_genimage_trains_on_sd14_and_tests_the_eight_published_folders(genimage):
    work, log, over = genimage
    for leaf in _leaves(over):
        assert any(fnmatch.fnmatchcase(leaf, k) for k in DATASET_OVERLAY_KEYS), leaf
    cfg = _merged(GENIMAGE, over)
    assert cfg["generators"]["train"] == ["SD14"]
    assert set(cfg["generators"]["test"]) == set(GENIMAGE_FOLDERS)
    counts = job_counts(log)
    assert counts["organize_dataset"] == 1 and counts["train_detector"] == 3
    m = pd.read_parquet(work / "data" / "genimage-rehearsal" / "genimage" / "manifest.parquet")
    test = m[m.split == "test"]
    assert set(test.generator) == set(GENIMAGE_FOLDERS)
    reals = test[test.label == 0].groupby("generator").sha1.apply(frozenset)
    assert len(set(reals)) == 8  # each generator's own ImageNet reals
    res = work / "results" / "genimage-rehearsal" / "tables"
    pairing = pd.read_csv(res / "pairing.csv").set_index("generator")
    assert set(pairing.index) == set(GENIMAGE_FOLDERS)
    assert (pairing["same_reals_as"] == "-").all() and (pairing["dataset"] == "genimage").all()
    assert (pairing["fake_formats"] == "PNG").all()
    assert "Format audit: genimage test: reals" in (res / "data_card.md").read_text()
    matrix = pd.read_csv(res / "accuracy_matrix_bilora.csv")
    assert set(matrix.loc[matrix.kind == "test", "column"]) == set(GENIMAGE_FOLDERS)


def test_cross_dataset_groups_columns_by_dataset_and_states_each_sets_reals(cross):
    work, log, over, requests = cross
    for leaf in _leaves(over):
        assert any(fnmatch.fnmatchcase(leaf, k) for k in DATASET_OVERLAY_KEYS), leaf
    # the Synthbuster zip's first download was cut and resumed with Range
    assert [("Range" in r[2]) for r in requests if "/files/" in r[1]] == [False, True]
    res = work / "results" / "cross-rehearsal" / "tables"
    matrix = pd.read_csv(res / "accuracy_matrix_resnet50.csv")
    groups = matrix[matrix.kind == "test"].groupby("dataset").column.apply(set).to_dict()
    assert groups == {"ricker": {"LDM", "ProGAN"}, "genimage_sd14": {"SD14"},
                      "genimage_glide": {"GLIDE"},
                      "synthbuster": {"dalle3", "midjourney-v5", "stable-diffusion-xl"},
                      "community_forensics": {CF}, "cnndetection": set(CNN)}
    means = set(matrix.loc[matrix.kind == "mean", "column"])
    assert {"mean (unseen, ricker)", "mean (unseen, synthbuster)"} <= means
    tex = (res / "accuracy_matrix_resnet50.tex").read_text()
    assert "test generator (synthbuster)" in tex
    pairing = pd.read_csv(res / "pairing.csv").set_index("generator")
    sb = pairing.loc[["dalle3", "midjourney-v5", "stable-diffusion-xl"]]
    assert (sb["dataset"] == "synthbuster").all() and (sb["real_formats"] == "PNG").all()
    assert pairing.loc["dalle3", "same_reals_as"] == "midjourney-v5, stable-diffusion-xl"
    assert pairing.loc["LDM", "same_reals_as"] == "ProGAN"  # the shared LSUN reals
    assert pairing.loc[CF, "real_formats"] == "JPEG"
    assert pairing.loc["san", "same_reals_as"] == "-"
    card = pd.read_csv(res / "data_card.csv")
    assert {"ricker", "genimage_sd14", "synthbuster", "community_forensics",
            "cnndetection"} <= set(card.dataset)
    audit = (res / "data_card.md").read_text()
    assert "Format audit: community_forensics test: reals" in audit
    assert "Format audit: synthbuster" not in audit  # PNG on both sides
    m = pd.read_parquet(work / "data" / "cross-rehearsal" / "community_forensics" /
                        "manifest.parquet")
    assert set(m.generator) == {CF} and set(m.split) == {"test"}
    assert {g.replace("/", "--") for g in CF_GENERATORS} >= {CF}
    sbm = pd.read_parquet(work / "data" / "cross-rehearsal" / "synthbuster" / "manifest.parquet")
    assert set(sbm.generator) == set(SYNTHBUSTER_GENERATORS)
