"""A saved detector folder read without importing torch: its description and identity."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from bilora.atomic import file_hexdigest

DETECTOR_FILE = "detector.json"


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
             for p in sorted(folder.rglob("*")) if p.is_file()]
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()
