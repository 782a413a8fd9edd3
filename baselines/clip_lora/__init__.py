"""The LoRA-on-CLIP kind (``clip_lora``; the C2P-CLIP / Effort family): PEFT LoRA on the
attention projections of a CLIP vision tower and a linear head on its projected embedding
(``detector.py``).

This module is the kind's spec and stays torch-free."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from baselines import _clip
from bilora.api.kinds import Cost, Kind, white_box_always


def _cost(section: dict[str, Any]) -> Cost:
    return _clip.cost(section, 3.0, 0.01)  # backward through the whole tower


KIND = Kind(
    detector="baselines.clip_lora.detector:ClipLoRADetector",
    schema=_clip.with_base_schema(Path(__file__).resolve().parent / "schema.yaml"),
    cost=_cost,
    tiny={"kind": "clip_lora",
          "base_model": _clip.TINY_BASE,
          "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"],
                   "bias": "none"},
          "train": {"epochs": 1, "batch_size": 8, "lr": 1e-2}, "eval": {"batch_size": 8}},
    check="baselines.clip_lora:check_section",
    white_box=white_box_always,
    **_clip.spec_fields(),
)


def check_section(section: dict[str, Any], key: str) -> None:
    """At DAG build: the tower's name, and LoRA targets that name modules of the tower."""
    from baselines.clip_lora.detector import check_targets

    _clip.check_base(section, key)
    check_targets(section["lora"]["target_modules"], key)
