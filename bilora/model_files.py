"""A saved detector folder read without importing torch: its description and identity.

A model folder may also hold ``threshold.json``, a decision threshold chosen on
validation data: ``{"threshold": 0.42, "chosen_on": "<what it was chosen on>"}``
(``threshold`` in [0, 1]; ``chosen_on`` free text, e.g. a validation set's name and the
criterion). ``bilora predict`` uses it unless ``--threshold`` is given. It changes no
score, so it is not part of the model's fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from bilora.atomic import file_hexdigest, write_json
from bilora.errors import ArtifactError

DETECTOR_FILE = "detector.json"
THRESHOLD_FILE = "threshold.json"


def read_detector_meta(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``detector.json`` of a saved detector folder (kind, config, counts, provenance)."""
    path = Path(folder) / DETECTOR_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {folder} is not a saved detector folder")
    return json.loads(path.read_text())


def model_fingerprint(folder: str | os.PathLike) -> str:
    """A sha1 over a saved model folder's files (names and bytes): the trained model's
    identity, whatever its path."""
    folder = Path(folder)
    lines = [f"{p.relative_to(folder).as_posix()} {file_hexdigest(p)}"
             for p in sorted(folder.rglob("*"))
             if p.is_file() and p.relative_to(folder).as_posix() != THRESHOLD_FILE]
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()


def read_threshold(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The model folder's ``threshold.json`` as ``{"threshold": float, "chosen_on": str}``, or
    None when there is none; ArtifactError names the file when it is malformed."""
    path = Path(folder) / THRESHOLD_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: not readable JSON ({exc})") from None
    value = data.get("threshold") if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ArtifactError(f"{path}: 'threshold' must be a number in [0, 1], not {value!r}")
    if not isinstance(data.get("chosen_on"), str):
        raise ArtifactError(f"{path}: 'chosen_on' must be a string saying what the "
                            "threshold was chosen on")
    return {"threshold": float(value), "chosen_on": data["chosen_on"]}


def write_threshold(folder: str | os.PathLike, threshold: float, chosen_on: str) -> Path:
    """Write a model folder's ``threshold.json`` atomically (see the module docstring)."""
    if not 0 <= threshold <= 1:
        raise ValueError(f"a threshold is in [0, 1], not {threshold}")
    path = Path(folder) / THRESHOLD_FILE
    write_json(path, {"threshold": float(threshold), "chosen_on": chosen_on})
    return path
