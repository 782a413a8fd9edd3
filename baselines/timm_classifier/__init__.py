"""The timm classifier kind (``timm``): ResNet50 / Xception baselines (``detector.py``), with
timm's ImageNet weights as prefetchable artifacts (``artifacts.py``).

This module is the kind's spec and stays torch-free."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bilora.api.kinds import Cost, Kind, white_box_always, yaml_schema

# (GMACs, native image size, parameters) of the models the configs use; others count as
# resnet50 for job sizing
SIZES = {"resnet50": (4.1, 224, 25.6e6), "legacy_xception": (8.4, 299, 22.9e6),
         "xception41": (9.3, 299, 27.0e6), "xception65": (14.0, 299, 40.0e6)}


def _cost(section: dict[str, Any]) -> Cost:
    gmacs, native, params = SIZES.get(section["model_name"], SIZES["resnet50"])
    side = section["image_size"]
    return Cost(2e9 * gmacs * (side / native) ** 2, params, side)


def describe(section: dict[str, Any]) -> list[str]:
    """The generic summary, built without pretrained weights (nothing is read on the meta
    device)."""
    from bilora.describe import describe_module

    return describe_module({**section, "pretrained": False})


def _artifacts(section: dict[str, Any], key: str) -> list:
    from bilora.artifacts import Artifact

    if not section["pretrained"]:
        return []
    return [Artifact("timm", section["model_name"], f"{key}.pretrained_file",
                     section["pretrained_file"])]


def _artifact_types() -> dict[str, Any]:
    from baselines.timm_classifier.artifacts import TimmWeights

    return {"timm": TimmWeights()}


KIND = Kind(
    detector="baselines.timm_classifier.detector:TimmDetector",
    schema=yaml_schema(Path(__file__).resolve().parent / "schema.yaml"),
    cost=_cost,
    tiny={"kind": "timm", "model_name": "resnet50", "pretrained": False, "image_size": 32,
          "model_kwargs": {"layers": [1, 1, 1, 1], "channels": [8, 8, 16, 16],
                           "stem_width": 8},
          "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3}, "eval": {"batch_size": 8}},
    describe="baselines.timm_classifier:describe",
    check="baselines.timm_classifier.detector:check_config",
    artifacts=_artifacts,
    artifact_types=_artifact_types,
    white_box=white_box_always,
)
