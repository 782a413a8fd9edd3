"""A tiny detector for tests and demos: one 3x3 convolution, |.|, global mean, linear.

It is the real interface on a model small enough to train in a second, so the
training loop, evaluation, metrics and reports can be exercised quickly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bilora.api.detector import Detector

WEIGHTS = "model.safetensors"


class DummyDetector(Detector):
    kind = "dummy"

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(16, 2)

    @classmethod
    def build(cls, cfg: dict[str, Any], seed: int, base_dir: str | None = None) -> DummyDetector:
        torch.manual_seed(seed)
        return cls(cfg)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self._logits(images.to(self.device, torch.float32) / 127.5 - 1.0)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of images scaled to [-1, 1]."""
        h = self.conv(x)
        feats = torch.cat([h.abs().mean((2, 3)), h.mean((2, 3))], 1)
        return self.head(feats)

    def preprocessing(self) -> dict[str, Any]:
        """The loader's fit and size; pixels scaled to [-1, 1] (mean 0.5, std 0.5)."""
        return {**super().preprocessing(), "mean": [0.5] * 3, "std": [0.5] * 3}

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(images), labels.to(self.device).long())

    def pixel_margin(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = self._logits(pixels.to(self.device, torch.float32) * 2.0 - 1.0)
        return logits[:, 1] - logits[:, 0]

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).softmax(-1)[:, 1].cpu()

    def save_weights(self, folder: Path) -> None:
        from safetensors.torch import save_file

        save_file(self.state_dict(), str(folder / WEIGHTS))

    @classmethod
    def load_weights(cls, folder: Path, cfg: dict[str, Any]) -> DummyDetector:
        from safetensors.torch import load_file

        det = cls(cfg)
        det.load_state_dict(load_file(str(folder / WEIGHTS)))
        return det
