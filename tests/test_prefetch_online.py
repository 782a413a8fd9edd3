"""``bilora prefetch`` online: the real CLI fetches through huggingface_hub from a Hub.

The Hub is :mod:`tests.fake_hub`, on 127.0.0.1, speaking the Hub's HTTP protocol (repo
info, tree listing, ``resolve`` HEAD/GET, LFS files behind a 302 to a CDN origin, the
``X-Error-Code`` 404s); ``HF_ENDPOINT`` points the real client at it. Nothing is mocked:
``snapshot_download`` and ``hf_hub_download`` run as on a login node. It proves that
prefetch takes exactly the BLIP-2 files ``BLIP2_PATTERNS`` allows (not the ``.bin`` or
``.msgpack`` copies) and timm's ``model.safetensors``, lays them out in the hub cache, reports
their true sizes, survives a cut download and a 503 the library recovers from, that an
offline second run (server gone) passes from that cache, that ``transformers`` loads the
fetched BLIP-2 offline with the original's logits, and that an unknown repo fails on one
line naming the config key.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

from tests.conftest import DEFAULT, ROOT
from tests.fake_hub import Hub, serve

pytestmark = pytest.mark.slow

BLIP2 = "Salesforce/blip2-opt-2.7b"
RESNET = "timm/resnet50.a1_in1k"  # timm's hf_hub_id of resnet50's default weights
#: In the BLIP-2 repo but outside BLIP2_PATTERNS: prefetch must not request them.
EXCLUDED = ("pytorch_model.bin", "flax_model.msgpack", "README.md", ".gitattributes")


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HF_HUB_CACHE",
                        "HF_TOKEN", "HUGGINGFACE_HUB_CACHE")}
    return {**env, "HF_HOME": str(tmp / "hf"), "TORCH_HOME": str(tmp / "torch"),
            "PYTHONPATH": str(ROOT), "HF_HUB_DISABLE_PROGRESS_BARS": "1", **extra}


def _prefetch(tmp: Path, config: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bilora.cli", "prefetch", "--configfile",
                           str(config), "--out", str(tmp / "found.json")],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def _config(tmp: Path, name_or_path: str, resnet: bool = True) -> Path:
    """A complete config (the embedded default's data) whose detectors are a pretrained
    Bi-LoRA and, with ``resnet``, an ImageNet-pretrained resnet50: nothing else to fetch."""
    cfg = yaml.safe_load(DEFAULT.read_text())
    dets = cfg["detectors"]
    bilora = copy.deepcopy(dets["bilora"])
    bilora["base_model"] = {"source": "pretrained", "name_or_path": name_or_path}
    resnet50 = {k: v for k, v in dets["resnet50"].items() if k != "model_kwargs"}
    resnet50["pretrained"] = True
    cfg["detectors"] = {"bilora": bilora, **({"resnet50": resnet50} if resnet else {})}
    cfg.pop("ablations", None)
    path = tmp / f"online-{name_or_path.replace('/', '_')}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def repos(tmp_path_factory, default_cfg):
    """The two repos as folders: a tiny BLIP-2 saved in 2 shards with its processor, its
    image processor's preprocessor_config.json (as the real repo has) and files prefetch
    must skip; random resnet50 weights with timm's config.json and a README. Also the tiny
    BLIP-2's logits on one input, computed before saving."""
    import timm
    import torch
    from safetensors.torch import save_file

    from bilora.bases.blip2.tiny import IMAGE, make_tiny_blip2

    tmp = tmp_path_factory.mktemp("hub")
    tiny = default_cfg["detectors"]["bilora"]["base_model"]["tiny"]
    model, processor = make_tiny_blip2(tiny, seed=0)
    blip = tmp / "blip2"
    model.save_pretrained(blip, max_shard_size="100KB")  # measured: 2 shards + an index
    processor.save_pretrained(blip)
    processor.image_processor.save_pretrained(blip)
    torch.save({"w": torch.zeros(64)}, blip / "pytorch_model.bin")
    (blip / "flax_model.msgpack").write_bytes(b"\x80" * 4096)
    (blip / "README.md").write_text("# tiny BLIP-2\n")
    (blip / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    torch.manual_seed(1)
    pixels = torch.randn(1, 3, tiny["image_size"], tiny["image_size"])
    ids = torch.tensor([[IMAGE] * tiny["num_query_tokens"] + [1, 4]])
    model.eval()
    with torch.no_grad():
        logits = model(pixel_values=pixels, input_ids=ids).logits
    torch.save({"pixels": pixels, "ids": ids, "logits": logits}, tmp / "reference.pt")

    res = tmp / "resnet50"
    res.mkdir()
    torch.manual_seed(0)
    state = timm.create_model("resnet50", pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(res / "model.safetensors"))
    (res / "config.json").write_text(json.dumps({"architecture": "resnet50",
                                                 "num_classes": 1000}))
    (res / "README.md").write_text("# resnet50\n")
    return {BLIP2: blip, RESNET: res, "reference": tmp / "reference.pt"}


def test_the_config_is_valid(tmp_path, capsys):
    from bilora.cli import main

    assert main(["validate", "--configfile", str(_config(tmp_path, BLIP2))]) == 0
    assert ": valid (" in capsys.readouterr().out


def test_prefetch_fetches_from_the_hub_then_an_offline_run_passes_from_the_cache(
        tmp_path, repos):
    import torch
    from transformers import Blip2ForConditionalGeneration

    config = _config(tmp_path, BLIP2)
    blip, res = repos[BLIP2], repos[RESNET]
    index = json.loads((blip / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == 2
    hub = Hub({BLIP2: blip, RESNET: res}, page_size=4)  # the tree listing spans pages
    hub.fault(BLIP2, "config.json", "503")  # its first HEAD: the Hub briefly down
    hub.fault(RESNET, "model.safetensors", "cut")  # its first download breaks off half way
    t0 = time.monotonic()
    with serve(hub):
        out = _prefetch(tmp_path, config, _env(tmp_path, HF_ENDPOINT=hub.base))
    took = time.monotonic() - t0
    assert out.returncode == 0, out.stderr[-3000:]
    found = {f["name"]: f for f in json.loads((tmp_path / "found.json").read_text())}
    assert set(found) == {BLIP2, "resnet50"}
    assert all(f["fetched"] for f in found.values())
    # bytes: the config and the weights, as on the server
    blip_bytes = sum((blip / n).stat().st_size for n in ("config.json", *shards))
    assert found[BLIP2]["bytes"] == blip_bytes
    assert found["resnet50"]["bytes"] == (res / "model.safetensors").stat().st_size
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("fetched")]
    assert len(lines) == 2
    for f in found.values():  # what the CLI prints: name, size in MiB, cache path
        assert any(f"{f['name']}  {f['bytes'] / 2**20:,.1f} MiB  {f['path']}" in ln
                   for ln in lines)

    # the hub cache's layout, byte for byte the server's files
    sha = hub.repos[BLIP2].sha
    snap = tmp_path / "hf" / "hub" / "models--Salesforce--blip2-opt-2.7b" / "snapshots" / sha
    assert Path(found[BLIP2]["path"]) == snap
    wanted = {"config.json", "generation_config.json", "model.safetensors.index.json", *shards,
              "preprocessor_config.json", "processor_config.json", "tokenizer.json",
              "tokenizer_config.json"}
    assert {p.name for p in snap.iterdir()} == wanted
    assert all((snap / n).read_bytes() == (blip / n).read_bytes() for n in wanted)
    assert (snap.parent.parent / "refs" / "main").read_text() == sha
    weights = Path(found["resnet50"]["path"])
    assert weights.parent.name == hub.repos[RESNET].sha
    assert weights.read_bytes() == (res / "model.safetensors").read_bytes()

    # what went over the wire: the allowed files once each, nothing of EXCLUDED (HEAD or
    # GET), config.json's HEAD retried after the 503, only resnet's weights of its repo
    assert hub.content_requested(BLIP2) == wanted
    assert all(sum(r[0] == "GET" for r in hub.requests_for(BLIP2, n)) == 1 for n in wanted)
    assert not any(hub.requests_for(BLIP2, n) for n in EXCLUDED)
    heads = [r for r in hub.requests_for(BLIP2, "config.json") if r[0] == "HEAD"]
    assert len(heads) == 2  # the 503, then the library's retry
    assert hub.content_requested(RESNET) == {"model.safetensors"}
    assert not hub.requests_for(RESNET, "config.json")
    # the cut download resumed where the library's last whole chunk ended (it writes
    # DOWNLOAD_CHUNK_SIZE = 10 MiB at a time: measured, the 2nd GET asks bytes=41943040-)
    gets = [r for r in hub.requests_for(RESNET, "model.safetensors") if r[0] == "GET"]
    assert all(r[1].startswith("/cdn/") for r in gets)  # LFS: from the CDN origin
    half = (res / "model.safetensors").stat().st_size // 2
    resumed = half // DOWNLOAD_CHUNK_SIZE * DOWNLOAD_CHUNK_SIZE
    assert len(gets) == 2 and "Range" not in gets[0][2] and resumed > 0
    assert gets[1][2].get("Range") == f"bytes={resumed}-"
    tree_pages = [r for r in hub.log if f"/api/models/{BLIP2}/tree/" in r[1]]
    assert len(tree_pages) == -(-len(hub.repos[BLIP2].files) // 4)  # every page followed
    assert took < 60  # measured 8.5 s on 2 busy cores, 2 s of it the library's retry sleeps

    # offline, the server gone: everything is found in the cache, nothing fetched
    out = _prefetch(tmp_path, config, _env(tmp_path, HF_HUB_OFFLINE="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    again = {f["name"]: f for f in json.loads((tmp_path / "found.json").read_text())}
    assert all(not f["fetched"] for f in again.values())
    assert {n: f["bytes"] for n, f in again.items()} == {n: f["bytes"]
                                                         for n, f in found.items()}
    assert all(ln.startswith("present") for ln in out.stdout.splitlines())

    # transformers loads the fetched checkpoint by its hub id, offline: the same model
    ref = torch.load(repos["reference"])
    model = Blip2ForConditionalGeneration.from_pretrained(
        BLIP2, cache_dir=tmp_path / "hf" / "hub", local_files_only=True).eval()
    with torch.no_grad():
        logits = model(pixel_values=ref["pixels"], input_ids=ref["ids"]).logits
    assert torch.equal(logits, ref["logits"])  # bitwise: the very weights, same CPU ops


def test_unknown_repos_fail_on_one_line_naming_each_config_key(tmp_path, repos):
    config = _config(tmp_path, "Salesforce/blip2-nope")  # and resnet50, not served either
    with serve(Hub({BLIP2: repos[BLIP2]})) as hub:
        out = _prefetch(tmp_path, config, _env(tmp_path, HF_ENDPOINT=hub.base))
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    err = [ln for ln in out.stderr.splitlines() if "error" in ln.lower()]  # beside INFO logs
    assert len(err) == 1 and err[0].startswith("bilora prefetch: error: "), out.stderr
    assert out.stderr.strip().splitlines()[-1] == err[0]
    blip, timm = err[0].split("; ")  # every artifact at once
    assert "'Salesforce/blip2-nope' (detectors.bilora.base_model.name_or_path)" in blip
    assert "'resnet50' (detectors.resnet50.pretrained_file)" in timm
    for part in (blip, timm):  # the server's status and reason
        assert "the hub answered 404 (Repository not found)" in part
    assert f"GET {hub.base}/api/models/Salesforce/blip2-nope/revision/main" in blip
    assert f"HEAD {hub.base}/{RESNET}/resolve/main/model.safetensors" in timm
    # one look-up each, nothing retried, no other file name tried
    assert [(m, p) for m, p, _ in hub.log if p != "/api/agent-harnesses"] == [
        ("GET", "/api/models/Salesforce/blip2-nope/revision/main"),
        ("HEAD", f"/{RESNET}/resolve/main/model.safetensors")]
