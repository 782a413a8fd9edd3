"""Detector kinds: what the harness needs to know about each, without importing torch.

A kind's entry names its detector class (on the interface of :mod:`bilora.detectors`),
how to describe a config section of it without weights, how to check its model name when
the DAG is built, and, when it trains from a base model the workflow builds first (the
tiny random BLIP-2 of the embedded default), which part of its section determines that
base and how to build it. Every entry is a ``"module:attribute"`` string or a torch-free
function, so the Snakefile can read the registry at DAG build for free; the modules are
imported only when a job uses them.

Adding a detector touches its own module, one line here and a config section
(``docs/adding_a_detector.md``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BaseRecipe:
    """A base model the workflow builds before training (rule ``build_base_model``)."""

    needed: Callable[[dict[str, Any]], bool]  # from the detector's section, torch-free
    spec: Callable[[dict[str, Any]], dict[str, Any]]  # the part of the section that makes it
    build: str  # "module:function" (spec, out_dir, seed) -> None


@dataclass(frozen=True)
class Kind:
    """A detector kind: its class and what the workflow does around it."""

    detector: str  # "module:Class"
    describe: str  # "module:function" (section) -> list of lines, on the meta device
    check: str | None = None  # "module:function" (section, key) -> None; raises ConfigError
    base: BaseRecipe | None = None
    shares_base: bool = False  # several trained cells share one frozen base (group scoring)


def _tiny_base(section: dict[str, Any]) -> bool:
    return section["base_model"]["source"] == "tiny"


KINDS: dict[str, Kind] = {
    "bilora": Kind("bilora.detector:BiLoRADetector", "bilora.describe:describe_bilora",
                   check="bilora.artifacts:check_bilora_base",
                   base=BaseRecipe(_tiny_base, lambda s: {"tiny": s["base_model"]["tiny"]},
                                   "bilora.tiny_blip2:build_from_spec"),
                   shares_base=True),
    "timm": Kind("baselines.timm_detector:TimmDetector", "bilora.describe:describe_module",
                 check="baselines.timm_detector:check_config"),
    "dummy": Kind("bilora.dummy:DummyDetector", "bilora.describe:describe_module"),
}


def kind(name: str) -> Kind:
    """The registry entry of ``name``; the error lists the known kinds."""
    if name not in KINDS:
        raise KeyError(f"unknown detector kind {name!r}; known kinds: {', '.join(sorted(KINDS))}")
    return KINDS[name]


def resolve(ref: str) -> Any:
    """Import ``"module:attribute"`` and return the attribute."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def check_models(detectors: dict[str, dict[str, Any]]) -> None:
    """Run every kind's model-name check (e.g. timm's registry) on the detector sections;
    ConfigError names the key ``detectors.<id>...`` at fault."""
    for det, section in detectors.items():
        check = kind(section["kind"]).check
        if check is not None:
            resolve(check)(section, f"detectors.{det}")


def base_recipe(section: dict[str, Any]) -> BaseRecipe | None:
    """The base a detector section needs built first, or None."""
    recipe = kind(section["kind"]).base
    return recipe if recipe is not None and recipe.needed(section) else None
