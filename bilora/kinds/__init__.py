"""Detector kinds of the package (the contract: :mod:`bilora.api.kinds`).

One folder per kind, its torch-free ``__init__`` holding the ``KIND`` spec; registered here.
The baselines' kinds are registered in ``baselines/__init__.py``.
"""

KINDS = {
    "bilora": "bilora.kinds.bilora:KIND",
    "dummy": "bilora.kinds.dummy:KIND",
}
