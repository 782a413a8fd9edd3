"""NPR (Tan et al., CVPR'24, chuangchuangtan/NPR-DeepfakeDetection): a ResNet-50 cut after
``layer2`` on the neighbouring-pixel residual of the image.

The network re-states the authors' ``networks/resnet.py``: the ImageNet-normalised image
``x`` becomes ``NPR = x - up(down(x, 1/2))`` (nearest both ways, so each pixel minus the
top-left pixel of its 2x2 block), and ``conv1`` (3x3, stride 2, 64 channels) sees
``NPR * 2/3``; then ``bn1``, ReLU, 3x3 max-pool (stride 2), ``layer1`` (3 bottlenecks, 256
channels), ``layer2`` (4 bottlenecks, stride 2, 512 channels), global average pool and
``fc1 = Linear(512, 1)``: one logit, P(fake) its sigmoid, trained with BCE. An image with an
odd side loses its last row / column first (the fix in the authors' README). The state-dict
keys are the authors' (``conv1.weight``, ``layer2.3.bn3.running_var``, ``fc1.bias``), so
their ``NPR.pth`` loads as published (:meth:`NPRDetector.import_weights`).

Preprocessing differs from the authors' test in one way: they score each image at its native
size (batch 1, ``no_resize``, ``no_crop``); a batched loader needs one size, so this kind asks
for ``input_fit = "crop"``: the centre ``image_size`` square, unresized, an image smaller than
it zero-padded around (a constant region, whose residual is zero). The residual's 2x2 grid
stays on the image's own grid when the crop or pad offset is even; an odd offset shifts it by
one pixel. The network itself takes any size, as theirs does.

Training is from scratch, as theirs (README: Adam lr 2e-4, betas (0.9, 0.999), batch 32, 50
epochs, ``delr_freq`` 10, and ``adjust_learning_rate`` multiplies the rate by 0.9): in the
shared loop that is ``schedule: step`` with ``step: {every_epochs: 10, gamma: 0.9}``. Where
the shared loop differs: their first decay comes after 11 epochs (``epoch % 10 == 0 and
epoch != 0`` on a 0-based count), here after 10, each later one also an epoch earlier;
their training images are resized to 256 x 256 (bilinear) and randomly cropped to 224, here
the loader's fixed centre crop (no resize, no random crop; the same for their 256 x 256
ProGAN images but for the crop position); their flip is a plain horizontal flip, the shared
``augment.hflip`` flips then shifts by one pixel (the 2x2 grid keeps its phase, and one
column wraps around). Their blur / JPEG augmentation is off in their code, as here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck

from bilora.api.detector import Detector

WEIGHTS = "model.safetensors"
MEAN = (0.485, 0.456, 0.406)  # ImageNet, as their data/datasets.py normalises
STD = (0.229, 0.224, 0.225)


def npr_residual(x: torch.Tensor) -> torch.Tensor:
    """``x - up(down(x, 1/2))`` with nearest interpolation, as the authors compute it."""
    half = F.interpolate(x, scale_factor=0.5, mode="nearest", recompute_scale_factor=True)
    return x - F.interpolate(half, scale_factor=2.0, mode="nearest",
                             recompute_scale_factor=True)


class NPRNet(nn.Module):
    """The authors' ``resnet50(num_classes=1)``: ResNet-50 up to ``layer2`` on the residual."""

    def __init__(self) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, 3)
        self.layer2 = self._make_layer(128, 4, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc1 = nn.Linear(512, 1)
        for m in self.modules():  # their initialisation (fc1 keeps torch's default)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        width = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != width:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, width, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(width))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = width
        layers += [Bottleneck(width, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 1)`` of normalised images ``(N, 3, H, W)``."""
        h, w = x.shape[-2:]
        x = x[..., : h - h % 2, : w - w % 2]
        x = self.conv1(npr_residual(x) * 2.0 / 3.0)
        x = self.maxpool(self.relu(self.bn1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc1(torch.flatten(self.avgpool(x), 1))


def released_state(source: Path, reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict in a released NPR file (``NPR.pth``: a plain state dict; a ``{"model":
    ...}`` checkpoint of their trainer and ``module.`` prefixes are unwrapped), checked key
    for key and shape for shape against ``reference``; ArtifactError (one line naming the file
    and the first keys at fault) otherwise."""
    from bilora.errors import ArtifactError

    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is the message
        raise ArtifactError(f"{source}: not a loadable NPR weights file "
                            f"({str(exc).splitlines()[0]})") from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ArtifactError(f"{source}: not an NPR state dict (name -> tensor)")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    missing = [k for k in reference if k not in state]
    unexpected = [k for k in state if k not in reference]
    shapes = [f"{k} {list(v.shape)} (want {list(reference[k].shape)})"
              for k, v in state.items() if k in reference and v.shape != reference[k].shape]
    faults = [f"{what} {_few(keys)}" for what, keys in
              (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if keys]
    if faults:
        raise ArtifactError(f"{source}: not NPR's layout: {'; '.join(faults)}")
    return state


def _few(items: list[str], n: int = 3) -> str:
    """The first ``n`` items, and how many more."""
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


class NPRDetector(Detector):
    """NPR on the detector interface: centre-cropped batches, one logit, BCE."""

    kind = "npr"

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        self.net = NPRNet()
        for m in self.net.modules():  # None: a cumulative average (see the schema)
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = cfg["bn_momentum"]
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def preprocessing(self) -> dict[str, Any]:
        """The loader's centre crop, ImageNet normalisation, then the NPR residual."""
        return {**super().preprocessing(), "mean": list(MEAN), "std": list(STD),
                "residual": "x - up(down(x, 1/2)) nearest, x 2/3"}

    @property
    def input_fit(self) -> str:
        return "crop"

    @classmethod
    def build(cls, cfg: dict[str, Any], seed: int, base_dir: str | None = None) -> NPRDetector:
        torch.manual_seed(seed)
        return cls(cfg)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW -> ImageNet-normalised floats (their ToTensor + Normalize); no resizing."""
        return self.normalise(images.to(self.device, torch.float32) / 255.0)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet normalisation of float images in [0, 1]."""
        return (x - self.mean) / self.std

    def logit(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(images))[:, 0]

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self.logit(images),
                                                  labels.to(self.device).float())

    def pixel_margin(self, pixels: torch.Tensor) -> torch.Tensor:
        """The one logit (fake minus real, as P(fake) is its sigmoid)."""
        return self.net(self.normalise(pixels.to(self.device, torch.float32)))[:, 0].float()

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit(images).float()).cpu()

    def save_weights(self, folder: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()},
                  str(folder / WEIGHTS))

    @classmethod
    def load_weights(cls, folder: Path, cfg: dict[str, Any]) -> NPRDetector:
        from safetensors.torch import load_file

        det = cls(cfg)
        det.net.load_state_dict(load_file(str(folder / WEIGHTS)))
        return det

    @classmethod
    def import_weights(cls, source: Path, folder: Path, cfg: dict[str, Any],
                       base_dir: str | None = None) -> NPRDetector:
        """The authors' released weights (``NPR.pth``, ``model_epoch_last_3090.pth``) as this
        kind's model folder; refuses any other layout."""
        det = cls(cfg)
        det.net.load_state_dict(released_state(Path(source), det.net.state_dict()))
        det.save_weights(folder)
        return det

    def describe(self) -> str:
        return f"NPR ResNet-50 to layer2, {self.input_size}px centre crop"
