"""Provenance written into every model folder and score file: what made it."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import bilora


@cache
def git_commit() -> str:
    """The commit of the checkout this package runs from, or ``unknown``."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(bilora.__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out or "unknown"


def provenance(spec: dict[str, Any], **extra: Any) -> dict[str, str]:
    """Package version, git commit, torch version, config-slice hash, and what the caller adds."""
    from importlib.metadata import version

    from bilora.config import digest

    return {"bilora_version": bilora.__version__, "git_commit": git_commit(),
            "torch_version": version("torch"), "config_hash": digest(spec),
            **{k: str(v) for k, v in extra.items()}}
