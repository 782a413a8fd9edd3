"""Pretrained artifacts (a BLIP-2 checkpoint, timm weights): where they come from.

Torch-free: the Snakefile calls :func:`check_bilora_base` when the DAG is built.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bilora.errors import ConfigError

#: A Hugging Face hub repository id: ``name`` or ``org/name``.
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]*/)?[A-Za-z0-9][A-Za-z0-9_.-]*$")


def looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a local path rather than a hub id."""
    return name.startswith(("/", "./", "../", "~")) or Path(name).exists() or name.count("/") > 1


def check_bilora_base(section: dict[str, Any], key: str) -> None:
    """A pretrained base must be a hub id (``org/name``) or an existing checkpoint folder."""
    base = section["base_model"]
    if base["source"] != "pretrained":
        return
    name = base["name_or_path"]
    where = f"{key}.base_model.name_or_path"
    if looks_like_path(name):
        folder = Path(name).expanduser()
        if not (folder / "config.json").is_file():
            raise ConfigError(f"{where}: {name!r} is not a folder holding a saved BLIP-2 "
                              f"checkpoint (no config.json there)")
    elif not HUB_ID.match(name):
        raise ConfigError(f"{where}: {name!r} is neither a hub id (org/name) nor a local folder")
