"""Training from frozen features computed once equals training from images, in float32."""

import copy

import pytest
import torch

from bilora.data.dataset import ImageTable, load_rows
from bilora.feature_cache import FeatureTable, build, cache_key, cache_point
from bilora.kinds.bilora.detector import BiLoRADetector
from bilora.training import train_detector

pytestmark = pytest.mark.slow
REL = 1e-5


def _cfg(default_cfg, **over):
    cfg = copy.deepcopy(default_cfg["detectors"]["bilora"])
    cfg["train"].update(epochs=2, batch_size=16, lr=3e-3)
    cfg.update(over)
    return cfg


def _close(a, b):
    return torch.allclose(a, b, rtol=REL, atol=1e-7)


@pytest.fixture(scope="module")
def rows(tiny_data):
    return load_rows([tiny_data], "train", ["sim-LDM"])


@pytest.mark.parametrize("extra, stage", [([], "projected"),
                                          (["qformer", "language_projection"], "vision")])
def test_cached_loss_and_lora_gradients_equal_the_uncached(default_cfg, tiny_base, rows, extra,
                                                           stage):
    det = BiLoRADetector.build(_cfg(default_cfg, extra_trainable=extra), 0, str(tiny_base))
    assert det.frozen_stage() == stage
    det.train()
    ds = ImageTable(rows, det.input_size)
    images = torch.stack([ds[i][0] for i in range(8)])
    labels = torch.tensor([ds[i][1] for i in range(8)])
    with torch.no_grad():  # the trap of a random BLIP-2: an image path that ignores the image
        x = det.features(images, "projected")
        spread = (det.vlm.answer_logits(x)[:, det.word_ids].diff(dim=-1)).std()
    assert spread > 1e-3, "the image does not move the logits: the check would prove nothing"

    def grads(loss):
        det.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in det.model.named_parameters() if p.requires_grad}

    # the reference: BLIP-2's own forward from pixels, its loss over every position with -100
    # on the image tokens and BOS (the full vocabulary head at every position)
    words = torch.tensor(det.word_ids)[labels]
    ids = torch.cat([det.vlm._prompt(8), words[:, None]], 1)
    target = torch.full_like(ids, -100)
    target[:, -1] = words
    torch.manual_seed(5)
    plain = det.model(pixel_values=det.vlm.pixel_values(images), input_ids=ids,
                      attention_mask=torch.ones_like(ids), labels=target).loss
    g_plain = grads(plain)
    torch.manual_seed(5)
    assert det.loss(images, labels).item() == pytest.approx(plain.item(), rel=REL)
    with torch.no_grad():
        feats = det.features(images, stage)
    torch.manual_seed(5)  # the same LoRA dropout masks
    cached = det.loss_from_features(feats, labels, stage)
    g_cached = grads(cached)
    assert cached.item() == pytest.approx(plain.item(), rel=REL)
    assert g_plain.keys() == g_cached.keys() and any("lora_" in k for k in g_plain)
    for name in g_plain:
        assert _close(g_cached[name], g_plain[name]), name


def test_a_training_run_from_the_cache_ends_with_the_same_weights(default_cfg, tiny_base, rows,
                                                                  tmp_path):
    cfg = _cfg(default_cfg)
    det = BiLoRADetector.build(cfg, 0, str(tiny_base))
    stage, _ = cache_point(det, "auto", False)
    assert stage == "vision"  # the embedded default trains the Q-Former
    train_detector(det, ImageTable(rows, det.input_size), det.cfg["train"], 0,
                   tmp_path / "a", "plain", progress=False)
    cached = BiLoRADetector.build(cfg, 0, str(tiny_base))
    path = build(cached, ImageTable(rows, cached.input_size), stage,
                 tmp_path / "cache" / "f.npy", 32, progress=False)
    table = FeatureTable(path, rows["label"].astype(int).tolist())
    train_detector(cached, table, cached.cfg["train"], 0, tmp_path / "b", "cached",
                   progress=False, loss_fn=lambda x, y: cached.loss_from_features(x, y, stage))
    a, b = det.checkpoint_state(), cached.checkpoint_state()
    assert a.keys() == b.keys()
    worst = max(((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)).item()
                for k in a)
    assert worst < 1e-4, worst  # measured: about 1e-6 after 2 epochs (float32 reordering)


def test_cache_is_reused_keyed_and_resumes(default_cfg, tiny_base, rows, tmp_path):
    cfg = _cfg(default_cfg)
    cfg["train"]["schedule"] = "constant"  # the stop is simulated with fewer epochs
    det = BiLoRADetector.build(cfg, 0, str(tiny_base))
    key = cache_key(det, "vision", rows, None)
    assert key != cache_key(det, "vision", rows, 75)  # the format control changes it
    assert key != cache_key(det, "vision", rows.iloc[::-1], None)  # and the images' order
    path = build(det, ImageTable(rows, det.input_size), "vision", tmp_path / f"{key}.npy", 32,
                 progress=False)
    stamp = path.stat().st_mtime_ns
    assert build(det, None, "vision", path, 32, progress=False) == path  # reused, not rebuilt
    assert path.stat().st_mtime_ns == stamp
    table = FeatureTable(path, rows["label"].astype(int).tolist())

    def run(epochs_list, ckpt):
        for epochs in epochs_list:  # stopped after each of these epoch counts, then resumed
            d = BiLoRADetector.build(cfg, 0, str(tiny_base))
            train_detector(d, table, {**d.cfg["train"], "epochs": epochs}, 0, ckpt, "same",
                           progress=False,
                           loss_fn=lambda x, y, d=d: d.loss_from_features(x, y, "vision"))
        return d.checkpoint_state()

    full, resumed = run([2], tmp_path / "a"), run([1, 2], tmp_path / "b")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_no_cache_where_it_would_not_be_exact(default_cfg, tiny_base):
    det = BiLoRADetector.build(_cfg(default_cfg), 0, str(tiny_base))
    assert cache_point(det, "auto", True)[0] is None  # random augmentation
    assert "augmentation" in cache_point(det, "auto", True)[1]
    assert cache_point(det, "off", False)[0] is None
    whole = BiLoRADetector.build(_cfg(default_cfg, extra_trainable=["vision_model"]), 0,
                                 str(tiny_base))
    assert cache_point(whole, "auto", False) == (
        None, "no point of the image path is frozen (its first stage trains)")
    lora_only = BiLoRADetector.build(_cfg(default_cfg, extra_trainable=[]), 0, str(tiny_base))
    assert cache_point(lora_only, "qformer", False)[0] == "qformer"
