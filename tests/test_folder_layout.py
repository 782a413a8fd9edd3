"""The ``folder`` layout on a miniature of CNNDetection's test folder (its published names)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from bilora.data.folders import SourceError
from bilora.data.local_sources import layout_entries, organize

# CNNDetection's test/: flat generators, and four one category level deeper
FLAT = ("biggan", "deepfake", "gaugan", "imle", "crn", "san", "seeingdark", "stargan",
        "whichfaceisreal")
DEEP = {"progan": ("airplane", "bicycle"), "stylegan": ("bedroom", "car"),
        "stylegan2": ("church", "horse"), "cyclegan": ("apple", "zebra")}


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value % 256, value * 7 % 256, 90)).save(path)


@pytest.fixture
def cnndetection(tmp_path) -> Path:
    root, n = tmp_path / "CNN_synth_testset" / "test", 0
    for gen in FLAT:
        for sub, k in (("0_real", 2), ("1_fake", 3)):
            for i in range(k):
                n += 1
                _png(root / gen / sub / f"{i:03d}.png", n)
    for gen, cats in DEEP.items():
        for cat in cats:
            for sub in ("0_real", "1_fake"):
                n += 1
                _png(root / gen / cat / sub / f"{cat}_{n}.png", n)
    return root


def test_flat_and_category_trees_map_to_their_top_folder(cnndetection, tmp_path):
    df = organize("folder", cnndetection, tmp_path / "d", 0.0, progress=False).frame()
    counts = df.groupby(["generator", "label"]).size()
    for gen in FLAT:  # 2 reals, 3 fakes each
        assert (counts[gen, 0], counts[gen, 1]) == (2, 3)
    for gen, cats in DEEP.items():  # one real and one fake per category, pooled
        assert (counts[gen, 0], counts[gen, 1]) == (len(cats), len(cats))
    assert set(df.split) == {"test"}
    assert len(df) == len(FLAT) * 5 + sum(2 * len(c) for c in DEEP.values())


def test_generators_and_split_pick(cnndetection, tmp_path):
    got = list(layout_entries("folder", cnndetection, tmp_path, generators=["progan", "san"],
                              split="val"))
    assert {e.generator for e in got} == {"progan", "san"}
    assert {e.split for e in got} == {"val"}
    assert pd.Series([e.label for e in got]).value_counts().to_dict() == {0: 4, 1: 5}


@pytest.mark.parametrize("breakage, culprit", [
    ("stray", "progan/notes"),          # a category without 0_real/1_fake
    ("beside", "biggan/extra"),         # a folder beside 0_real/1_fake
    ("missing", "midjourney"),          # a generator asked for that is not there
])
def test_a_folder_that_breaks_the_layout_is_named(cnndetection, tmp_path, breakage, culprit):
    wanted = None
    if breakage == "stray":
        (cnndetection / "progan" / "notes" / "misc").mkdir(parents=True)
    elif breakage == "beside":
        (cnndetection / "biggan" / "extra").mkdir()
    else:
        wanted = ["biggan", "midjourney"]
    with pytest.raises(SourceError) as err:
        list(layout_entries("folder", cnndetection, tmp_path, generators=wanted))
    msg = str(err.value)
    assert str(cnndetection / culprit) in msg and "\n" not in msg
    assert "0_real" in msg  # names the layout it expected


def test_the_split_key_reaches_organize_through_the_config_and_cli(cnndetection, tmp_path):
    """A layout's own dataset key (``split``) is validated by the config and passed to
    ``bilora organize`` as ``--param split=...``; an unknown --param is refused."""
    import shlex

    from bilora import config as C
    from bilora import workflow as W
    from bilora.cli import main

    cfg = C.load_yaml(Path(__file__).resolve().parent.parent / "workflow/config/paper.yaml")
    cfg["data"]["datasets"]["cnn"] = {"source": "local", "layout": "folder",
                                      "path": str(cnndetection), "generators": ["san"],
                                      "split": "val", "test_reals": "own"}
    cfg = C.validate(cfg, "paper.yaml")
    args = shlex.split(W.organize_args(cfg, "cnn"))
    assert args[args.index("--param") + 1] == 'split="val"'
    out = tmp_path / "m.parquet"
    base = ["organize", *args, "--out", str(out), "--quiet"]
    assert main(base) == 0
    df = pd.read_parquet(out)
    assert set(df.split) == {"val"} and len(df) == 5
    cfg["data"]["datasets"]["genimage_sd14"]["split"] = "val"  # not genimage's key
    with pytest.raises(C.ConfigError, match="genimage_sd14"):
        C.validate(cfg, "paper.yaml")
    with pytest.raises(SystemExit, match="takes KEY=VALUE with KEY one of"):
        main([*base, "--param", "per_generator=3"])
