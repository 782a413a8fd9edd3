"""One parametrized test over every registered detector kind, on its spec's tiny section
(a kind whose spec has a base recipe gets its base built by that recipe, as the workflow's
build_base_model rule does: the ``built_bases`` fixture)."""

import json

import pytest
import torch

from bilora.api.detector import (
    create_detector,
    detector_class,
    load_detector,
    read_detector_meta,
    save_detector,
)
from bilora.api.kinds import kind, kind_names

TIMM_CFG = {"kind": "timm", "model_name": "resnet50", "pretrained": False, "image_size": 32,
            "model_kwargs": {"layers": [1, 1, 1, 1], "channels": [8, 8, 16, 16],
                             "stem_width": 8},
            "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3}, "eval": {"batch_size": 8}}
DUMMY_CFG = {"kind": "dummy", "image_size": 32, "train": {"epochs": 1, "batch_size": 8,
             "lr": 1e-2}, "eval": {"batch_size": 8}}


@pytest.fixture()
def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (8, 3, 48, 48), dtype=torch.uint8, generator=g)
    x[4:, :, ::2, ::2] = 255  # fakes carry a pattern
    return x, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])


@pytest.mark.parametrize("name", kind_names())
def test_detector_contract(name, built_bases, batch, tmp_path):
    det = create_detector(kind(name).tiny, seed=0, base_dir=built_bases[name])
    x, y = batch
    det.train()
    opt = torch.optim.Adam(det.trainable_parameters(), lr=1e-3)
    first = det.loss(x, y).item()
    for _ in range(10):
        loss = det.loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    det.eval()
    assert det.loss(x, y).item() < first
    p = det.predict_proba(x)
    assert p.shape == (8,) and float(p.min()) >= 0 and float(p.max()) <= 1
    save_detector(det, tmp_path / "model")
    saved = read_detector_meta(tmp_path / "model")["preprocessing"]
    assert saved == json.loads(json.dumps(det.preprocessing()))
    assert saved["fit"] == det.input_fit and saved["size"] == det.input_size
    if kind in ("bilora", "timm", "dummy"):  # each states its normalisation
        assert len(saved["mean"]) == 3 and len(saved["std"]) == 3
    again = load_detector(tmp_path / "model")
    assert type(again) is detector_class(name)
    assert torch.allclose(again.predict_proba(x), p, atol=1e-6)


def test_unknown_kind_lists_the_known_ones():
    with pytest.raises(KeyError, match="known: " + ", ".join(kind_names())):
        detector_class("vit")


def test_timm_config_is_not_mutated_by_timm():
    cfg = {**TIMM_CFG, "model_name": "xception41", "model_kwargs": {"block_cfg": [
        {"in_chs": 64, "out_chs": 32, "stride": 2},
        {"in_chs": 32, "out_chs": [32, 64, 64], "stride": 2, "no_skip": True,
         "start_with_relu": False}]}}
    before = repr(cfg)
    det = create_detector(cfg, seed=0)
    assert repr(cfg) == before
    assert "xception41" in det.describe() and "32px" in det.describe()


def test_save_is_atomic_on_failure(tmp_path, default_cfg):
    det = create_detector(DUMMY_CFG, seed=0)
    save_detector(det, tmp_path / "m")
    before = sorted(p.name for p in (tmp_path / "m").iterdir())

    def boom(folder):
        (folder / "partial").write_text("x")
        raise RuntimeError("disk full")

    det.save_weights = boom
    with pytest.raises(RuntimeError):
        save_detector(det, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == before
    assert torch.isfinite(load_detector(tmp_path / "m").predict_proba(
        torch.zeros(1, 3, 32, 32, dtype=torch.uint8))).all()


def test_a_missing_cuda_device_is_a_one_line_config_error():
    from bilora.api.detector import resolve_device
    from bilora.errors import ConfigError

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")  # one past the last, on any machine
    with pytest.raises(ConfigError, match="'gpu0'"):
        resolve_device("gpu0")
