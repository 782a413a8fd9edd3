"""Baseline detector kinds on the bilora detector interface (:mod:`bilora.api.kinds`).

One folder per kind, its torch-free ``__init__`` holding the ``KIND`` spec; registered here.
"""

KINDS = {
    "clip_lora": "baselines.clip_lora:KIND",
    "npr": "baselines.npr:KIND",
    "timm": "baselines.timm_classifier:KIND",
    "univfd": "baselines.univfd:KIND",
}
