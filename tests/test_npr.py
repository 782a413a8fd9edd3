"""The NPR kind against an independent re-statement of the authors' network
(chuangchuangtan/NPR-DeepfakeDetection ``networks/resnet.py``), their ``NPR.pth`` layout and
the centre-crop input."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from baselines.npr import PARAMETERS, forward_macs
from baselines.npr.detector import NPRDetector
from bilora.api.detector import create_detector, import_detector, load_detector
from bilora.errors import ArtifactError

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
BLOCKS = {"layer1": (3, 64), "layer2": (4, 128)}  # bottlenecks, inner width


def residual(x: torch.Tensor) -> torch.Tensor:
    """Each pixel minus the top-left pixel of its 2x2 block (nearest down, nearest up)."""
    top_left = x[..., ::2, ::2].repeat_interleave(2, -2).repeat_interleave(2, -1)
    return x - top_left


def authors_keys() -> list[str]:
    """The state-dict keys of the authors' resnet50(num_classes=1), written out."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["conv1.weight"] + [f"bn1.{b}" for b in bn]
    for layer, (n, _) in BLOCKS.items():
        for i in range(n):
            for j in (1, 2, 3):
                keys += [f"{layer}.{i}.conv{j}.weight"] + [f"{layer}.{i}.bn{j}.{b}" for b in bn]
            if i == 0:
                keys += [f"{layer}.0.downsample.0.weight"]
                keys += [f"{layer}.0.downsample.1.{b}" for b in bn]
    return keys + ["fc1.weight", "fc1.bias"]


def authors_logit(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Their forward in eval mode, written with torch.nn.functional on their key names."""
    def bn(h, k):
        return F.batch_norm(h, sd[f"{k}.running_mean"], sd[f"{k}.running_var"],
                            sd[f"{k}.weight"], sd[f"{k}.bias"], False, 0.0, 1e-5)

    h = F.conv2d(residual(x) * 2.0 / 3.0, sd["conv1.weight"], stride=2, padding=1)
    h = F.max_pool2d(F.relu(bn(h, "bn1")), 3, 2, 1)
    for layer, (n, _) in BLOCKS.items():
        for i in range(n):
            p = f"{layer}.{i}"
            stride = 2 if layer == "layer2" and i == 0 else 1
            out = F.relu(bn(F.conv2d(h, sd[f"{p}.conv1.weight"]), f"{p}.bn1"))
            out = F.relu(bn(F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=1),
                            f"{p}.bn2"))
            out = bn(F.conv2d(out, sd[f"{p}.conv3.weight"]), f"{p}.bn3")
            if i == 0:
                h = bn(F.conv2d(h, sd[f"{p}.downsample.0.weight"], stride=stride),
                       f"{p}.downsample.1")
            h = F.relu(out + h)
    return F.linear(h.mean((2, 3)), sd["fc1.weight"], sd["fc1.bias"])[:, 0]


def authors_state(seed: int = 1) -> dict[str, torch.Tensor]:
    """A random state dict of the authors' shapes, with non-trivial BN statistics."""
    g = torch.Generator().manual_seed(seed)
    ref = NPRDetector({"image_size": 32, "bn_momentum": 0.1}).net.state_dict()
    out = {}
    for k, v in ref.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7)
        elif k.endswith("running_var") or (k.endswith(".weight") and v.ndim == 1):
            out[k] = 0.5 + torch.rand(v.shape, generator=g)
        else:  # unit gain per layer: logits of order one
            out[k] = torch.randn(v.shape, generator=g) / max(1, v[0].numel()) ** 0.5
    return out


@pytest.fixture()
def det():
    return create_detector({"kind": "npr", "train": {"epochs": 1, "batch_size": 8,
                                                      "lr": 2e-4}}, seed=0).eval()


@pytest.fixture()
def image():
    g = torch.Generator().manual_seed(5)
    return torch.randint(0, 256, (2, 3, 40, 36), dtype=torch.uint8, generator=g)


def conv1_input(det: NPRDetector, images: torch.Tensor) -> torch.Tensor:
    seen = []
    hook = det.net.conv1.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    det.predict_proba(images)
    hook.remove()
    return seen[0]


def test_residual_is_the_pixel_minus_its_block_corner_scaled_by_two_thirds(det, image):
    x = (image.float() / 255 - MEAN) / STD
    by_interpolation = x - F.interpolate(F.interpolate(x, scale_factor=0.5, mode="nearest"),
                                         scale_factor=2, mode="nearest")
    assert torch.allclose(residual(x), by_interpolation)
    assert torch.allclose(conv1_input(det, image), residual(x) * 2 / 3, atol=1e-6)
    # an odd side loses its last row / column first (their README's fix)
    assert torch.allclose(conv1_input(det, image[:, :, :39, :35]),
                          residual(x[:, :, :38, :34]) * 2 / 3, atol=1e-6)


def test_layers_and_widths_are_the_authors(det):
    net = det.net
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (2, 2)
    assert net.conv1.bias is None and not hasattr(net, "layer3") and not hasattr(net, "fc")
    assert list(net.state_dict()) == authors_keys()
    shapes = {}
    for name in ("conv1", "maxpool", "layer1", "layer2", "fc1"):
        getattr(net, name).register_forward_hook(
            lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape)))
    det.predict_proba(torch.zeros(1, 3, 224, 224, dtype=torch.uint8))
    assert shapes == {"conv1": (1, 64, 112, 112), "maxpool": (1, 64, 56, 56),
                      "layer1": (1, 256, 56, 56), "layer2": (1, 512, 28, 28), "fc1": (1, 1)}
    assert sum(p.numel() for p in net.parameters()) == PARAMETERS


def test_a_state_dict_under_their_names_gives_their_logit(det, image):
    sd = authors_state()
    det.net.load_state_dict(sd)
    want = authors_logit(sd, (image.float() / 255 - MEAN) / STD)
    with torch.no_grad():
        assert torch.allclose(det.logit(image), want, rtol=1e-4, atol=1e-4)
    assert torch.allclose(det.predict_proba(image), torch.sigmoid(want), atol=1e-6)


@pytest.mark.parametrize("wrap", ["plain", "model", "module."])
def test_npr_pth_imports_bit_equal(det, image, tmp_path, wrap):
    sd = authors_state()
    published = {"plain": sd, "model": {"model": sd, "total_steps": 3},
                 "module.": {f"module.{k}": v for k, v in sd.items()}}[wrap]
    torch.save(published, tmp_path / "NPR.pth")
    got = import_detector(det.cfg, tmp_path / "NPR.pth", tmp_path / "m")
    again = load_detector(tmp_path / "m")
    for d in (got, again):
        assert all(torch.equal(v, sd[k]) for k, v in d.net.state_dict().items())
    assert torch.equal(again.predict_proba(image), got.eval().predict_proba(image))


@pytest.mark.parametrize("fault,names", [
    ("shape", "wrong shape fc1.weight [2, 512] (want [1, 512])"),
    ("missing", "missing layer2.3.bn3.running_var"),
    ("unexpected", "unexpected layer3.0.conv1.weight"),
])
def test_another_layout_is_refused_in_one_line(det, tmp_path, fault, names):
    sd = authors_state()
    if fault == "shape":
        sd["fc1.weight"] = torch.zeros(2, 512)
    elif fault == "missing":
        del sd["layer2.3.bn3.running_var"]
    else:
        sd["layer3.0.conv1.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "NPR.pth")
    with pytest.raises(ArtifactError) as err:
        import_detector(det.cfg, tmp_path / "NPR.pth", tmp_path / "m")
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "NPR.pth") in msg and names in msg
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("w,h", [(1, 1), (7, 3), (255, 300)])
def test_the_loader_crops_at_the_kind_size_and_the_grid_follows_the_offset(det, tmp_path,
                                                                          w, h):
    """At the kind's default 224 the loader places the image unresized (numpy offsets
    worked out here) in zeros; the network sees the residual of that canvas. With even
    offsets (255 x 300: 16, 38) it is the crop of the residual at native size, as the
    authors compute it; the 1 x 1 pixel lands at the odd offset 111, the second pixel of its
    2x2 block, so its residual is its value minus the padding's."""
    import pandas as pd
    from PIL import Image

    from bilora.data.dataset import ImageTable

    assert det.input_size == 224 and det.input_fit == "crop"
    rng = np.random.default_rng(w * 1000 + h)
    pixels = rng.integers(1, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    rows = pd.DataFrame({"abspath": [str(tmp_path / "x.png")], "label": [1],
                         "sha1": [hashlib.sha1((tmp_path / "x.png").read_bytes()).hexdigest()]})
    got = ImageTable(rows, det.input_size, fit=det.input_fit)[0][0]

    def offset(side):  # (canvas start, image start)
        return ((224 - side) // 2, 0) if side <= 224 else (0, int(round((side - 224) / 2)))
    (cy, iy), (cx, ix) = offset(h), offset(w)
    canvas = np.zeros((224, 224, 3), np.uint8)
    canvas[cy:cy + min(h, 224), cx:cx + min(w, 224)] = pixels[iy:iy + 224, ix:ix + 224]
    assert np.array_equal(got.permute(1, 2, 0).numpy(), canvas)

    def norm(a):
        return (torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255 - MEAN) / STD
    seen = conv1_input(det, got[None]) * 1.5
    assert torch.allclose(seen, residual(norm(canvas)), atol=1e-5)
    if (w, h) == (255, 300):
        assert (iy, ix) == (38, 16)
        native = residual(norm(pixels[:, :254]))  # their odd-width fix, then the crop
        assert torch.allclose(seen, native[..., 38:262, 16:240], atol=1e-5)
    if (w, h) == (1, 1):
        pad = norm(np.zeros((1, 1, 3), np.uint8))[0, :, 0, 0]
        assert (cy, cx) == (111, 111)
        assert torch.allclose(seen[0, :, 111, 111], norm(pixels)[0, :, 0, 0] - pad, atol=1e-5)


@pytest.mark.parametrize("side", [224, 37])
def test_cost_counts_the_modules_multiply_adds(det, side):
    macs = []

    def count(m, i, o):
        if isinstance(m, torch.nn.Conv2d):
            macs.append(o.numel() * m.in_channels * m.kernel_size[0] * m.kernel_size[1])
        elif isinstance(m, torch.nn.Linear):
            macs.append(m.in_features * m.out_features)
    for m in det.net.modules():
        m.register_forward_hook(count)
    det.predict_proba(torch.zeros(1, 3, side, side, dtype=torch.uint8))
    assert forward_macs(side) == sum(macs)
