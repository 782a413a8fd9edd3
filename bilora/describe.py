"""Model summaries built on the meta device: parameter counts without weights or network.

Each detector kind names its describer in its spec (:mod:`bilora.api.kinds`); this module
holds the dispatch and the generic describer."""

from __future__ import annotations

from typing import Any


def describe(det_cfg: dict[str, Any]) -> list[str]:
    """Lines of a model summary of a detector section (its kind's describer, no weights)."""
    from bilora.api.kinds import kind
    from bilora.api.plugins import resolve

    return resolve(kind(det_cfg["kind"]).describe)(det_cfg)


def describe_module(det_cfg: dict[str, Any]) -> list[str]:
    """A generic summary: the detector built on the meta device, its parameter counts."""
    import torch

    from bilora.api.detector import detector_class

    with torch.device("meta"):
        det = detector_class(det_cfg["kind"]).build(det_cfg, seed=0)
    counts = det.parameter_counts()
    return [f"model: {det.describe()}", f"total parameters: {counts['total']:,}",
            f"trainable parameters: {counts['trainable']:,}"]
