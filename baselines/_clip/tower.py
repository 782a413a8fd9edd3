"""The torch side of the CLIP baselines: loading the tower, CLIP's preprocessing, and a
detector base class with a linear head on the projected image embedding."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines._clip import BASE_REF, CLIP_MEAN, CLIP_STD
from bilora.api.detector import Detector
from bilora.score_parts import NO_TOKEN

HEAD = "head.safetensors"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tower(path: str, dtype: str = "float32") -> nn.Module:
    """The ``CLIPVisionModelWithProjection`` at ``path`` (a folder, or a hub id that
    ``bilora prefetch`` put in the hub cache), in eval mode."""
    from transformers import CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection.from_pretrained(path, dtype=DTYPES[dtype]).eval()


def write_base_ref(folder: Path, base: str) -> None:
    """Name the tower in a saved model folder: a folder relative to it (the model moves with
    the results tree), a hub id as it is."""
    ref = (os.path.relpath(Path(base).resolve(), folder.resolve())
           if Path(base).is_dir() else base)
    (folder / BASE_REF).write_text(json.dumps({"base": ref}))


def read_base_ref(folder: Path) -> str:
    """The tower a saved model folder names (:func:`write_base_ref`)."""
    name = json.loads((folder / BASE_REF).read_text())["base"]
    local = folder / name
    return str(local.resolve()) if not Path(name).is_absolute() and local.is_dir() else name


class ClipDetector(Detector):
    """A CLIP vision tower and ``Linear(projection_dim, 1)`` on its ``image_embeds``;
    P(fake) = sigmoid, trained with BCE. Subclasses say how the tower trains and how
    images reach ``input_size`` (``input_fit``)."""

    def preprocessing(self) -> dict[str, Any]:
        """The loader's fit and size, then CLIP's mean and std."""
        return {**super().preprocessing(), "mean": list(CLIP_MEAN), "std": list(CLIP_STD)}

    def __init__(self, cfg: dict[str, Any], tower: nn.Module, base_path: str):
        super().__init__(cfg)
        self.tower = tower
        self.base_path = base_path
        self.head = nn.Linear(self.tower_config.projection_dim, 1)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def tower_config(self):
        return self.tower.config

    @property
    def input_size(self) -> int:
        return int(self.tower_config.image_size)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.cfg.get("dtype", "float32")]

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's input: uint8 NCHW at ``input_size`` (brought there by ``input_fit`` when the
        loader did not), /255, CLIP mean and std."""
        x = self._fit(images.to(self.device), 255)
        return self._normalise(x.float() / 255.0)

    def _fit(self, x: torch.Tensor, top: float) -> torch.Tensor:
        """Images (values 0 .. ``top``) at ``input_size``: as they are, or by ``input_fit``."""
        size = self.input_size
        if x.shape[-2:] != (size, size):
            if self.input_fit == "crop":
                from torchvision.transforms.functional import center_crop

                x = center_crop(x, [size, size])
            else:
                x = F.interpolate(x.float(), size=(size, size), mode="bicubic",
                                  align_corners=False, antialias=True).clamp(0, top)
        return x

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """CLIP mean and std of float images in [0, 1], in the tower's dtype."""
        return ((x - self.mean) / self.std).to(self.dtype)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The projected image embedding (OpenAI CLIP's ``encode_image``), float32."""
        return self.tower(pixel_values=self.pixels(images)).image_embeds.float()

    def pixel_margin(self, pixels: torch.Tensor) -> torch.Tensor:
        """The head's logit (P(fake) is its sigmoid) through the tower, in its dtype."""
        x = self._normalise(self._fit(pixels.to(self.device, torch.float32), 1.0))
        embeds = self.tower(pixel_values=x).image_embeds.float()
        return self.head(embeds)[:, 0]

    def head_loss(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.head(x.to(self.device).float())[:, 0]
        return F.binary_cross_entropy_with_logits(logits, labels.to(self.device).float())

    def predict_from_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(P(fake), no token) from projected embeddings."""
        p = torch.sigmoid(self.head(x.to(self.device).float())[:, 0])
        return p, torch.full((len(p),), NO_TOKEN, device=p.device)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head_loss(self.embed(images), labels)

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict_from_features(self.embed(images))[0].cpu()

    # -- saving: the head, and the tower it runs on ---------------------------------------
    def save_head(self, folder: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous() for k, v in self.head.state_dict().items()},
                  str(folder / HEAD))
        write_base_ref(folder, self.base_path)

    def load_head(self, folder: Path) -> None:
        from safetensors.torch import load_file

        self.head.load_state_dict(load_file(str(folder / HEAD)))

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        unknown = set(state) - {n for n, _ in self.named_parameters()}
        if unknown:
            raise KeyError(f"checkpoint has parameters this model lacks: {sorted(unknown)[:5]}")
        self.load_state_dict(state, strict=False)
