"""The CLIP baselines (univfd, clip_lora) against independent re-statements of their
architectures, on tiny random CLIP towers built by their base recipe."""

from __future__ import annotations

import copy
import hashlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bilora import config as C
from bilora.api.detector import create_detector, load_detector, save_detector
from bilora.api.kinds import kind
from bilora.errors import ArtifactError, ConfigError
from tests.conftest import ROOT

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])
# a 224-pixel tower (the real crop size) that is still tiny: 7 x 7 patches of 32
TOWER_224 = {"width": 16, "layers": 1, "heads": 2, "patch_size": 32, "image_size": 224,
             "projection_dim": 8}


def _section(name: str, **tiny) -> dict:
    section = copy.deepcopy(kind(name).tiny)
    section["base_model"]["tiny"].update(tiny)
    return section


def _base(section: dict, folder) -> str:
    from baselines._clip import base_spec, build_tiny

    return str(build_tiny(base_spec(section), folder, seed=1))


def _tower(base: str):
    from transformers import CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection.from_pretrained(base).eval()


def _normalised(pixels: np.ndarray) -> torch.Tensor:
    """HWC uint8 -> CLIP's NCHW input, in numpy."""
    x = (pixels.astype(np.float64) / 255.0 - MEAN) / STD
    return torch.from_numpy(x.transpose(2, 0, 1)[None]).float()


def _centre(pixels: np.ndarray, side: int) -> np.ndarray:
    """The centre ``side`` square, zero-padded around a smaller image (numpy offsets)."""
    out = np.zeros((side, side, 3), np.uint8)

    def place(n: int) -> tuple[slice, slice]:
        if n <= side:
            start = (side - n) // 2
            return slice(start, start + n), slice(0, n)
        start = int(round((n - side) / 2.0))
        return slice(0, side), slice(start, start + side)
    (ty, sy), (tx, sx) = place(pixels.shape[0]), place(pixels.shape[1])
    out[ty, tx] = pixels[sy, sx]
    return out


def _table(tmp_path, arrays: list[np.ndarray]) -> pd.DataFrame:
    rows = []
    for i, a in enumerate(arrays):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(a).save(path)
        rows.append({"abspath": str(path), "label": i % 2,
                     "sha1": hashlib.sha1(path.read_bytes()).hexdigest()})
    return pd.DataFrame(rows)


def _images(n: int, side: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)
    x[n // 2:, :, ::2, ::2] = 255
    return x, torch.tensor([0] * (n // 2) + [1] * (n - n // 2))


def test_univfd_is_clip_embedding_then_linear_on_the_centre_crop(tmp_path):
    """Through the data loader (its crop, 1x1 / 7x3 / 255x300 images), P(fake) equals CLIP
    called directly on the numpy-cropped, CLIP-normalised pixels, then x @ w.T + b, sigmoid."""
    from bilora.data.dataset import ImageTable

    section = _section("univfd", **TOWER_224)
    base = _base(section, tmp_path / "base")
    det = create_detector(section, seed=3, base_dir=base).eval()
    assert (det.input_size, det.input_fit) == (224, "crop")
    rng = np.random.default_rng(0)
    arrays = [rng.integers(1, 256, (h, w, 3), dtype=np.uint8)
              for w, h in [(1, 1), (7, 3), (255, 300)]]
    table = ImageTable(_table(tmp_path, arrays), det.input_size, fit=det.input_fit)
    got = det.predict_proba(torch.stack([table[i][0] for i in range(len(arrays))]))

    tower = _tower(base)
    w, b = det.head.weight.detach(), det.head.bias.detach()
    with torch.no_grad():
        x = tower(pixel_values=torch.cat([_normalised(_centre(a, 224)) for a in arrays]))
        want = torch.sigmoid(x.image_embeds @ w.T + b)[:, 0]
    assert torch.allclose(got, want, atol=1e-6), (got, want)


def test_clip_lora_is_the_merged_tower_then_linear(tmp_path):
    """P(fake) equals a plain tower whose targeted projections carry W + alpha/r B A, then the
    head; trained LoRA factors (B is zero at init) make the check bite."""
    section = _section("clip_lora")
    base = _base(section, tmp_path / "base")
    det = create_detector(section, seed=0, base_dir=base)
    x, y = _images(8, 32)
    opt = torch.optim.Adam(det.trainable_parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        det.loss(x, y).backward()
        opt.step()
    det.eval()
    got = det.predict_proba(x)

    lora = section["lora"]
    scale = lora["alpha"] / lora["r"]
    tower = _tower(base)
    params = dict(det.named_parameters())
    merged = 0
    for name, module in tower.named_modules():
        if name.rsplit(".", 1)[-1] in lora["target_modules"]:
            stem = f"tower.base_model.model.{name}"
            a, b = params[f"{stem}.lora_A.default.weight"], params[f"{stem}.lora_B.default.weight"]
            assert b.abs().sum() > 0
            with torch.no_grad():
                module.weight += scale * b @ a
            merged += 1
    assert merged == 2 * section["base_model"]["tiny"]["layers"]
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        emb = tower(pixel_values=((x.double() / 255 - mean) / std).float()).image_embeds
        want = torch.sigmoid(emb @ det.head.weight.T + det.head.bias)[:, 0]
    assert torch.allclose(got, want, atol=1e-6), (got, want)


def test_clip_lora_adapter_folder_and_targets(tmp_path):
    section = _section("clip_lora")
    base = _base(section, tmp_path / "base")
    det = create_detector(section, seed=0, base_dir=base)
    save_detector(det, tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "head.safetensors"} <= files
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "m" / "adapter_model.safetensors"))
    assert saved and all("lora_" in k for k in saved)  # no tower weights written
    from baselines.clip_lora import check_section

    bad = copy.deepcopy(section)
    bad["lora"]["target_modules"] = ["q_proj", "qkv"]
    with pytest.raises(ConfigError, match=r"detectors\.x\.lora\.target_modules: \['qkv'\]"):
        check_section(bad, "detectors.x")


def test_fc_weights_import_equals_loading_by_hand_and_refuses_bad_files(tmp_path):
    section = _section("univfd")
    base = _base(section, tmp_path / "base")
    from baselines.univfd.detector import UnivFDDetector

    d = section["base_model"]["tiny"]["projection_dim"]
    state = {"weight": torch.randn(1, d), "bias": torch.randn(1)}
    fc = tmp_path / "fc_weights.pth"
    torch.save(state, fc)
    det = UnivFDDetector.import_weights(fc, _dest(tmp_path), section, str(tmp_path / "base"))
    by_hand = create_detector(section, seed=0, base_dir=base).eval()
    by_hand.head.load_state_dict(torch.load(fc))
    assert torch.equal(det.head.weight, state["weight"])
    assert torch.equal(det.head.bias, state["bias"])
    x, _ = _images(4, 32)
    assert torch.equal(det.predict_proba(x), by_hand.predict_proba(x))

    torch.save({"weight": torch.randn(1, d + 1), "bias": torch.randn(1)}, fc)
    with pytest.raises(ArtifactError) as err:
        UnivFDDetector.import_weights(fc, _dest(tmp_path), section, str(tmp_path / "base"))
    assert str(fc) in str(err.value) and "'weight'" in str(err.value)
    assert "\n" not in str(err.value)
    torch.save({"fc.weight": state["weight"], "fc.bias": state["bias"]}, fc)
    with pytest.raises(ArtifactError) as err:
        UnivFDDetector.import_weights(fc, _dest(tmp_path), section, str(tmp_path / "base"))
    assert str(fc) in str(err.value) and "fc.weight" in str(err.value)
    assert "\n" not in str(err.value)


def test_univfd_trains_the_same_from_its_feature_cache(tmp_path):
    """Two epochs from cached embeddings give the losses and the head of two from images."""
    from bilora import feature_cache
    from bilora.training import train_detector

    section = _section("univfd")
    base = _base(section, tmp_path / "base")
    x, y = _images(12, 32)
    images = torch.utils.data.TensorDataset(x, y)
    rows = pd.DataFrame({"sha1": [f"{i:040x}" for i in range(12)], "label": y.tolist()})
    runs = {}
    for name, augmenting in (("cache", False), ("images", True)):
        det = create_detector(section, seed=0, base_dir=base)
        plan = feature_cache.prepare(det, images, rows, None, tmp_path / name, augmenting,
                                     progress=False)
        assert (plan.stage is not None) == (name == "cache")
        cfg = {**det.cfg["train"], "epochs": 2, "batch_size": 5}
        hist = train_detector(det, plan.dataset, cfg, 0, tmp_path / f"ck-{name}", name,
                              progress=False, loss_fn=plan.loss_fn)
        runs[name] = ([h["loss"] for h in hist], det.head.weight.detach().clone())
    assert np.allclose(runs["cache"][0], runs["images"][0], atol=1e-6)
    assert torch.allclose(runs["cache"][1], runs["images"][1], atol=1e-6)


def test_univfd_group_scores_as_each_cell_alone(tmp_path):
    from baselines.univfd.detector import HeadGroup

    section = _section("univfd")
    base = _base(section, tmp_path / "base")
    folders = []
    for seed in (0, 1):
        det = create_detector(section, seed=seed, base_dir=base)
        folders.append(save_detector(det, tmp_path / f"cell{seed}"))
    x, _ = _images(6, 40)
    configs = [load_detector(f).cfg for f in folders]
    group = HeadGroup(folders, configs, torch.device("cpu"))
    assert (group.input_size, group.input_fit) == (32, "crop")
    out = group.predict(x, [0, 1])
    for i, f in enumerate(folders):
        alone = load_detector(f).predict_proba(x)
        assert torch.allclose(out[i][0].cpu(), alone, atol=1e-6)
    assert not torch.allclose(out[0][0], out[1][0])


def test_the_rank_ablation_sweeps_clip_lora():
    overlay = {"detectors": {"clip_lora": kind("clip_lora").tiny},
               "ablations": {"clip_lora": {"lora.r": [2, 4]}}}
    cfg = C.resolve(overlay, ROOT / "workflow" / "config" / "default.yaml")
    dets = C.detectors(cfg)
    assert dets["clip_lora@r=2"]["lora"]["r"] == 2 and dets["clip_lora"]["lora"]["r"] == 4


def test_field_embedded_config_adds_both_kinds_to_the_default():
    cfg = C.load(ROOT / "workflow" / "config" / "field-embedded.yaml")
    dets = C.detectors(cfg)
    assert {"bilora", "resnet50", "xception", "univfd", "clip_lora"} <= set(dets)
    assert cfg["run"] == "field-embedded"


def test_the_kind_specs_do_not_import_torch():
    code = ("import sys, baselines.univfd, baselines.clip_lora, baselines._clip;"
            "from bilora.api.kinds import kind; kind('univfd').cost(kind('univfd').tiny);"
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _dest(tmp_path):
    """A fresh folder for an import to write into."""
    out = tmp_path / "imported"
    out.mkdir(exist_ok=True)
    return out


def test_fc_weights_import_through_the_harness_loads_as_a_trained_cell(tmp_path):
    """``import_detector`` (what rule import_checkpoint runs) writes a model folder that
    ``load_detector`` opens like a trained cell's, with the same scores."""
    from bilora.api.detector import import_detector, load_detector

    section = _section("univfd")
    base = _base(section, tmp_path / "base")
    d = section["base_model"]["tiny"]["projection_dim"]
    fc = tmp_path / "fc_weights.pth"
    torch.save({"weight": torch.randn(1, d), "bias": torch.randn(1)}, fc)
    det = import_detector(section, fc, tmp_path / "cell" / "model", str(base))
    again = load_detector(tmp_path / "cell" / "model")
    x, _ = _images(4, 32)
    assert torch.equal(again.predict_proba(x), det.predict_proba(x))
    torch.save({"weight": torch.randn(1, d + 1), "bias": torch.randn(1)}, fc)
    with pytest.raises(ArtifactError):
        import_detector(section, fc, tmp_path / "cell2" / "model", str(base))
    assert not (tmp_path / "cell2" / "model").exists()
