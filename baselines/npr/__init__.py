"""The NPR kind (``npr``, Tan et al., CVPR'24): a ResNet-50 cut after ``layer2`` on the
neighbouring-pixel residual, scored on centre crops without resizing (``detector.py``); the
authors' ``NPR.pth`` imports through ``NPRDetector.import_weights``.

This module is the kind's spec and stays torch-free."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bilora.api.kinds import Cost, Kind, white_box_always, yaml_schema

PARAMETERS = 1_437_761  # conv1 .. layer2 and fc1 (tests/test_npr.py counts the module's)


def _half(n: int) -> int:
    """Output side of a stride-2 3x3 (padding 1) or 1x1 layer on side ``n``."""
    return (n + 1) // 2


def forward_macs(side: int) -> int:
    """Multiply-adds of the convolutions and ``fc1`` on a ``side`` square (odd sides lose a
    row and a column first); batch norm, ReLU and pooling are left out."""
    s1 = _half(side - side % 2)  # conv1, stride 2
    s2 = _half(s1)  # max-pool, stride 2: layer1's side
    s3 = _half(s2)  # layer2's first block, stride 2
    conv1 = 3 * 9 * 64 * s1 * s1
    # bottleneck 1x1 in->p, 3x3 p->p, 1x1 p->4p; the first block of a layer adds a 1x1
    # downsample in->4p, and in layer2 strides its 3x3 (and the downsample) by 2
    layer1 = (64 * 64 + 9 * 64 * 64 + 64 * 256 + 64 * 256
              + 2 * (256 * 64 + 9 * 64 * 64 + 64 * 256)) * s2 * s2
    layer2 = (256 * 128 * s2 * s2 + (9 * 128 * 128 + 128 * 512 + 256 * 512) * s3 * s3
              + 3 * (512 * 128 + 9 * 128 * 128 + 128 * 512) * s3 * s3)
    return conv1 + layer1 + layer2 + 512


def _cost(section: dict[str, Any]) -> Cost:
    side = section["image_size"]
    return Cost(2.0 * forward_macs(side), PARAMETERS, side)


KIND = Kind(
    detector="baselines.npr.detector:NPRDetector",
    schema=yaml_schema(Path(__file__).resolve().parent / "schema.yaml"),
    cost=_cost,
    # bn_momentum null: running statistics that 10 steps of the contract test can settle
    tiny={"kind": "npr", "image_size": 32, "bn_momentum": None,
          "train": {"epochs": 1, "batch_size": 8, "lr": 2e-4}, "eval": {"batch_size": 8}},
    white_box=white_box_always,
)
