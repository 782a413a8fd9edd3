"""Detector kinds: what the harness needs to know about each, without importing torch.

A kind is a plug-in: a folder (``bilora/kinds/<kind>/``, ``baselines/<kind>/``) whose
torch-free ``__init__`` holds its :class:`Kind` spec, registered by one line in its plug-in
folder's ``KINDS`` map. Everything the harness asks of a kind lives in that spec (timm's
``default_cfgs`` idea): its detector class, its config schema fragment, its model-name check,
the pretrained artifacts to prefetch, its cost for job sizing, the base it builds before
training, what lets its cells share a frozen part and how such a group is scored, its
describe summary, whether white-box attacks can take gradients to its pixels, and its tiny
test section. Generic modules (config, resources, artifacts,
the CLI) ask the spec; none of them names a kind.

Adding a detector kind: ``docs/adding_a_detector.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bilora.api.plugins import Registry, resolve

Section = dict[str, Any]

#: The plug-in folders holding detector kinds (each a package with a ``KINDS`` map).
KINDS = Registry("detector kind", "KINDS", ("bilora.kinds", "baselines"))


@dataclass(frozen=True)
class BaseRecipe:
    """A base model the workflow builds before training (rule ``build_base_model``)."""

    needed: Callable[[Section], bool]  # from the detector's section, torch-free
    spec: Callable[[Section], dict[str, Any]]  # the part of the section that makes it
    build: str  # "module:function" (spec, out_dir, seed) -> None


@dataclass(frozen=True)
class Cost:
    """What a model costs, for job sizing (``bilora/resources.py``): forward FLOPs per image,
    parameters, input side in pixels, training FLOPs per forward FLOP, and the share of the
    parameters that trains."""

    forward_flops: float
    parameters: float
    side: int
    train_factor: float = 3.0
    trainable_share: float = 1.0


@dataclass(frozen=True)
class Kind:
    """A detector kind: its class and what the workflow does around it."""

    detector: str  # "module:Class" on the interface of bilora.api.detector
    schema: Callable[[], Section]  # the kind's config-section schema ($defs/<kind>)
    cost: Callable[[Section], Cost]  # torch-free: job sizing
    tiny: Section  # a tiny section for the contract test (trains in seconds on a CPU)
    describe: str = "bilora.describe:describe_module"  # "module:function" (section) -> lines
    check: str | None = None  # "module:function" (section, key) -> None; raises ConfigError
    # torch-free: (section, key) -> the pretrained artifacts to prefetch (bilora.artifacts)
    artifacts: Callable[[Section, str], list] | None = None
    # artifact type -> "module:Class" that finds, fetches and checks it (bilora.artifacts)
    artifact_types: Callable[[], dict[str, str]] = field(default=dict)
    base: BaseRecipe | None = None
    # torch-free: what a section's frozen part is (cells with equal keys share it), or None
    # when it cannot be shared; with ``group_scorer`` ("module:Class", a scoring group)
    share_key: Callable[[Section], dict[str, Any] | None] | None = None
    group_scorer: str | None = None
    # torch-free: (section) -> None when ``Detector.pixel_margin`` has gradients to the
    # pixels (white-box attacks), else (the section key that forbids it, why); None: the
    # kind has no pixel gradients at all
    white_box: Callable[[Section], tuple[str, str] | None] | None = None


def white_box_always(section: Section) -> None:
    """A kind's ``white_box`` when every section of it has gradients to its pixels."""
    return None


def yaml_schema(path: Path) -> Callable[[], Section]:
    """A kind's ``schema``: the YAML fragment at ``path``."""
    def load() -> Section:
        import yaml

        return yaml.safe_load(path.read_text())
    return load


def kind_names() -> list[str]:
    return KINDS.names()


def kind(name: str) -> Kind:
    """The spec of ``name``; the error lists the known kinds."""
    return KINDS.get(name)


def check_models(detectors: dict[str, Section]) -> None:
    """Run every kind's model-name check (e.g. timm's registry) on the detector sections;
    ConfigError names the key ``detectors.<id>...`` at fault."""
    for det, section in detectors.items():
        check = kind(section["kind"]).check
        if check is not None:
            resolve(check)(section, f"detectors.{det}")


def base_recipe(section: Section) -> BaseRecipe | None:
    """The base a detector section needs built first, or None."""
    recipe = kind(section["kind"]).base
    return recipe if recipe is not None and recipe.needed(section) else None


def share_key(section: Section) -> dict[str, Any] | None:
    """What identifies a section's shareable frozen part, or None (scored cell by cell)."""
    spec = kind(section["kind"])
    return spec.share_key(section) if spec.share_key is not None else None


def white_box_refusal(section: Section) -> tuple[str, str] | None:
    """None when white-box attacks can take gradients to the section's pixels
    (``Detector.pixel_margin``); else (the section key that forbids it, why)."""
    spec = kind(section["kind"])
    if spec.white_box is None:
        return "kind", f"detector kind {section['kind']!r} has no pixel gradients"
    return spec.white_box(section)


def contribute_schema(schema: dict[str, Any]) -> None:
    """Put every registered kind into the config schema: the ``kind`` enum and each kind's
    section schema as ``$defs/<kind>`` (with the harness's own ``weights`` key)."""
    defs = schema["$defs"]
    detector = defs["detector"]
    names = kind_names()
    detector["properties"]["kind"]["enum"] = names
    detector.setdefault("allOf", []).extend(
        {"if": {"properties": {"kind": {"const": n}}}, "then": {"$ref": f"#/$defs/{n}"}}
        for n in names)
    for n in names:
        if n in defs:
            raise RuntimeError(f"detector kind {n!r} clashes with the schema's $defs/{n}")
        defs[n] = kind(n).schema()
        # keys of every kind, the harness's: where the weights come from
        defs[n]["properties"].setdefault("weights", {"$ref": "#/$defs/weights"})
        # `train` is the harness's to require ($defs/detector): not for imported weights
        defs[n]["required"] = [r for r in defs[n].get("required", []) if r != "train"]
