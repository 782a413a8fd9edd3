"""Synthbuster on a miniature with its published names: Zenodo record 10066460's
``synthbuster.zip`` and the RAISE-1k reals beside it (``real_RAISE_1k.zip``, an extra file),
served by the loopback Zenodo, fetched, extracted and organized through the real CLI."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import re
import shlex
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

from bilora import config as C
from bilora import workflow as W
from bilora.cli import main
from bilora.data.fetch import FetchError, fetch_zenodo, read_lock
from bilora.data.folders import SourceError
from bilora.data.local_sources import layout_entries
from tests.zenodo_server import Zenodo, serve

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "workflow/config/paper.yaml"
RECORD = "10066460"
REALS = "real_RAISE_1k.zip"
GENS = ("dalle2", "midjourney-v5", "stable-diffusion-xl")
IDS = ("r000da54ft", "r01f0b1c2t", "r0a7c2e91t")  # RAISE names: r<id>t.png

# The dataset section as a config states it (README "Synthbuster"); the tests point its
# URLs at the loopback server and fill in the md5 of the miniature's reals.
SECTION = yaml.safe_load("""
synthbuster: {source: zenodo, layout: synthbuster,
  zenodo: {base_url: "https://zenodo.org", record: "10066460", files: [synthbuster.zip],
           retries: 5},
  extra_files: {real_RAISE_1k.zip: {
    url: "https://www.grip.unina.it/download/prog/DMimageDetection/real_RAISE_1k.zip",
    md5: a6aad7728226218f22a28b9c9aacaa2c, size: null}},
  archives_dir: null, root_name: synthbuster, splits: [test],
  generators: [dalle2, dalle3, firefly, glide, midjourney-v5, stable-diffusion-1-3,
               stable-diffusion-1-4, stable-diffusion-2, stable-diffusion-xl]}
""")["synthbuster"]


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (value * 37 % 256, value * 11 % 256, 60)).save(buf, "PNG")
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def archives() -> dict[str, bytes]:
    """synthbuster.zip (3 generators x 3 fakes) and real_RAISE_1k.zip (the 3 reals)."""
    fakes = {f"synthbuster/{g}/{i}.png": _png(10 * k + n)
             for k, g in enumerate(GENS, 1) for n, i in enumerate(IDS)}
    reals = {f"real_RAISE_1k/{i}.png": _png(n) for n, i in enumerate(IDS)}
    return {"synthbuster.zip": _zip(fakes), REALS: _zip(reals)}


@pytest.fixture()
def zenodo(archives):
    with serve(Zenodo(RECORD)) as state:
        state.add("synthbuster.zip", archives["synthbuster.zip"])
        yield state


def _extra(state: Zenodo, data: bytes, md5: str | None = None, size: int | None = None) -> dict:
    return {REALS: {"url": state.download_url(REALS), "md5": md5 or hashlib.md5(data).hexdigest(),
                    "size": size}}


def _config(tmp_path: Path, state: Zenodo, reals: bytes, generators=GENS) -> dict:
    cfg = C.load_yaml(PAPER)
    ds = copy.deepcopy(SECTION)
    ds["zenodo"]["base_url"] = state.base
    ds["extra_files"] = _extra(state, reals)
    ds["generators"] = list(generators)
    cfg["data"]["root"] = str(tmp_path / "data")
    cfg["data"]["datasets"]["synthbuster"] = ds
    return C.validate(cfg, "paper.yaml")


def _fetch(tmp_path: Path, state: Zenodo, reals: bytes, **kw):
    kw.setdefault("retries", 2)
    return fetch_zenodo(state.base, RECORD, tmp_path / "lock.json", tmp_path / "dl",
                        patterns=["synthbuster.zip"], backoff_factor=0, progress=False,
                        chunk=512, extra_files=kw.pop("extra", None) or _extra(state, reals),
                        **kw)


def test_fetch_extract_organize_through_the_cli(zenodo, archives, tmp_path):
    reals = archives[REALS]
    zenodo.add_download(REALS, reals, "cut")  # resumed with Range in the same run
    cfg = _config(tmp_path, zenodo, reals)
    d = Path(W.dataset_dir(cfg, "synthbuster"))

    fetch = shlex.split(W.fetch_args(cfg, "synthbuster"))
    assert main(["fetch-zenodo", *fetch, "--backoff-factor", "0", "--quiet"]) == 0
    assert (d / "archives" / REALS).read_bytes() == reals
    reqs = zenodo.requests_for(REALS)
    assert len(reqs) == 2 and reqs[1][2]["Range"] == f"bytes={len(reals) // 2}-"
    assert zenodo.heads == [f"/download/{REALS}"]  # the size, learned once ...
    lock = d / f"zenodo-{RECORD}.lock.json"
    pinned = json.loads(lock.read_text())["extra_files"]
    assert pinned == [{"key": REALS, "size": len(reals), "md5": hashlib.md5(reals).hexdigest(),
                       "url": zenodo.download_url(REALS)}]
    assert [f.key for f in read_lock(lock, zenodo.base, RECORD)] == ["synthbuster.zip"]
    (d / "archives" / REALS).unlink()
    assert main(["fetch-zenodo", *fetch, "--backoff-factor", "0", "--quiet"]) == 0
    assert zenodo.heads == [f"/download/{REALS}"]  # ... and pinned: no second HEAD
    assert (d / "archives" / REALS).read_bytes() == reals

    done = d / "raw" / "extract.done.json"
    assert main(["extract", "--from-fetch", str(d / "archives" / "fetch.done.json"),
                 "--dest", str(d / "raw"), "--done", str(done)]) == 0
    assert W.organize_inputs(cfg, "synthbuster") == [str(done)]
    out = d / "manifest.parquet"
    assert main(["organize", *shlex.split(W.organize_args(cfg, "synthbuster")),
                 "--out", str(out), "--quiet"]) == 0
    df = pd.read_parquet(out)
    assert set(df.split) == {"test"}
    assert df.groupby(["generator", "label"]).size().to_dict() == {
        (g, label): 3 for g in GENS for label in (0, 1)}
    real_sets = {g: set(df[(df.generator == g) & (df.label == 0)].path) for g in GENS}
    assert all(s == {f"raw/real_RAISE_1k/{i}.png" for i in IDS} for s in real_sets.values())
    for g in GENS:
        assert set(df[(df.generator == g) & (df.label == 1)].path) == {
            f"raw/synthbuster/{g}/{i}.png" for i in IDS}


def test_a_cut_extra_file_resumes_on_the_next_run(zenodo, archives, tmp_path):
    reals = archives[REALS]
    zenodo.add_download(REALS, reals, "cut", "cut")
    with pytest.raises(FetchError, match="run again to resume"):
        _fetch(tmp_path, zenodo, reals, retries=0)
    part = tmp_path / "dl" / f"{REALS}.part"
    assert part.stat().st_size == len(reals) // 2 and not (tmp_path / "dl" / REALS).exists()
    _fetch(tmp_path, zenodo, reals)  # the second cut is resumed in the run, then complete
    assert (tmp_path / "dl" / REALS).read_bytes() == reals and not part.exists()
    assert all("Range" in r[2] for r in zenodo.requests_for(REALS)[1:])


def test_a_bad_md5_is_refused_and_nothing_sits_under_the_final_name(zenodo, archives,
                                                                     tmp_path):
    reals = archives[REALS]
    zenodo.add_download(REALS, reals)
    with pytest.raises(FetchError, match=f"checksum mismatch for {REALS}") as err:
        _fetch(tmp_path, zenodo, reals, extra=_extra(zenodo, reals, md5="0" * 32))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "dl" / REALS).exists()
    assert not (tmp_path / "dl" / f"{REALS}.part").exists()
    assert not (tmp_path / "dl" / "fetch.done.json").exists()


def test_the_pinned_size_holds_and_the_head_is_retried(zenodo, archives, tmp_path):
    reals = archives[REALS]
    zenodo.add_download(REALS, reals, "503")  # the HEAD is retried
    _fetch(tmp_path, zenodo, reals)
    assert zenodo.heads == [f"/download/{REALS}"] * 2
    with pytest.raises(FetchError, match=f"pins {REALS} .* delete its extra_files entry"):
        _fetch(tmp_path, zenodo, reals, extra=_extra(zenodo, reals, size=len(reals) + 1))
    with pytest.raises(FetchError, match="extra_files.real_RAISE_1k.zip.md5: 'nope'"):
        _fetch(tmp_path, zenodo, reals, extra=_extra(zenodo, reals, md5="nope"))


def test_archives_dir_verifies_the_extra_file_without_network(zenodo, archives, tmp_path):
    reals = archives[REALS]
    have = tmp_path / "mine"
    have.mkdir()
    (have / "synthbuster.zip").write_bytes(archives["synthbuster.zip"])
    (have / REALS).write_bytes(reals)
    zenodo.add_download(REALS, reals)
    paths = _fetch(tmp_path, zenodo, reals, archives_dir=have)
    assert [p.name for p in paths] == ["synthbuster.zip", REALS]
    assert zenodo.heads == [] and zenodo.requests_for(REALS) == []  # size from the copy
    (have / REALS).write_bytes(reals[:-1] + b"x")
    with pytest.raises(FetchError, match="checksum mismatch"):
        _fetch(tmp_path, zenodo, reals, archives_dir=have)


@pytest.fixture()
def extracted(archives, tmp_path) -> Path:
    raw = tmp_path / "raw"
    for data in archives.values():
        zipfile.ZipFile(io.BytesIO(data)).extractall(raw)
    return raw


def test_reals_inside_the_synthbuster_folder_are_found(extracted, tmp_path):
    (extracted / "real_RAISE_1k").rename(extracted / "synthbuster" / "real_RAISE_1k")
    got = layout_entries("synthbuster", extracted, tmp_path, generators=["dalle2"])
    assert sorted(e.label for e in got) == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("breakage, culprit", [
    ("stray", "synthbuster/dalle2/extra"),          # a folder inside a generator folder
    ("jpeg", "real_RAISE_1k/r000da54ft.jpg"),       # not a PNG of the published names
    ("missing", "synthbuster/dalle3"),              # a generator asked for that is not there
    ("noreals", "real_RAISE_1k"),                   # the reals not extracted
])
def test_a_folder_that_breaks_the_layout_is_named(extracted, tmp_path, capsys, breakage,
                                                  culprit):
    if breakage == "stray":
        (extracted / "synthbuster" / "dalle2" / "extra").mkdir()
    elif breakage == "jpeg":
        (extracted / "real_RAISE_1k" / "r000da54ft.jpg").write_bytes(b"x")
    elif breakage == "noreals":
        import shutil

        shutil.rmtree(extracted / "real_RAISE_1k")
    wanted = ["dalle2", "dalle3"] if breakage == "missing" else list(GENS)
    with pytest.raises(SourceError) as err:
        layout_entries("synthbuster", extracted / "synthbuster", tmp_path, generators=wanted)
    msg = str(err.value)
    assert str(extracted / culprit) in msg and "\n" not in msg
    assert "synthbuster layout expects" in msg
    assert main(["organize", "--layout", "synthbuster", "--source", str(extracted / "synthbuster"),
                 "--dataset-dir", str(tmp_path), "--max-rejected-fraction", "0", "--generators",
                 *wanted, "--out", str(tmp_path / "m.parquet"), "--quiet"]) == 1
    assert str(extracted / culprit) in capsys.readouterr().err


def test_the_section_validates_and_gives_the_cli_its_arguments(tmp_path):
    cfg = C.load_yaml(PAPER)
    cfg["data"]["datasets"]["synthbuster"] = copy.deepcopy(SECTION)
    cfg = C.validate(cfg, "paper.yaml")
    ds = cfg["data"]["datasets"]["synthbuster"]
    assert "digests" not in ds and "check_digests" not in ds  # Ricker's, not filled in
    d = W.dataset_dir(cfg, "synthbuster")
    fetch = shlex.split(W.fetch_args(cfg, "synthbuster"))
    assert fetch[:4] == ["--base-url", "https://zenodo.org", "--record", RECORD]
    assert fetch[fetch.index("--files") + 1:fetch.index("--extra-files")] == ["synthbuster.zip"]
    assert json.loads(fetch[fetch.index("--extra-files") + 1]) == SECTION["extra_files"]
    assert fetch[fetch.index("--dest") + 1] == f"{d}/archives"
    org = shlex.split(W.organize_args(cfg, "synthbuster"))
    assert org[org.index("--layout") + 1] == "synthbuster"
    assert org[org.index("--source") + 1] == f"{d}/raw/synthbuster"
    assert org[org.index("--generators") + 1:org.index("--splits")] == SECTION["generators"]
    assert org[org.index("--splits") + 1:] == ["test"]
    assert W.organize_inputs(cfg, "synthbuster") == [f"{d}/raw/extract.done.json"]
    assert W.digest_checks(cfg, "synthbuster") == {}
    assert not [f for f in W.digest_files(cfg) if "/synthbuster/" in f]
    assert set(W.digest_checks(cfg, "ricker")) == {"train", "val", "test"}  # Ricker's stay
    assert C.real_set(cfg, "dalle2").startswith("the 1000 RAISE-1k reals")


@pytest.mark.parametrize("change, message", [
    (lambda ds: ds["generators"].append("dalle4"), "synthbuster.generators.9"),
    (lambda ds: ds.pop("splits"), "synthbuster: 'splits' is a required property"),
    (lambda ds: ds.update(splits=["train", "test"]), "synthbuster.splits.0"),
    (lambda ds: ds["extra_files"][REALS].update(md5="xyz"),
     "synthbuster.extra_files.real_RAISE_1k.zip.md5"),
    (lambda ds: ds["extra_files"][REALS].update(extract_into="x"),
     "synthbuster.extra_files.real_RAISE_1k.zip: unknown key"),
])
def test_a_bad_section_names_its_key(change, message):
    cfg = C.load_yaml(PAPER)
    cfg["data"]["datasets"]["synthbuster"] = ds = copy.deepcopy(SECTION)
    change(ds)
    with pytest.raises(C.ConfigError, match=message.replace(".", r"\.")):
        C.validate(cfg, "paper.yaml")


@pytest.mark.slow
def test_the_dag_fetches_extracts_and_organizes_it_without_digest_checks(tmp_path):
    """A Snakemake dry run of the paper config with the section added: the record and the
    reals fetched in one job, extracted, organized; no digest check, no LSUN rebuild."""
    import os
    import subprocess
    import sys

    cfg = C.load_yaml(PAPER)
    cfg["data"]["datasets"]["synthbuster"] = copy.deepcopy(SECTION)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    target = "data/paper/synthbuster/manifest.parquet"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
                          "--directory", str(tmp_path), "-n", target, "--configfile",
                          str(tmp_path / "c.yaml"), "--printshellcmds"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out.stdout[out.stdout.index("Job stats:"):],
                           re.M))
    assert jobs == {"fetch_zenodo_record": "1", "extract_archives": "1",
                    "organize_dataset": "1", "total": "3"}
    fetch = next(line for line in out.stdout.splitlines() if "bilora.cli fetch-zenodo" in line)
    assert "--record 10066460" in fetch and "--extra-files" in fetch and REALS in fetch
