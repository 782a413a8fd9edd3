"""FGSM and PGD from adversarial-robustness-toolbox, driven through a detector's pixel score.

ART's ``PyTorchClassifier`` wants a module from pixels to class logits; a detector gives
``pixel_margin`` (fake minus real logit), so the module returns ``[-m/2, m/2]``: its
softmax is the detector's P(fake), and the cross-entropy gradient with the true label
pushes fakes towards ``real`` (evasion) and reals towards ``fake`` (framing). The
adversarial image is then quantised to uint8 inside the eps ball, as a published image is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from torch import nn

from bilora.attacks.plan import Step


class MarginLogits(nn.Module):
    """A detector's ``pixel_margin`` as two-class logits ``[-m/2, m/2]``."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        m = self.detector.pixel_margin(pixels).float()
        return torch.stack([-m / 2, m / 2], dim=1)


def art_classifier(detector, side: int):
    """ART's PyTorch estimator over ``detector`` for ``side`` x ``side`` RGB pixels in [0, 1]."""
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(MarginLogits(detector), loss=nn.CrossEntropyLoss(),
                             input_shape=(3, side, side), nb_classes=2, clip_values=(0.0, 1.0),
                             device_type="gpu" if detector.device.type == "cuda" else "cpu")


def art_attack(classifier, step: Step, batch_size: int):
    """ART's attack object for one grid step (PGD without random start: reproducible)."""
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent

    if step["attack"] == "fgsm":
        return FastGradientMethod(classifier, norm=np.inf, eps=step["eps"], targeted=False,
                                  batch_size=batch_size)
    return ProjectedGradientDescent(classifier, norm=np.inf, eps=step["eps"],
                                    eps_step=step["step_size"], max_iter=step["steps"],
                                    targeted=False, num_random_init=0, batch_size=batch_size,
                                    verbose=False)


def quantise(adv: np.ndarray, clean: np.ndarray, eps: float) -> np.ndarray:
    """``adv`` (float, [0, 1]) as uint8 pixels no further than eps (in 255ths, rounded down)
    from the uint8 ``clean`` image: what a saved PNG can hold of the attack."""
    k = int(np.floor(eps * 255 + 1e-6))
    q = np.rint(adv.astype(np.float64) * 255)
    lo = clean.astype(np.int16) - k
    hi = clean.astype(np.int16) + k
    return np.clip(np.clip(q, lo, hi), 0, 255).astype(np.uint8)


@contextmanager
def attack_mode(detector) -> Iterator[None]:
    """The detector as an attack needs it, restored after: eval mode (no dropout, BatchNorm's
    running statistics untouched: ART asks for ``train(False)`` too), no parameter
    requiring a gradient (ART's backward then computes and keeps none: the weights' ``.grad``
    would cost a backward through every trainable layer and their memory), and its CUDA
    device the current one (ART's estimator moves the model to the current device)."""
    was_training = detector.training
    wanted = [(p, p.requires_grad) for p in detector.parameters()]
    device = detector.device
    detector.eval()
    for p, _ in wanted:
        p.requires_grad_(False)
    try:
        with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
            yield
    finally:
        for p, req in wanted:
            p.requires_grad_(req)
        detector.train(was_training)


def attack_batch(detector, images: torch.Tensor, labels: torch.Tensor, steps: list[Step],
                 batch_size: int) -> dict[str, np.ndarray]:
    """Adversarial uint8 NCHW images of a uint8 batch at the detector's input size, one array
    per grid step (keyed by its name), the attack using the true labels (0 real, 1 fake).
    The detector is left as it was (:func:`attack_mode`)."""
    side = images.shape[-1]
    x = images.numpy().astype(np.float32) / 255.0
    y = np.eye(2, dtype=np.float32)[labels.numpy().astype(int)]
    clean = images.numpy()
    with attack_mode(detector):
        clf = art_classifier(detector, side)
        return {s["name"]: quantise(art_attack(clf, s, batch_size).generate(x, y=y), clean,
                                    s["eps"])
                for s in steps}
