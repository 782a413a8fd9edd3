"""The shared loop: a run killed mid-training resumes and ends with identical weights."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from bilora.api.detector import create_detector
from bilora.training import CHECKPOINT, augment, learning_rate, train_detector

SPEC = {"detector_id": "r", "train_generator": "sim-LDM", "seed": 11, "device": "cpu",
        "jpeg_quality": None,
        "num_workers": 0,
        "detector": {"kind": "timm", "model_name": "resnet50", "pretrained": False,
                     "image_size": 48, "model_kwargs": {"layers": [1, 1, 1, 1],
                                                        "channels": [8, 16, 16, 32],
                                                        "stem_width": 8},
                     "train": {"epochs": 6, "batch_size": 16, "lr": 1e-3},
                     "eval": {"batch_size": 64}}}


def _train(tmp, tiny_data, spec=SPEC):
    return subprocess.Popen(
        [sys.executable, "-m", "bilora.cli", "train", "--spec", json.dumps(spec), "--manifest",
         str(tiny_data), "--out", str(tmp / "model"), "--checkpoint-dir", str(tmp / "ckpt"),
         "--threads", "1", "--quiet"], stderr=subprocess.PIPE, text=True)


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model" / "model.safetensors"))


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path, tiny_data):
    full = tmp_path / "full"
    assert _train(full, tiny_data).wait(timeout=300) == 0
    cut = tmp_path / "cut"
    proc = _train(cut, tiny_data)
    ckpt = cut / "ckpt" / CHECKPOINT
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline:  # the first epoch's checkpoint
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # somewhere in the epochs after it
    proc.wait()
    assert not (cut / "model").exists()
    done = torch.load(ckpt, weights_only=False)["epoch"]
    assert 1 <= done < SPEC["detector"]["train"]["epochs"], "the kill came too late to test"
    resumed = _train(cut, tiny_data)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resumed from {ckpt} after epoch {done} of 6" in err
    a, b = _weights(full), _weights(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((cut / "model" / "detector.json").read_text())
    assert [h["epoch"] for h in json.loads(meta["provenance"]["history"])] == list(range(1, 7))


def test_checkpoint_for_other_settings_is_not_resumed(tmp_path, tiny_data, caplog):
    from bilora.data.dataset import ImageTable, load_rows

    rows = load_rows([tiny_data], "train", ["sim-LDM"])
    cfg = {**SPEC["detector"], "train": {"epochs": 1, "batch_size": 32, "lr": 1e-3}}
    det = create_detector(cfg, seed=0)
    train_detector(det, ImageTable(rows, 48), det.cfg["train"], 0, tmp_path, "settings-A",
                   progress=False)
    det2 = create_detector(cfg, seed=0)
    with caplog.at_level("WARNING"):
        hist = train_detector(det2, ImageTable(rows, 48), det2.cfg["train"], 0, tmp_path,
                              "settings-B", progress=False)
    assert "written for other settings" in caplog.text and len(hist) == 1


def test_loss_falls_over_epochs(tmp_path, tiny_data):
    from bilora.data.dataset import ImageTable, load_rows

    rows = load_rows([tiny_data], "train", ["sim-ProGAN"])
    cfg = {"kind": "dummy", "image_size": 48, "eval": {"batch_size": 16},
           "train": {"epochs": 4, "batch_size": 16, "lr": 2e-2}}
    det = create_detector(cfg, 0)
    hist = train_detector(det, ImageTable(rows, 48), det.cfg["train"], 0, tmp_path, "x",
                          progress=False)
    assert hist[-1]["loss"] < hist[0]["loss"] and all(h["seconds"] > 0 for h in hist)


def test_cosine_schedule_and_constant():
    cfg = {"lr": 1e-3, "schedule": "cosine"}
    assert learning_rate(cfg, 0, 100) == pytest.approx(1e-3)
    assert learning_rate(cfg, 50, 100) == pytest.approx(5e-4)
    assert learning_rate(cfg, 99, 100) < 1e-6
    assert learning_rate({"lr": 1e-3, "schedule": "constant"}, 99, 100) == 1e-3


def test_step_schedule_decays_every_n_epochs():
    """``schedule: step`` (NPR's recipe: x0.9 every 10 epochs) from the step's epoch alone;
    required with its ``step`` block, which no other schedule gets filled in."""
    from bilora.config import complete_detector
    from bilora.errors import ConfigError

    cfg = {"lr": 2e-4, "epochs": 50, "schedule": "step",
           "step": {"every_epochs": 10, "gamma": 0.9}}
    per_epoch = 7
    total = 50 * per_epoch
    assert learning_rate(cfg, 10 * per_epoch - 1, total) == pytest.approx(2e-4)
    assert learning_rate(cfg, 10 * per_epoch, total) == pytest.approx(1.8e-4)
    assert learning_rate(cfg, total - 1, total) == pytest.approx(2e-4 * 0.9 ** 4)
    section = {"kind": "dummy", "image_size": 32,
               "train": {"epochs": 1, "batch_size": 8, "lr": 1e-2}}
    assert "step" not in complete_detector(section)["train"]
    with pytest.raises(ConfigError, match="'step' is a required property"):
        complete_detector({**section, "train": {**section["train"], "schedule": "step"}})


def test_hflip_mirrors_about_a_grid_boundary():
    """Half the batch is mirrored; a period-8 pattern keeps its phase (x -> W - x mod W)."""
    x = torch.arange(16, dtype=torch.uint8).repeat(64, 3, 4, 1)  # 64 images, W = 16
    torch.manual_seed(0)
    out = augment(x, {"augment": {"hflip": True}})
    flipped = (out != x).any((1, 2, 3))
    assert 16 < int(flipped.sum()) < 48  # about half (expected 32)
    col = out[flipped][0, 0, 0]
    assert col.tolist() == [0] + list(range(15, 0, -1))  # column x holds (W - x) mod W
    period8 = (torch.arange(16) % 8 == 0).to(torch.uint8).repeat(2, 3, 4, 1) * 255
    torch.manual_seed(1)
    assert torch.equal(augment(period8, {"augment": {"hflip": True}}), period8)
    assert torch.equal(augment(x, {"augment": {"hflip": False}}), x)

