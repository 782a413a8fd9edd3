"""ResNet50 / Xception baselines: a timm classifier with two outputs (real, fake).

``timm.create_model(model_name, pretrained=..., num_classes=2, **model_kwargs)``;
the embedded default passes in-family smaller kwargs (fewer blocks) and a small
input size, and the tables name what ran.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bilora.api.detector import Detector

WEIGHTS = "model.safetensors"


def check_weights_file(cfg: dict[str, Any]) -> None:
    """A local weights file must exist and hold every weight of the model but its classifier
    (timm loads a 2-class head without strict checks, so a partial file would pass silently).
    """
    import timm
    from timm.models import load_state_dict

    from bilora.errors import ArtifactError

    path = cfg["pretrained_file"]
    try:
        state = load_state_dict(path)
    except FileNotFoundError:
        raise ArtifactError(f"pretrained_file {path} of {cfg['model_name']} does not "
                            "exist") from None
    except Exception as exc:  # noqa: BLE001 - any failure to read is the message
        raise ArtifactError(f"pretrained_file {path}: not loadable ({exc})") from exc
    with torch.device("meta"):
        model = timm.create_model(cfg["model_name"], pretrained=False,
                                  **copy.deepcopy(cfg["model_kwargs"]))
    head = model.pretrained_cfg.get("classifier", "fc")
    wanted = {k for k in model.state_dict() if not k.startswith(f"{head}.")}
    missing = sorted(wanted - set(state))
    if missing:
        raise ArtifactError(f"pretrained_file {path} lacks {len(missing)} of the "
                            f"{cfg['model_name']} weights (e.g. {missing[0]})")


def check_config(section: dict[str, Any], key: str) -> None:
    """The model name must be in timm's registry (checked when the DAG is built)."""
    import difflib

    import timm

    from bilora.errors import ConfigError

    name = section["model_name"]
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        raise ConfigError(f"{key}.model_name: {name!r} is not a timm model"
                          + (f"; similar: {', '.join(close)}" if close else ""))


class TimmDetector(Detector):
    """A timm image classifier trained with cross-entropy on real (0) / fake (1)."""

    kind = "timm"

    def __init__(self, cfg: dict[str, Any], model: torch.nn.Module):
        super().__init__(cfg)
        self.model = model
        data_cfg = model.pretrained_cfg or {}
        mean = data_cfg.get("mean", (0.485, 0.456, 0.406))
        std = data_cfg.get("std", (0.229, 0.224, 0.225))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @staticmethod
    def _create(cfg: dict[str, Any], pretrained: bool) -> torch.nn.Module:
        import timm

        # timm edits some kwargs in place (xception's block_cfg): keep the config pristine
        kwargs = copy.deepcopy(cfg["model_kwargs"])
        if pretrained and cfg["pretrained_file"]:  # a local copy: no network, no cache
            check_weights_file(cfg)
            kwargs["pretrained_cfg_overlay"] = {"file": cfg["pretrained_file"]}
        return timm.create_model(cfg["model_name"], pretrained=pretrained, num_classes=2,
                                 **kwargs)

    @classmethod
    def build(cls, cfg: dict[str, Any], seed: int, base_dir: str | None = None) -> TimmDetector:
        torch.manual_seed(seed)
        return cls(cfg, cls._create(cfg, cfg["pretrained"]))

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalise(images.to(self.device, torch.float32) / 255.0)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """The model's input from float images in [0, 1]: resized to ``input_size`` when
        they are not there (bicubic, antialiased), the pretrained mean and std."""
        size = self.input_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False,
                              antialias=True)
        return (x - self.mean) / self.std

    def preprocessing(self) -> dict[str, Any]:
        """The loader's fit and size, and the normalisation of the model's pretrained config."""
        return {**super().preprocessing(),
                **{k: [round(v, 6) for v in getattr(self, k).flatten().tolist()]
                   for k in ("mean", "std")}}

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(images))

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(images), labels.to(self.device).long())

    def pixel_margin(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = self.model(self.normalise(pixels.to(self.device, torch.float32))).float()
        return logits[:, 1] - logits[:, 0]

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).float().softmax(-1)[:, 1].cpu()

    def save_weights(self, folder: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()},
                  str(folder / WEIGHTS))

    @classmethod
    def load_weights(cls, folder: Path, cfg: dict[str, Any]) -> TimmDetector:
        from safetensors.torch import load_file

        model = cls._create(cfg, pretrained=False)
        model.load_state_dict(load_file(str(folder / WEIGHTS)))
        return cls(cfg, model)

    def describe(self) -> str:
        kw = self.cfg["model_kwargs"]
        extra = ", ".join(f"{k}={v}" for k, v in sorted(kw.items()))
        pre = "pretrained" if self.cfg["pretrained"] else "from scratch"
        return f"{self.cfg['model_name']}({extra}) {self.input_size}px {pre}".replace("()", "")
