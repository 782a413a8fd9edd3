"""The dummy detector kind: one 3x3 convolution, for tests and demos (``detector.py``).

This module is the kind's spec and stays torch-free."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bilora.api.kinds import Cost, Kind, white_box_always, yaml_schema


def _cost(section: dict[str, Any]) -> Cost:
    side = section["image_size"]  # one 3x3 conv with 8 channels
    return Cost(2 * 27 * 8 * side * side, 300, side)


KIND = Kind(
    detector="bilora.kinds.dummy.detector:DummyDetector",
    schema=yaml_schema(Path(__file__).resolve().parent / "schema.yaml"),
    cost=_cost,
    tiny={"kind": "dummy", "image_size": 32,
          "train": {"epochs": 1, "batch_size": 8, "lr": 1e-2}, "eval": {"batch_size": 8}},
    white_box=white_box_always,
)
