"""Checkpoints behind URLs, pinned by size and sha256: fetched by `bilora prefetch` through
the Zenodo fetcher's transport against a loopback server (a cut transfer and a 503 resumed),
verified, renamed into place; a wrong sha256 refused leaving nothing under the final name;
offline, a missing file named with the command that fetches it."""

from __future__ import annotations

import copy
import hashlib

import pytest
import yaml

from bilora import config as C
from bilora.checkpoints import cache_dir
from bilora.cli import main
from tests.zenodo_server import serve

DATA = bytes(range(256)) * 4096  # 1 MiB


def _config(tmp_path, default_cfg, url: str, sha256: str) -> str:
    cfg = copy.deepcopy(default_cfg)
    cfg["detectors"] = {"released": {
        "kind": "dummy", "image_size": 32,
        "weights": {"from": "checkpoints", "checkpoints": {
            "sim-LDM": {"url": url, "size": len(DATA), "sha256": sha256}}}}}
    path = tmp_path / "released.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BILORA_CHECKPOINTS", str(tmp_path / "ckpt-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "ckpt-cache"


def test_a_url_checkpoint_is_fetched_resumed_verified_and_then_found_offline(
        tmp_path, default_cfg, cache, monkeypatch, capsys):
    sha = hashlib.sha256(DATA).hexdigest()
    with serve() as zenodo:
        zenodo.add("fc_weights.pth", DATA, "cut", "503")
        url = zenodo.file_url("fc_weights.pth")
        configfile = _config(tmp_path, default_cfg, url, sha)
        assert C.checkpoints(C.load(configfile)["detectors"]["released"])["sim-LDM"] == {
            "source": url, "revision": None, "size": len(DATA), "sha256": sha}
        assert main(["prefetch", "--configfile", configfile]) == 0
        ranges = [r[2].get("Range") for r in zenodo.requests_for("fc_weights.pth")]
    path = cache_dir() / sha / "fc_weights.pth"
    assert path.read_bytes() == DATA and not list(path.parent.glob("*.part"))
    assert any(r and r.startswith("bytes=") for r in ranges)  # the cut transfer resumed
    assert "fetched" in capsys.readouterr().out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the server is gone: the cache answers
    assert main(["prefetch", "--configfile", configfile, "--check"]) == 0
    assert "present" in capsys.readouterr().out


def test_a_wrong_sha256_is_refused_and_nothing_is_kept(tmp_path, default_cfg, cache, capsys):
    with serve() as zenodo:
        zenodo.add("fc_weights.pth", DATA)
        configfile = _config(tmp_path, default_cfg, zenodo.file_url("fc_weights.pth"),
                             "0" * 64)
        assert main(["prefetch", "--configfile", configfile]) == 1
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and "sha256" in err
    assert not any(p.is_file() for p in cache.rglob("*"))


def test_offline_a_missing_url_checkpoint_names_the_fetch_command(tmp_path, default_cfg,
                                                                  cache, monkeypatch,
                                                                  capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    configfile = _config(tmp_path, default_cfg, "http://127.0.0.1:9/fc_weights.pth",
                         hashlib.sha256(DATA).hexdigest())
    assert main(["prefetch", "--configfile", configfile]) == 1
    err = capsys.readouterr().err
    assert f"bilora prefetch --configfile {configfile}" in err
    assert "weights.checkpoints.sim-LDM" in err


def test_a_url_entry_needs_its_size_and_a_sha256(default_cfg):
    cfg = copy.deepcopy(default_cfg)
    cfg["detectors"]["bilora"]["weights"] = {"from": "checkpoints", "checkpoints": {
        "sim-LDM": {"url": "https://example.org/w.pth", "sha256": "ab"}}}
    with pytest.raises(C.ConfigError, match="checkpoints"):
        C.validate(cfg)


def test_the_import_spec_of_a_url_entry_is_a_valid_section(tmp_path, default_cfg):
    sha = hashlib.sha256(DATA).hexdigest()
    cfg = C.load(_config(tmp_path, default_cfg, "https://example.org/fc_weights.pth", sha))
    spec = C.import_spec(cfg, "released", "sim-LDM", 42)
    assert spec["detector"]["weights"]["checkpoints"] == {"sim-LDM": {
        "url": "https://example.org/fc_weights.pth", "size": len(DATA), "sha256": sha}}
    C.complete_detector(spec["detector"])  # what `bilora import-checkpoint` checks
    assert spec["checkpoint"]["source"] == "https://example.org/fc_weights.pth"
