"""The UnivFD kind (``univfd``; Ojha et al., CVPR'23): a frozen CLIP ViT-L/14 and a linear
head on its projected embedding (``detector.py``), its cells scored with one CLIP pass per
test condition (``HeadGroup``).

This module is the kind's spec and stays torch-free."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from baselines import _clip
from bilora.api.kinds import Cost, Kind, white_box_always


def _cost(section: dict[str, Any]) -> Cost:
    # the tower is frozen: training is a forward (once, with the feature cache) and the head
    return _clip.cost(section, 1.0, 0.0)


def _share_key(section: dict[str, Any]) -> dict[str, Any]:
    """Every cell on the same tower, loaded in the same dtype, shares its pass."""
    return {"base": section["base_model"], "dtype": section["dtype"]}


KIND = Kind(
    detector="baselines.univfd.detector:UnivFDDetector",
    schema=_clip.with_base_schema(Path(__file__).resolve().parent / "schema.yaml"),
    cost=_cost,
    tiny={"kind": "univfd",
          "base_model": _clip.TINY_BASE,
          "train": {"epochs": 1, "batch_size": 8, "lr": 1e-2}, "eval": {"batch_size": 8}},
    check="baselines._clip:check_base",
    share_key=_share_key,
    group_scorer="baselines.univfd.detector:HeadGroup",
    white_box=white_box_always,
    **_clip.spec_fields(),
)
