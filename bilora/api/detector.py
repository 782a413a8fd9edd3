"""The one detector interface, and a lazy registry of detector kinds.

Every detector, Bi-LoRA or baseline, is built from its config section, trained by
the shared loop from ``loss(images, labels)``, saved to and loaded from a folder,
and asked for ``predict_proba(images)``: P(fake) for a batch of uint8 NCHW images.
Evaluation, metrics and reports only ever see this interface. Which class a kind uses is
its spec's business (:mod:`bilora.api.kinds`).
"""

from __future__ import annotations

import json
import os
from abc import ABCMeta, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from bilora.atomic import atomic_path
from bilora.model_files import DETECTOR_FILE, model_fingerprint, read_detector_meta
from bilora.score_parts import NO_TOKEN

__all__ = ["DETECTOR_FILE", "model_fingerprint", "read_detector_meta"]


class Detector(nn.Module, metaclass=ABCMeta):
    """Base class: a binary real/fake detector on uint8 NCHW image batches."""

    kind: ClassVar[str]

    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        self.cfg = cfg

    @property
    def input_size(self) -> int:
        """Side of the square images the detector wants from the data loader."""
        return int(self.cfg["image_size"])

    @property
    def input_fit(self) -> str:
        """How the data loader brings an image to ``input_size``: ``resize`` (bicubic) or
        ``crop`` (the centre crop, zero-padded when smaller; no resizing)."""
        return "resize"

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- to implement -------------------------------------------------------
    @classmethod
    @abstractmethod
    def build(cls, cfg: dict[str, Any], seed: int, base_dir: str | None = None) -> Detector:
        """A fresh, untrained detector from its config section."""

    @abstractmethod
    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Training loss on a batch (uint8 NCHW images, labels 0 real / 1 fake)."""

    @abstractmethod
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """P(fake) for a batch of uint8 NCHW images, a float tensor in [0, 1]."""

    @abstractmethod
    def save_weights(self, folder: Path) -> None:
        """Write the trained weights into ``folder`` (detector.json is written for you)."""

    @classmethod
    @abstractmethod
    def load_weights(cls, folder: Path, cfg: dict[str, Any]) -> Detector:
        """Rebuild a trained detector from what ``save_weights`` wrote."""

    # -- may override ---------------------------------------------------------
    @classmethod
    def import_weights(cls, source: Path, folder: Path, cfg: dict[str, Any],
                       base_dir: str | None = None) -> Detector:
        """Write released weights at ``source`` into ``folder`` as ``save_weights`` would and
        return the detector (its description and counts go into detector.json). Default: the
        released format is the saved one. A kind whose format differs overrides this."""
        det = cls.load_weights(Path(source), cfg)
        det.save_weights(folder)
        return det

    def predict_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(P(fake), the generated caption token); a kind without captions gives NO_TOKEN."""
        p = self.predict_proba(images)
        return p, torch.full((len(p),), NO_TOKEN)

    def preprocessing(self) -> dict[str, Any]:
        """How an image becomes this detector's input: the loader's ``fit`` and ``size``, and
        what the kind adds (its normalisation ``mean`` / ``std``, a processor's resizing).
        Written into ``detector.json`` and into scores files' provenance."""
        return {"fit": self.input_fit, "size": self.input_size}

    def pixel_margin(self, pixels: torch.Tensor) -> torch.Tensor:
        """The fake-minus-real logit margin of a batch, differentiable in ``pixels``: float32 NCHW
        in [0, 1] at the loader's size (``input_size``, after ``input_fit``), on ``self.device``.
        sigmoid(margin) equals ``predict_proba`` of the same images as uint8. A kind without
        gradients to its pixels raises NotImplementedError (see ``Kind.white_box``)."""
        raise NotImplementedError(f"detector kind {self.kind!r} has no pixel gradients "
                                  "(pixel_margin)")

    def frozen_stage(self) -> str | None:
        """The deepest frozen point of the image path whose output can be cached, or None."""
        return None

    def cache_stage(self, setting: str) -> tuple[str | None, str]:
        """(the stage a frozen-feature cache keeps, or None; why) for the section's
        ``feature_cache`` setting. A kind that returns a stage also implements
        ``features(images, stage)``, ``loss_from_features(x, labels, stage)`` and
        ``feature_identity()`` (everything but the images that determines the cached
        features: part of the cache's key; :mod:`bilora.feature_cache`)."""
        return None, f"detector kind {self.kind!r} has no frozen-feature cache"

    # -- shared -------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """Everything training changes (parameters and running statistics)."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state, strict=True)

    def frozen_submodules(self) -> list[nn.Module]:
        """Submodules kept in eval mode during training (frozen, no dropout)."""
        return []

    def train(self, mode: bool = True) -> Detector:
        super().train(mode)
        if mode:
            for m in self.frozen_submodules():
                m.eval()
        return self

    def parameter_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.trainable_parameters())
        return {"total": total, "trainable": trainable}

    def describe(self) -> str:
        """What actually ran (written into the saved model's detector.json)."""
        return self.kind


class SharedGroup(metaclass=ABCMeta):
    """A kind's group scorer (its spec's ``group_scorer``): the cells of a scoring group as
    detector ``views`` over one loaded frozen part, scored from one pass of it
    (:func:`bilora.evaluation.score_group`)."""

    views: list[Detector]

    @property
    def device(self) -> torch.device:
        return self.views[0].device

    @property
    def input_size(self) -> int:
        return self.views[0].input_size

    @property
    def input_fit(self) -> str:
        return self.views[0].input_fit

    @abstractmethod
    def predict(self, images: torch.Tensor, which: list[int]
                ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """(P(fake), token) of the cells ``which`` from one pass of the shared part."""


def detector_class(kind: str) -> type[Detector]:
    """The class registered for ``kind`` (:mod:`bilora.api.kinds`); the error lists the known
    kinds."""
    from bilora.api.kinds import kind as kind_spec
    from bilora.api.plugins import resolve

    return resolve(kind_spec(kind).detector)


def create_detector(cfg: dict[str, Any], seed: int, base_dir: str | None = None) -> Detector:
    """Build an untrained detector from its config section (``cfg['kind']`` picks the class);
    the section is validated and the schema's defaults are filled in first."""
    from bilora.config import complete_detector

    cfg = complete_detector(cfg)
    return detector_class(cfg["kind"]).build(cfg, seed=seed, base_dir=base_dir)


def save_detector(detector: Detector, folder: str | os.PathLike,
                  provenance: dict[str, Any] | None = None) -> Path:
    """Save atomically: write into ``<folder>.tmp``, then rename onto ``folder``."""
    folder = Path(folder)
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        detector.save_weights(tmp)
        _write_meta(detector, tmp, provenance)
    return folder


def import_detector(cfg: dict[str, Any], source: str | os.PathLike, folder: str | os.PathLike,
                    base_dir: str | None = None,
                    provenance: dict[str, Any] | None = None) -> Detector:
    """Import released weights (``Detector.import_weights`` of ``cfg['kind']``) into a model
    folder as ``save_detector`` writes it, atomically: on any error nothing is left there."""
    from bilora.config import complete_detector

    cfg = complete_detector(cfg)
    folder = Path(folder)
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        det = detector_class(cfg["kind"]).import_weights(Path(source), tmp, cfg, base_dir)
        _write_meta(det, tmp, {**(provenance or {}), **getattr(det, "import_notes", {})})
    return det


def _write_meta(detector: Detector, folder: Path, provenance: dict[str, Any] | None) -> None:
    meta = {"kind": detector.kind, "config": detector.cfg, "describe": detector.describe(),
            "parameters": detector.parameter_counts(), "provenance": provenance or {},
            "preprocessing": detector.preprocessing()}
    (folder / DETECTOR_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))


def load_detector(folder: str | os.PathLike, device: str = "cpu") -> Detector:
    """Load a trained detector of any kind from its folder, in eval mode."""
    meta = read_detector_meta(folder)
    det = detector_class(meta["kind"]).load_weights(Path(folder), meta["config"])
    return det.to(resolve_device(device)).eval()


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; a CUDA device this machine lacks is a
    ConfigError (one line) rather than a traceback from the first tensor moved there."""
    from bilora.errors import ConfigError

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        out = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device {device!r}: {exc}") from None
    if out.type == "cuda" and (not torch.cuda.is_available()
                               or (out.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"device {device!r}: this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s); use auto or cpu")
    return out
