"""LoRA on CLIP: PEFT LoRA on the attention projections of a CLIP vision tower
(``q_proj``, ``v_proj``, ... of every ``CLIPAttention``) and ``Linear(projection_dim, 1)`` on
its projected image embedding, trained with BCE; P(fake) = sigmoid. The C2P-CLIP / Effort
family (FIELD.md section 1) on transformers' ``CLIPVisionModelWithProjection``
(:mod:`baselines._clip` says why).

Preprocessing: those works resize the short side to 224, centre-crop 224 and apply CLIP's
mean and std. The data loader here gives square images, so ``input_fit = "resize"``
(bicubic) to the tower's input size: for a square image the same as their resize + crop;
a non-square image is squashed rather than cropped.

Saved as a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``)
with the head (``head.safetensors``) and the tower it runs on (``clip_base.json``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch

from baselines._clip import tower_path
from baselines._clip.tower import ClipDetector, load_tower, read_base_ref
from bilora.errors import ConfigError


@cache
def _tower_module_names() -> tuple[str, ...]:
    """The module names of a CLIP vision tower (one layer: every layer names the same)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1,
            image_size=8, patch_size=8, projection_dim=8))
    return tuple(n for n, _ in model.named_modules() if n)


def check_targets(targets: Sequence[str], key: str, names: Sequence[str] | None = None) -> None:
    """Every LoRA target must match a module of the tower, as PEFT matches (the full name,
    or its trailing dotted parts); ConfigError names ``<key>.lora.target_modules``."""
    names = _tower_module_names() if names is None else names
    unmatched = [t for t in targets
                 if not any(n == t or n.endswith(f".{t}") for n in names)]
    if unmatched:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names if "layers.0." in n})
        raise ConfigError(f"{key}.lora.target_modules: {unmatched} match no module of the CLIP "
                          f"vision tower; its layers hold {', '.join(leaves)}")


def lora_config(cfg: dict[str, Any]):
    """The ``peft.LoraConfig`` of the section (every field stated)."""
    from peft import LoraConfig

    lora = cfg["lora"]
    return LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                      target_modules=list(lora["target_modules"]), bias=lora["bias"])


class ClipLoRADetector(ClipDetector):
    """A CLIP tower under PEFT LoRA and a trained linear head."""

    kind = "clip_lora"

    @classmethod
    def build(cls, cfg: dict[str, Any], seed: int, base_dir: str | None = None
              ) -> ClipLoRADetector:
        path = tower_path(cfg, base_dir)
        tower = load_tower(path)
        torch.manual_seed(seed)
        return cls.from_tower(cfg, tower, path)

    @classmethod
    def from_tower(cls, cfg: dict[str, Any], tower: torch.nn.Module, base_path: str
                   ) -> ClipLoRADetector:
        """LoRA on ``tower`` (its targets checked against its modules) and a new head."""
        from peft import get_peft_model

        check_targets(cfg["lora"]["target_modules"], "detector",
                      [n for n, _ in tower.named_modules()])
        return cls(cfg, get_peft_model(tower, lora_config(cfg)), base_path)

    def save_weights(self, folder: Path) -> None:
        self.tower.save_pretrained(folder)
        self.save_head(folder)

    @classmethod
    def load_weights(cls, folder: Path, cfg: dict[str, Any]) -> ClipLoRADetector:
        from peft import PeftModel

        path = read_base_ref(folder)
        det = cls(cfg, PeftModel.from_pretrained(load_tower(path), folder), path)
        det.load_head(folder)
        return det

    def describe(self) -> str:
        c, lora = self.tower_config, self.cfg["lora"]
        return (f"LoRA r={lora['r']} on {'/'.join(lora['target_modules'])} of CLIP "
                f"{c.hidden_size}w x {c.num_hidden_layers} layers /{c.patch_size} "
                f"{self.base_path}, resize {self.input_size}")
