"""Offline-first model loading: local folders and files, the libraries' own caches, prefetch.

The caches are filled the way the libraries lay them out (Hugging Face's hub cache, torch's
hub cache) with artifacts made here, then loaded through the real code paths with
``HF_HUB_OFFLINE=1``: nothing is mocked and nothing reaches the network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import PAPER, ROOT

pytestmark = pytest.mark.slow

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _env(tmp_path: Path, **extra) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
            "TORCH_HOME": str(tmp_path / "torch"), "PYTHONPATH": str(ROOT), **extra}


def _prefetch(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "bilora.cli", "prefetch", *args],
                          capture_output=True, text=True, cwd=ROOT, env=_env(tmp_path),
                          timeout=300)


def _hub_snapshot(tmp_path: Path, repo: str) -> Path:
    """The snapshot folder of ``repo`` in an HF hub cache, as huggingface_hub lays it out."""
    base = tmp_path / "hf" / "hub" / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(COMMIT)
    snap = base / "snapshots" / COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    return snap


@pytest.fixture(scope="module")
def caches(tmp_path_factory, default_cfg):
    """A tiny BLIP-2 as Salesforce/blip2-opt-2.7b in the hub cache, random ImageNet-shaped
    resnet50 weights as timm/resnet50.a1_in1k, legacy_xception's in torch's hub cache."""
    import timm
    import torch
    from safetensors.torch import save_file

    from bilora.bases.blip2.tiny import build_tiny_blip2

    tmp = tmp_path_factory.mktemp("caches")
    snap = _hub_snapshot(tmp, "Salesforce/blip2-opt-2.7b")
    build_tiny_blip2(default_cfg["detectors"]["bilora"]["base_model"]["tiny"], snap / "x", 0)
    for f in (snap / "x").iterdir():
        f.rename(snap / f.name)
    (snap / "x").rmdir()
    torch.manual_seed(0)
    resnet = timm.create_model("resnet50", pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in resnet.items()},
              str(_hub_snapshot(tmp, "timm/resnet50.a1_in1k") / "model.safetensors"))
    ckpt = tmp / "torch" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(timm.create_model("legacy_xception", pretrained=False).state_dict(),
               ckpt / "xception-43020ad28.pth")
    return tmp, resnet


def test_offline_with_an_empty_cache_fails_at_once_naming_every_artifact(tmp_path):
    t0 = time.monotonic()
    out = _prefetch(tmp_path, "--configfile", str(PAPER))
    took = time.monotonic() - t0
    assert out.returncode == 1, out.stderr
    err = out.stderr.strip().splitlines()[-1]
    assert err.startswith("bilora prefetch: error: ")
    for name in ("'Salesforce/blip2-opt-2.7b'", "'resnet50'", "'legacy_xception'"):
        assert name in err
    assert "bilora prefetch --configfile" in err and "Traceback" not in out.stderr
    assert took < 60  # measured ~5 s: imports, no network wait


def test_a_filled_cache_passes_and_loads_through_the_real_paths(caches):
    tmp, resnet = caches
    paper = yaml.safe_load(PAPER.read_text())
    adapters = paper["detectors"]["bilora_authors"]["weights"]["checkpoints"]
    for g in adapters:  # the authors' adapters, cloned (local folders are only checked)
        adapters[g] = str(tmp / "VLM-DETECT" / g)
        Path(adapters[g]).mkdir(parents=True)
        (Path(adapters[g]) / "adapter_config.json").write_text("{}")
    (tmp / "paper.yaml").write_text(yaml.safe_dump(paper))
    out = _prefetch(tmp, "--configfile", str(tmp / "paper.yaml"),
                    "--out", str(tmp / "found.json"))
    assert out.returncode == 0, out.stderr
    found = {f["name"]: f for f in json.loads((tmp / "found.json").read_text())}
    assert set(found) == {"Salesforce/blip2-opt-2.7b", "resnet50", "legacy_xception",
                          *adapters.values()}
    assert all(not f["fetched"] and f["bytes"] > 0 for f in found.values())
    code = ("import torch, json\n"
            "from bilora.api.detector import create_detector\n"
            "cfg = json.loads(open('cfg.json').read())\n"
            "b = create_detector(cfg['bilora'], seed=0)\n"
            "r = create_detector(cfg['resnet50'], seed=0)\n"
            "x = create_detector(cfg['xception'], seed=0)\n"
            "w = r.model.state_dict()['layer1.0.conv1.weight']\n"
            "print(b.base_path, float(w.flatten()[:5].sum()))\n")
    from bilora import config as C

    paper = C.load(PAPER)["detectors"]
    for d in ("resnet50", "xception"):
        paper[d]["image_size"] = 32
    (tmp / "cfg.json").write_text(json.dumps(paper))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp,
                         env=_env(tmp), timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    base, first = run.stdout.split()
    assert base == "Salesforce/blip2-opt-2.7b"
    # the cached weights, not a fresh random init, are in the model (same numbers)
    assert float(first) == pytest.approx(float(resnet["layer1.0.conv1.weight"].flatten()[:5]
                                               .sum()), rel=1e-6)


def test_a_local_weights_file_is_used_without_any_cache(tmp_path, caches):
    tmp, resnet = caches
    from safetensors.torch import save_file

    mine = tmp_path / "resnet50_imagenet.safetensors"
    save_file({k: v.contiguous() * 2 for k, v in resnet.items()}, str(mine))
    cfg = {"kind": "timm", "model_name": "resnet50", "pretrained": True,
           "pretrained_file": str(mine), "image_size": 32,
           "train": {"epochs": 1, "batch_size": 2, "lr": 1e-3}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    code = ("import json\nfrom bilora.api.detector import create_detector\n"
            "d = create_detector(json.loads(open('cfg.json').read()), seed=0)\n"
            "print(float(d.model.state_dict()['layer1.0.conv1.weight'].flatten()[:5].sum()))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env=_env(tmp_path), timeout=300)  # empty caches here
    assert run.returncode == 0, run.stderr[-3000:]
    expected = 2 * float(resnet["layer1.0.conv1.weight"].flatten()[:5].sum())
    assert float(run.stdout.split()[-1]) == pytest.approx(expected, rel=1e-6)
    partial = tmp_path / "partial.safetensors"  # timm would load it silently (strict=False)
    save_file({k: v.contiguous() for k, v in resnet.items() if not k.startswith("layer4")},
              str(partial))
    spec = json.dumps([{"kind": "timm", "name": "resnet50", "key": "detectors.r.pretrained_file",
                        "file": str(partial)}])
    out = _prefetch(tmp_path, "--spec", spec)
    assert out.returncode == 1 and "lacks 60 of the resnet50 weights" in out.stderr
    missing = {**cfg, "pretrained_file": str(tmp_path / "nowhere.pth")}
    spec = json.dumps([{"kind": "timm", "name": "resnet50", "key": "detectors.r.pretrained_file",
                        "file": missing["pretrained_file"]}])
    out = _prefetch(tmp_path, "--spec", spec)
    assert out.returncode == 1 and "detectors.r.pretrained_file" in out.stderr


def test_training_jobs_wait_for_the_prefetch_check(tmp_path):
    from tests.test_workflow import smk

    out = smk("-n", "all", "--configfile", str(PAPER), "--printshellcmds", cwd=tmp_path)
    assert "bilora.cli prefetch" in out.stdout
    text = out.stdout
    assert "rule prefetch_models" in text and "results/paper/prefetch.json" in text
