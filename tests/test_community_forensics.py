"""The ``community_forensics`` layout on a miniature Community Forensics written with pyarrow.

Two parquet shards as the Hugging Face set ships them (``data/*.parquet``, small row groups):
three generators (one with a ``/`` in its ``model_name``) spread over both shards, reals
from two sources (FFHQ PNGs, VISION JPEGs); one shard stores the images as the ``datasets``
Image struct ``{bytes, path}`` (column ``image``), the other as plain binary
(``image_data``, as the set does). Organized through the real CLI; nothing is mocked.
"""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bilora.cli import main
from tests.conftest import ROOT

SD2 = "stabilityai/stable-diffusion-2"
SD2_ID = "stabilityai--stable-diffusion-2"
FAKES = {SD2: 5, "biggan": 4, "midjourney-v5": 3}
REALS = {"FFHQ": 4, "VISION": 3}
REPO = "OwensLab/CommunityForensics-Small"


def _image(value: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (value * 37 % 256, value * 11 % 256, value)).save(buf, fmt)
    return buf.getvalue()


def _rows() -> list[dict]:
    rows, n = [], 0
    for name, k in FAKES.items():
        for i in range(k):
            n += 1
            fmt = "JPEG" if name == "midjourney-v5" else "PNG"
            rows.append({"image_name": f"{i:05d}.{'jpg' if fmt == 'JPEG' else 'png'}",
                         "data": _image(n, fmt), "label": 1, "model_name": name})
    for name, k in REALS.items():
        for i in range(k):
            n += 1
            fmt = "PNG" if name == "FFHQ" else "JPEG"
            rows.append({"image_name": f"{i:05d}.{'png' if fmt == 'PNG' else 'jpg'}",
                         "data": _image(n, fmt), "label": 0, "model_name": name})
    return rows


def _write_shards(root: Path, rows: list[dict]) -> None:
    data = root / "data"
    data.mkdir(parents=True)
    halves = (rows[0::2], rows[1::2])  # every generator and source in both shards
    for i, part in enumerate(halves):
        cols = {"image_name": [r["image_name"] for r in part],
                "label": pa.array([r["label"] for r in part], pa.int64()),
                "model_name": [r["model_name"] for r in part],
                "architecture": ["LatDiff" if r["label"] else "real" for r in part]}
        if i == 0:  # the `datasets` Image feature
            cols["image"] = pa.array([{"bytes": r["data"], "path": r["image_name"]}
                                      for r in part],
                                     pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        else:  # the set's own column
            cols["image_data"] = pa.array([r["data"] for r in part], pa.binary())
        pq.write_table(pa.table(cols), data / f"train-{i:05d}-of-00002.parquet",
                       row_group_size=3)


@pytest.fixture(scope="module")
def miniature(tmp_path_factory) -> tuple[Path, dict[str, tuple[int, str]]]:
    """The miniature's folder, and each image's sha1 -> (label, model_name)."""
    root = tmp_path_factory.mktemp("cf") / "CommunityForensics-Small"
    rows = _rows()
    _write_shards(root, rows)
    return root, {hashlib.sha1(r["data"]).hexdigest(): (r["label"], r["model_name"])
                  for r in rows}


def _organize(source: Path | None, dataset_dir: Path, *extra: str, seed: int = 0,
              generators: tuple[str, ...] = (SD2_ID, "biggan")) -> pd.DataFrame:
    """``bilora organize`` of the miniature with per_generator=2; its manifest."""
    assert _run(source, dataset_dir, *extra, seed=seed, generators=generators) == 0
    return pd.read_parquet(dataset_dir / "manifest.parquet")


def _run(source: Path | None, dataset_dir: Path, *extra: str, seed: int = 0,
         generators: tuple[str, ...] = (SD2_ID, "biggan")) -> int:
    out = dataset_dir / "manifest.parquet"
    args = ["organize", "--layout", "community_forensics", "--dataset-dir", str(dataset_dir),
            "--generators", *generators, "--max-rejected-fraction", "0", "--seed", str(seed),
            "--param", "per_generator=2", "--out", str(out), "--quiet", *extra]
    if source is not None:
        args += ["--source", str(source)]
    return main(args)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_a_seeded_sample_per_generator_and_one_real_sample_shared_by_all(miniature, tmp_path):
    root, truth = miniature
    d = tmp_path / "cf"
    df = _organize(root, d)
    counts = df.groupby(["generator", "label"]).size().to_dict()
    assert counts == {(SD2_ID, 0): 2, (SD2_ID, 1): 2, ("biggan", 0): 2, ("biggan", 1): 2}
    assert set(df.split) == {"test"}
    for row in df.itertuples():  # each image is what its row says it is
        label, model = truth[row.sha1]
        assert row.label == label
        if label == 1:
            assert model.replace("/", "--") == row.generator
        else:
            assert model in REALS and row.path.startswith(f"images/real/{model}/")
    reals = {g: sorted(df[(df.generator == g) & (df.label == 0)].path) for g in (SD2_ID, "biggan")}
    assert reals[SD2_ID] == reals["biggan"]  # the same reals paired with every generator
    assert df[df.label == 1].path.str.startswith(("images/" + SD2_ID + "/", "images/biggan/")).all()
    # only the sampled rows were written: 2 fakes x 2 generators + 2 shared reals
    written = _files(d / "images")
    assert len(written) == 6
    assert {str(p.relative_to(d)) for p in written} == set(df.path)
    assert {p.suffix for p in written} <= {".png", ".jpg"}
    for p in written:  # the extension says what the bytes are
        with Image.open(p) as img:
            assert {"PNG": ".png", "JPEG": ".jpg"}[img.format] == p.suffix


def _picked(df: pd.DataFrame) -> list[tuple[str, str]]:
    return sorted(zip(df.generator, df.sha1, strict=True))


def test_the_sample_is_reproducible_and_moves_with_the_seed(miniature, tmp_path):
    root, _ = miniature
    a = _organize(root, tmp_path / "a")
    b = _organize(root, tmp_path / "b")
    assert _picked(a) == _picked(b)
    c = _organize(root, tmp_path / "a", seed=1)  # the same folder, another seed
    assert _picked(a) != _picked(c)
    assert len(_files(tmp_path / "a" / "images")) == 6  # the earlier sample's files are gone
    # a generator's sample does not depend on which others are asked for
    alone = _organize(root, tmp_path / "alone", generators=("biggan",))
    biggan = a[(a.generator == "biggan") & (a.label == 1)]
    assert set(alone[alone.label == 1].sha1) == set(biggan.sha1)


def test_fewer_than_per_generator_takes_them_all(miniature, tmp_path):
    root, _ = miniature
    df = _organize(root, tmp_path / "d", "--param", "per_generator=50",
                   generators=("midjourney-v5",))
    assert df.groupby("label").size().to_dict() == {0: sum(REALS.values()), 1: 3}


def test_a_truncated_shard_is_refused_naming_it(miniature, tmp_path, capsys):
    root, _ = miniature
    broken = tmp_path / "broken"
    (broken / "data").mkdir(parents=True)
    for f in (root / "data").iterdir():
        (broken / "data" / f.name).write_bytes(f.read_bytes())
    cut = broken / "data" / "train-00001-of-00002.parquet"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    assert _run(broken, tmp_path / "d") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(cut) in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "d" / "images").exists()  # refused before writing anything


def test_an_unknown_generator_lists_the_available_ones(miniature, tmp_path, capsys):
    root, _ = miniature
    assert _run(root, tmp_path / "d", generators=("biggan", "dalle-9")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'dalle-9'" in err[0]
    assert all(g in err[0] for g in ("biggan", "midjourney-v5", SD2_ID))


def _config(section: dict) -> dict:
    from bilora import config as C

    cfg = C.load_yaml(ROOT / "workflow/config/paper.yaml")
    cfg["data"]["datasets"]["community_forensics"] = section
    return cfg


def test_the_section_validates_and_reaches_organize_through_the_workflow(miniature, tmp_path):
    """The YAML section of the issue (hub, no path) validates, its keys reach ``bilora
    organize`` as --param; with a local path instead, the workflow's args organize it."""
    from bilora import config as C
    from bilora import workflow as W

    section = {"source": "local", "layout": "community_forensics", "hub": REPO,
               "generators": [SD2_ID], "per_generator": 1000}
    cfg = C.validate(_config(dict(section)), "paper.yaml")
    args = shlex.split(W.organize_args(cfg, "community_forensics"))
    params = [args[i + 1] for i, a in enumerate(args) if a == "--param"]
    assert params == ["per_generator=1000", f'hub="{REPO}"']
    assert "--source" not in args and args[args.index("--generators") + 1] == SD2_ID
    defaulted = {k: v for k, v in section.items() if k != "per_generator"}
    cfg = C.validate(_config(defaulted), "paper.yaml")
    assert cfg["data"]["datasets"]["community_forensics"]["per_generator"] == 1000
    root, _ = miniature  # a local copy: path, no hub
    local = {"source": "local", "layout": "community_forensics", "path": str(root),
             "hub": None,  # as an overlay swapping the hub for a local copy writes it
             "generators": ["biggan", SD2_ID], "per_generator": 2, "test_reals": "own"}
    cfg = C.validate(_config(local), "paper.yaml")
    args = shlex.split(W.organize_args(cfg, "community_forensics"))
    args[args.index("--dataset-dir") + 1] = str(tmp_path / "d")
    assert main(["organize", *args, "--out", str(tmp_path / "m.parquet"), "--quiet"]) == 0
    df = pd.read_parquet(tmp_path / "m.parquet")
    assert df.groupby(["generator", "label"]).size().tolist() == [2, 2, 2, 2]


@pytest.mark.parametrize("change, culprit", [
    ({"hub": None}, "'path' is a required"),         # neither path nor hub
    ({"hub": "__null__"}, "'path' is a required"),     # hub: null, no path
    ({"per_generator": 0}, "per_generator"),
    ({"hub": "not a repo id"}, "hub"),
    ({"layout": "folder", "path": "/x"}, "layout"),  # hub: community_forensics's key only
])
def test_a_bad_section_is_refused(change, culprit):
    from bilora import config as C

    section = {"source": "local", "layout": "community_forensics", "hub": REPO,
               "generators": [SD2_ID]}
    section.update(change)
    section = {k: None if v == "__null__" else v for k, v in section.items() if v is not None}
    with pytest.raises(C.ConfigError, match="community_forensics") as err:
        C.validate(_config(section), "paper.yaml")
    assert culprit in str(err.value)


def test_a_hub_dataset_not_in_the_cache_says_how_to_fetch_it(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run([sys.executable, "-m", "bilora.cli", "organize", "--layout",
                          "community_forensics", "--dataset-dir", str(tmp_path / "d"),
                          "--generators", SD2_ID, "--max-rejected-fraction", "0",
                          "--param", f"hub={REPO}", "--out", str(tmp_path / "m.parquet"),
                          "--quiet"], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=120)
    assert out.returncode == 1
    err = out.stderr.strip().splitlines()[-1]
    assert REPO in err and "bilora prefetch" in err
    assert f"huggingface-cli download --repo-type dataset {REPO}" in err


def test_prefetch_fills_the_hub_cache_and_organize_reads_it_offline(miniature, tmp_path):
    """``bilora prefetch`` fetches a hub dataset's parquet shards (only those) from a Hub
    (:mod:`tests.fake_hub`, on 127.0.0.1); ``organize`` then reads them offline, as from a
    local copy."""
    import json
    import shutil

    from bilora import config as C
    from bilora.data.hub import dataset_artifacts
    from tests.fake_hub import Hub, serve

    root, _ = miniature
    repo = tmp_path / "repo"
    shutil.copytree(root, repo)
    (repo / "README.md").write_text("---\nlicense: cc-by-nc-sa-4.0\n---\n")
    section = {"source": "local", "layout": "community_forensics", "hub": REPO,
               "generators": [SD2_ID, "biggan"], "per_generator": 2}
    cfg = C.validate(_config(section), "paper.yaml")
    wanted = dataset_artifacts(cfg["data"]["datasets"])
    assert [(a.kind, a.name, a.key) for a in wanted] == [
        ("hub_dataset", REPO, "data.datasets.community_forensics.hub")]
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_HUB_CACHE", "HF_TOKEN",
                        "HUGGINGFACE_HUB_CACHE")}
    env.update({"HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT),
                "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    spec = json.dumps([{"kind": a.kind, "name": a.name, "key": a.key} for a in wanted])
    with serve(Hub(datasets={REPO: repo})) as hub:
        out = subprocess.run([sys.executable, "-m", "bilora.cli", "prefetch", "--spec", spec,
                              "--out", str(tmp_path / "found.json")], capture_output=True,
                             text=True, cwd=ROOT, env={**env, "HF_ENDPOINT": hub.base},
                             timeout=300)
        assert out.returncode == 0, out.stderr
        shards = {f"data/{p.name}" for p in (repo / "data").iterdir()}
        assert hub.content_requested(REPO) == shards  # not README.md
    found = json.loads((tmp_path / "found.json").read_text())
    assert found[0]["fetched"] and found[0]["bytes"] == sum(
        p.stat().st_size for p in (repo / "data").iterdir())
    args = ["organize", *shlex.split(_workflow_args(cfg)), "--out",
            str(tmp_path / "m.parquet"), "--quiet"]
    args[args.index("--dataset-dir") + 1] = str(tmp_path / "d")
    out = subprocess.run([sys.executable, "-m", "bilora.cli", *args], capture_output=True,
                         text=True, cwd=ROOT, env={**env, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert out.returncode == 0, out.stderr
    df = pd.read_parquet(tmp_path / "m.parquet")
    local = _organize(root, tmp_path / "local", seed=cfg["seed"])  # as from the local copy
    assert _picked(df) == _picked(local)


def _workflow_args(cfg: dict) -> str:
    """The workflow's ``bilora organize`` args of the community_forensics section."""
    from bilora import workflow as W

    return W.organize_args(cfg, "community_forensics")
