"""UnivFD (Ojha, Li, Lee, CVPR'23; Yuheng-Li/UniversalFakeDetect): OpenAI CLIP ViT-L/14,
frozen; its projected image embedding (``encode_image``, 768-d) -> ``Linear(768, 1)``;
P(fake) = sigmoid. The tower is transformers' ``CLIPVisionModelWithProjection``
(:mod:`baselines._clip` says why).

Preprocessing as the authors' ``validate.py``: the centre 224 x 224 crop of the raw image,
no resizing (``input_fit = "crop"``; the data loader applies it), /255, CLIP mean
(0.48145466, 0.4578275, 0.40821073) and std (0.26862954, 0.26130258, 0.27577711). An image
smaller than the crop is zero-padded around it before normalisation, as torchvision's
``CenterCrop`` does in their transform: a 1x1 image is one pixel at row and column 111 of a
black square; a 7x3 (width x height) image fills rows 110-112 and columns 108-114; a
255x300 image gives its columns 16-239 and rows 38-261 (224 each), unresized
(``tests/test_dataset.py`` pins these offsets).

Training (the shared loop, ``bilora/training.py``): BCE on the logit, Adam lr 1e-4, batch 256
in the configs, head weight ~ N(0, 0.02) as the authors' ``init_gain``. With
``feature_cache: auto`` and no random augmentation the embedding of every training image is
computed once (``bilora/feature_cache.py``) and each epoch trains only the head.

Differences from the authors' recipe, documented rather than built:
- no early stopping: they validate every epoch, divide the lr by 10 when accuracy stalls for
  5 epochs and stop below lr 1e-6 (up to 100 epochs); the shared loop runs a fixed number of
  epochs and keeps the last;
- no training augmentation by default: they resize to 256, random-crop 224 and flip; those
  make cached features inexact, so the cache is used only with augmentation off (our
  ``train.augment`` has only the grid-aligned flip, which turns the cache off);
- training images reach the detector through the same centre crop as test images.

Released weights: the authors' ``pretrained_weights/fc_weights.pth`` (keys ``weight`` [1, 768],
``bias`` [1]) imports with :meth:`UnivFDDetector.import_weights`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from baselines._clip import tower_path
from baselines._clip.tower import ClipDetector, load_tower, read_base_ref
from bilora.api.detector import SharedGroup
from bilora.errors import ArtifactError, ConfigError

STAGE = "image_embeds"  # the one cacheable point: everything before the head is frozen


class UnivFDDetector(ClipDetector):
    """A frozen CLIP tower and a trained linear head."""

    kind = "univfd"

    def __init__(self, cfg: dict[str, Any], tower: torch.nn.Module, base_path: str):
        super().__init__(cfg, tower, base_path)
        self.tower.requires_grad_(False)

    @property
    def input_fit(self) -> str:
        return "crop"

    @classmethod
    def from_tower(cls, cfg: dict[str, Any], tower: torch.nn.Module, base_path: str
                   ) -> UnivFDDetector:
        return cls(cfg, tower, base_path)

    @classmethod
    def build(cls, cfg: dict[str, Any], seed: int, base_dir: str | None = None
              ) -> UnivFDDetector:
        path = tower_path(cfg, base_dir)
        det = cls.from_tower(cfg, load_tower(path, cfg["dtype"]), path)
        torch.manual_seed(seed)
        det.head.reset_parameters()  # the bias: torch's default, from the seeded generator
        torch.nn.init.normal_(det.head.weight, 0.0, cfg["head_init_std"])
        return det

    def save_weights(self, folder: Path) -> None:
        self.save_head(folder)

    @classmethod
    def load_weights(cls, folder: Path, cfg: dict[str, Any]) -> UnivFDDetector:
        path = read_base_ref(folder)
        det = cls(cfg, load_tower(path, cfg["dtype"]), path)
        det.load_head(folder)
        return det

    @classmethod
    def import_weights(cls, source: Path, folder: Path, cfg: dict[str, Any],
                       base_dir: str | None = None) -> UnivFDDetector:
        """The authors' released head (``fc_weights.pth``: a state dict of ``weight``
        [1, D] and ``bias`` [1], D the tower's projection size) on the tower of ``cfg``
        (``base_dir``: the built base folder of a tiny tower), saved into ``folder`` as
        ``save_weights`` writes it."""
        from bilora.config import complete_detector

        try:
            state = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure to read is the message
            raise ArtifactError(f"{source}: not a loadable torch state dict ({exc})") from exc
        if not isinstance(state, dict) or set(state) != {"weight", "bias"}:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ArtifactError(f"{source}: keys {keys}; a UnivFD head has exactly "
                                "'weight' and 'bias'")
        cfg = complete_detector(cfg)
        path = tower_path(cfg, base_dir)
        det = cls(cfg, load_tower(path, cfg["dtype"]), path)
        for key, param in det.head.state_dict().items():
            got = state[key]
            if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(param.shape):
                shape = list(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
                raise ArtifactError(f"{source}: key {key!r} has shape {shape}, the head of "
                                    f"this tower needs {list(param.shape)}")
        det.head.load_state_dict({k: v.float() for k, v in state.items()})
        det.save_weights(Path(folder))
        return det.eval()

    # -- the frozen-feature cache ---------------------------------------------------------
    def frozen_submodules(self) -> list[torch.nn.Module]:
        return [self.tower]

    def frozen_stage(self) -> str | None:
        return STAGE

    def cache_stage(self, setting: str) -> tuple[str | None, str]:
        return STAGE, "the projected CLIP embedding (the whole tower is frozen)"

    def feature_identity(self) -> dict[str, Any]:
        from bilora.feature_cache import base_identity

        return {"base": base_identity(self.base_path), "dtype": self.cfg["dtype"],
                "preprocessing": {"fit": self.input_fit, "mean": self.mean.flatten().tolist(),
                                  "std": self.std.flatten().tolist()},
                "size": self.input_size}

    def features(self, images: torch.Tensor, stage: str = STAGE) -> torch.Tensor:
        return self.embed(images)

    def loss_from_features(self, x: torch.Tensor, labels: torch.Tensor, stage: str = STAGE
                           ) -> torch.Tensor:
        return self.head_loss(x, labels)

    def describe(self) -> str:
        c = self.tower_config
        return (f"UnivFD (CLIP {c.hidden_size}w x {c.num_hidden_layers} layers /"
                f"{c.patch_size} {self.base_path}, centre crop {self.input_size})")


class HeadGroup(SharedGroup):
    """One frozen CLIP tower and the heads of several UnivFD cells: one tower pass per batch
    (the ``univfd`` kind's group scorer; :func:`bilora.evaluation.score_group` runs it)."""

    def __init__(self, folders: Sequence[str | Path], configs: Sequence[dict[str, Any]],
                 device: torch.device):
        folders = [Path(f) for f in folders]
        bases = {read_base_ref(f) for f in folders}
        dtypes = {c["dtype"] for c in configs}
        if len(bases) != 1 or len(dtypes) != 1:
            raise ConfigError(f"a UnivFD scoring group needs one tower loaded one way; got "
                              f"{sorted(bases)} and {sorted(dtypes)} (evaluation.sharing: "
                              "cell scores them apart)")
        base = bases.pop()
        tower = load_tower(base, configs[0]["dtype"])
        self.views = []
        for cfg, folder in zip(configs, folders, strict=True):
            view = UnivFDDetector(cfg, tower, base)
            view.load_head(folder)
            self.views.append(view.to(device).eval())

    @torch.no_grad()
    def predict(self, images: torch.Tensor, which: Sequence[int]
                ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """(P(fake), no token) of the cells ``which`` from one tower pass."""
        x = self.views[0].embed(images)
        return {i: self.views[i].predict_from_features(x) for i in which}
