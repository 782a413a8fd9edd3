"""``Detector.pixel_margin`` (white-box attacks) over every registered kind's tiny detector:
its sigmoid is ``predict_proba``, its gradient reaches the pixels and nothing else, and a few
signed-gradient steps lower it; ``Kind.white_box`` says which sections have it."""

from __future__ import annotations

import copy

import pytest
import torch

from bilora.api.detector import Detector, create_detector
from bilora.api.kinds import Kind, kind, kind_names, white_box_refusal

# measured on these CPUs (float32, 5 batches of 4): at most 1.8e-7 (Bi-LoRA), 0 to 6e-8
# for the others; bfloat16 Bi-LoRA and UnivFD: 0
TOLERANCE = 1e-4


def _detector(name: str, bases: dict, **changes) -> Detector:
    """The kind's tiny detector (its base: the ``built_bases`` fixture), in eval mode."""
    section = {**copy.deepcopy(kind(name).tiny), **changes}
    return create_detector(section, seed=0, base_dir=bases[name]).eval()


def _images(det: Detector, n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    side = det.input_size
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)


def _grad(det: Detector, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(margin, d sum(margin) / d pixels), the gradient taken w.r.t. the pixels only."""
    pixels = pixels.clone().requires_grad_(True)
    margin = det.pixel_margin(pixels)
    (grad,) = torch.autograd.grad(margin.sum(), pixels)
    return margin.detach(), grad


@pytest.mark.parametrize("name", kind_names())
def test_the_margin_is_predict_proba_differentiable_and_attackable(name, built_bases):
    det = _detector(name, built_bases)
    assert white_box_refusal(kind(name).tiny) is None
    x = _images(det)
    p = det.predict_proba(x)
    margin, grad = _grad(det, x.float() / 255.0)
    assert margin.shape == (len(x),) and margin.dtype == torch.float32
    gap = float((torch.sigmoid(margin).cpu() - p).abs().max())
    assert gap <= TOLERANCE, f"{name}: sigmoid(margin) is {gap:.2e} from predict_proba"
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # the gradient went to the pixels alone: no parameter, frozen or trainable, holds one
    assert all(p.grad is None for p in det.parameters())

    # FGSM-style descent on the margin (towards "real"): a real attack on the tiny model
    pixels = x.float() / 255.0
    before = float(det.pixel_margin(pixels).detach().mean())
    for _ in range(3):
        _, g = _grad(det, pixels)
        pixels = (pixels - 2 / 255 * g.sign()).clamp(0, 1)
    after = float(det.pixel_margin(pixels).detach().mean())
    assert after < before, f"{name}: the mean margin went {before:.4f} -> {after:.4f}"


def test_frozen_weights_stay_frozen_and_gradless(built_bases):
    """Bi-LoRA's base and UnivFD's tower are frozen (requires_grad False): the gradient runs
    through them to the pixels, and leaves them without one."""
    for name in ("bilora", "univfd"):
        det = _detector(name, built_bases)
        frozen = [p for p in det.parameters() if not p.requires_grad]
        assert frozen
        _, grad = _grad(det, _images(det).float() / 255.0)
        assert grad.abs().sum() > 0
        assert all(p.grad is None and not p.requires_grad for p in frozen)


def test_bilora_processor_leaves_an_image_at_its_size_unresized(built_bases):
    """pixel_features re-states the image processor as torch ops: at ``input_size`` its
    resize changes nothing, and rescale + normalise match its pixel_values."""
    det = _detector("bilora", built_bases)
    x = _images(det)
    proc = det.vlm.processor.image_processor
    want = det.vlm.pixel_values(x)
    mean = torch.tensor(proc.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(proc.image_std).view(1, 3, 1, 1)
    assert float((want - (x.float() / 255.0 - mean) / std).abs().max()) < 1e-5
    last = det.vlm.stages[-1]
    with torch.no_grad():
        a = det.vlm.pixel_features(x.float() / 255.0, last)
        b = det.vlm.features(x, last)
    assert float((a - b).abs().max()) < 1e-5


@pytest.mark.parametrize("name", ["bilora", "univfd"])
def test_the_model_dtype_is_respected(name, built_bases):
    """A bfloat16 base gets bfloat16 pixel values; the margin and the gradient are float32."""
    det = _detector(name, built_bases, dtype="bfloat16")
    x = _images(det)
    margin, grad = _grad(det, x.float() / 255.0)
    assert margin.dtype == torch.float32 and grad.dtype == torch.float32
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert float((torch.sigmoid(margin) - det.predict_proba(x)).abs().max()) < 1e-5


def test_bilora_generate_readout_refuses_white_box(built_bases):
    section = {**copy.deepcopy(kind("bilora").tiny), "readout": "generate"}
    key, why = white_box_refusal(section)
    assert key == "readout" and "hard labels" in why
    det = _detector("bilora", built_bases, readout="generate")
    with pytest.raises(NotImplementedError, match="readout"):
        det.pixel_margin(_images(det).float() / 255.0)


def test_a_kind_without_white_box_is_refused_by_name(monkeypatch):
    import bilora.api.kinds as K

    spec = K.kind("dummy")
    bare = Kind(detector=spec.detector, schema=spec.schema, cost=spec.cost, tiny=spec.tiny)
    monkeypatch.setattr(K, "kind", lambda name: bare)
    assert white_box_refusal({"kind": "dummy"}) == (
        "kind", "detector kind 'dummy' has no pixel gradients")


def test_the_default_pixel_margin_names_the_kind():
    det = create_detector(kind("dummy").tiny, seed=0)
    with pytest.raises(NotImplementedError, match="'dummy' has no pixel gradients"):
        Detector.pixel_margin(det, torch.zeros(1, 3, 32, 32))
