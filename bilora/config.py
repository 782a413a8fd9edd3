"""Configuration: loading, merging, validation against the JSON schema, per-cell slices.

A config that sets every top-level key is complete and used as is
(``--configfile workflow/config/paper.yaml``): nothing of the default leaks in.
Otherwise it is an overlay deep-merged on top of the embedded default. Either way
the result is validated against
``bilora/schemas/config.schema.yaml`` (also ``workflow/schemas/``), and an error
names the key at fault. This module imports no torch: the Snakefile uses it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import yaml

PACKAGE_DIR = Path(__file__).resolve().parent
SCHEMA_PATH = PACKAGE_DIR / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config is invalid; the message names the file (when known) and the key."""


@cache
def schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``; mappings merge, everything else replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def validate(cfg: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Validate against the schema and cross-check ids; raise ConfigError naming the key."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), e.path))
    if errors:
        lines = []
        for e in errors[:10]:
            msg = e.message
            if e.validator == "additionalProperties":
                extra = sorted(set(e.instance) - set(e.schema.get("properties", {})))
                known = ", ".join(sorted(e.schema.get("properties", {})))
                msg = f"unknown key(s) {extra}; known keys here: {known}"
            lines.append(f"  {_path(e)}: {msg}")
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(lines))
    _cross_check(cfg, source)
    return cfg


def generators_of(ds: dict[str, Any]) -> list[str]:
    """The generators a dataset section provides (``generators`` or one ``generator``)."""
    return list(ds["generators"]) if "generators" in ds else [ds["generator"]]


def _cross_check(cfg: dict[str, Any], source: str) -> None:
    provided: dict[str, str] = {}
    for name, ds in cfg["data"]["datasets"].items():
        for g in generators_of(ds):
            if g in provided:
                raise ConfigError(f"{source}: data.datasets.{name}: generator {g!r} is also "
                                  f"provided by data.datasets.{provided[g]}")
            provided[g] = name
    for role in ("train", "test"):
        for g in cfg["generators"][role]:
            if g not in provided:
                raise ConfigError(f"{source}: generators.{role}: {g!r} is provided by no dataset "
                                  f"(known: {', '.join(provided)})")


def is_complete(given: dict[str, Any]) -> bool:
    """Whether a config sets every top-level key (then it is not merged on the default)."""
    return all(k in given for k in schema()["required"])


def resolve(given: dict[str, Any], default_path: str | os.PathLike,
            source: str = "config") -> dict[str, Any]:
    """The config a run uses: ``given`` if complete, else default + ``given``."""
    cfg = given if is_complete(given) else deep_merge(load_yaml(default_path), given)
    return validate(copy.deepcopy(cfg), source)


def load(path: str | os.PathLike | None, default_path: str | os.PathLike | None = None
         ) -> dict[str, Any]:
    """Load a config file for the CLI, resolved the same way as the Snakefile does."""
    default_path = default_path or default_config_path()
    given = load_yaml(path) if path else {}
    return resolve(given, default_path, source=str(path or default_path))


def default_config_path() -> Path:
    """``workflow/config/default.yaml`` of the checkout this package runs from."""
    for root in (Path.cwd(), PACKAGE_DIR.parent):
        p = root / "workflow" / "config" / "default.yaml"
        if p.exists():
            return p
    raise ConfigError("workflow/config/default.yaml not found; pass --configfile")


def digest(obj: Any, length: int = 12) -> str:
    """A stable hash of a JSON-able value (a config slice), ``length`` hex digits."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


# -- slices: what one job depends on (passed as rule params, a rerun trigger) -------------

def dataset_of(cfg: dict[str, Any], generator: str) -> str:
    for name, ds in cfg["data"]["datasets"].items():
        if generator in generators_of(ds):
            return name
    raise ConfigError(f"generator {generator!r} is provided by no dataset")


def train_spec(cfg: dict[str, Any], detector: str, generator: str) -> dict[str, Any]:
    det = cfg["detectors"][detector]
    return {"detector_id": detector, "detector": {k: v for k, v in det.items() if k != "eval"},
            "train_generator": generator, "seed": cfg["seed"], "device": cfg["device"]}


def score_spec(cfg: dict[str, Any], detector: str) -> dict[str, Any]:
    return {"detector_id": detector, "eval": cfg["detectors"][detector]["eval"],
            "test_generators": cfg["generators"]["test"], "seed": cfg["seed"],
            "perturbations": cfg["evaluation"]["perturbations"], "device": cfg["device"]}


def procedural_spec(cfg: dict[str, Any], dataset: str) -> dict[str, Any]:
    ds = cfg["data"]["datasets"][dataset]
    return {"dataset": ds, "seed": cfg["seed"],
            "max_rejected_fraction": cfg["data"]["max_rejected_fraction"]}


def base_spec(cfg: dict[str, Any], detector: str) -> dict[str, Any]:
    return {"tiny": cfg["detectors"][detector]["base_model"]["tiny"], "seed": cfg["seed"]}


def report_spec(cfg: dict[str, Any]) -> dict[str, Any]:
    return {"run": cfg["run"], "train": cfg["generators"]["train"],
            "test": cfg["generators"]["test"], "report": cfg["report"],
            "threshold": cfg["evaluation"]["threshold"]}
