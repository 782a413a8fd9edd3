"""Baseline detector kinds on the bilora detector interface (:mod:`bilora.api.kinds`).

One folder per kind, its torch-free ``__init__`` holding the ``KIND`` spec; registered here.
"""

KINDS = {
    "timm": "baselines.timm_classifier:KIND",
}
