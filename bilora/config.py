"""Configuration: loading, merging, validation (with the schema's defaults), cells, job slices.

A config that sets every required top-level key is complete and used as is
(``--configfile workflow/config/paper.yaml``): nothing of the default leaks in.
Otherwise it is an overlay deep-merged on top of the embedded default. Either way the
result is validated against ``bilora/schemas/config.schema.yaml`` (also
``workflow/schemas/``), the schema's ``default:`` values are filled in, and an error
names the key at fault. Every job's slice of the config (a rule's params, a rerun
trigger) is built here, typed, in one place. This module imports no torch: the
Snakefile uses it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import yaml

from bilora.errors import ConfigError

__all__ = ["ConfigError"]

PACKAGE_DIR = Path(__file__).resolve().parent
SCHEMA_PATH = PACKAGE_DIR / "schemas" / "config.schema.yaml"
VARIANT_MARK = "@"
POISON_KEY = "train.poison.fraction"  # what variants() says a poisoning variant changed
TRIGGER_CONDITION = ("trigger", "patch")  # scored on every cell when `poisoning` is set


#: Plug-in registries that put their members into the schema ("module:function" (schema)).
SCHEMA_PARTS = ("bilora.api.kinds:contribute_schema", "bilora.api.layouts:contribute_schema")


@cache
def schema() -> dict[str, Any]:
    """The config schema: the YAML file, plus what each plug-in registry contributes (its
    members' names and their own keys: detector kinds' sections, dataset layouts)."""
    from bilora.api.plugins import resolve

    out = yaml.safe_load(SCHEMA_PATH.read_text())
    for part in SCHEMA_PARTS:
        resolve(part)(out)
    return out


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


@cache
def _validator_class():
    """A Draft 2020-12 validator that fills in each property's ``default`` as it validates."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    check_properties = base.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, schema):
        if validator.is_type(instance, "object"):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from check_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(base, {"properties": properties_with_defaults})


def _path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _raise_errors(errors, source: str) -> None:
    errors = sorted(errors, key=lambda e: (len(e.absolute_path), list(map(str, e.path))))
    if errors:
        lines: list[str] = []
        for e in errors[:10]:
            msg = e.message
            if e.validator == "additionalProperties":
                extra = sorted(set(e.instance) - set(e.schema.get("properties", {})))
                known = ", ".join(sorted(e.schema.get("properties", {})))
                msg = f"unknown key(s) {extra}; known keys here: {known}"
            if f"  {_path(e)}: {msg}" not in lines:
                lines.append(f"  {_path(e)}: {msg}")
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(lines))


def validate(cfg: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Validate ``cfg`` in place, filling in the schema's defaults; cross-check the ids.

    Ablation variants are validated like any detector. Returns ``cfg``. Raises
    ConfigError naming ``source`` and the key at fault.
    """
    _raise_errors(_validator_class()(schema()).iter_errors(cfg), source)
    _cross_check(cfg, source)
    detector_schema = {"$ref": "#/$defs/detector", "$defs": schema()["$defs"]}
    for vid, (section, _) in _expand_ablations(cfg, source).items():
        _raise_errors(_validator_class()(detector_schema).iter_errors(section),
                      f"{source}: ablation variant {vid}")
    return cfg


def complete_detector(section: dict[str, Any], where: str = "detector") -> dict[str, Any]:
    """A copy of one detector section, validated, with the schema's defaults filled in."""
    section = copy.deepcopy(section)
    detector_schema = {"$ref": "#/$defs/detector", "$defs": schema()["$defs"]}
    _raise_errors(_validator_class()(detector_schema).iter_errors(section), where)
    return section


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
    datasets = cfg["data"]["datasets"]
    shared = cfg["data"]["shared_test_reals"]
    if shared is not None and shared not in datasets:
        raise ConfigError(f"{source}: data.shared_test_reals: no dataset {shared!r}; known: "
                          f"{', '.join(datasets)}")
    for name, ds in datasets.items():
        if ds.get("test_reals") == "shared" and (shared is None or shared == name):
            raise ConfigError(f"{source}: data.datasets.{name}.test_reals: shared needs "
                              "data.shared_test_reals to name another dataset")
        if ds.get("train_reals") == "lsun":
            lsun = lsun_dataset(cfg)
            if lsun is None or not set(generators_of(ds)) <= set(
                    datasets[lsun]["lsun"]["extra"]):
                raise ConfigError(f"{source}: data.datasets.{name}.train_reals: lsun needs "
                                  f"its generators in the lsun.extra list of the zenodo "
                                  f"dataset (found: {lsun})")
    for det in cfg["ablations"]:
        if det not in cfg["detectors"]:
            raise ConfigError(f"{source}: ablations.{det}: no detector {det!r}; known: "
                              f"{', '.join(cfg['detectors'])}")
    for det, section in cfg["detectors"].items():
        for g in checkpoints(section):
            if g not in cfg["generators"]["train"]:
                raise ConfigError(f"{source}: detectors.{det}.weights.checkpoints.{g}: {g!r} is "
                                  f"not a training generator (generators.train: "
                                  f"{', '.join(cfg['generators']['train'])})")
    from bilora.attacks.plan import check as check_attacks

    check_attacks(cfg, source)  # its notes are printed by the Snakefile
    published = cfg["report"].get("published") or {}
    if published.get("imported") is not None:
        det = published["imported"]
        if not imported(cfg["detectors"].get(det, {})):
            raise ConfigError(f"{source}: report.published.imported: {det!r} is no detector "
                              "with weights.from: checkpoints")


def lsun_dataset(cfg: dict[str, Any]) -> str | None:
    """The dataset that rebuilds reals from the LSUN LMDB (the zenodo one with ``lsun``)."""
    found = [n for n, ds in cfg["data"]["datasets"].items()
             if ds["source"] == "zenodo" and "lsun" in ds]
    return found[0] if len(found) == 1 else None


def is_complete(given: dict[str, Any]) -> bool:
    """Whether a config sets every required top-level key (then it is not merged)."""
    return all(k in given for k in schema()["required"])


def resolve(given: dict[str, Any], default_path: str | os.PathLike,
            source: str = "config") -> dict[str, Any]:
    """The config a run uses: ``given`` if complete, else default + ``given``; validated."""
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


# -- detectors, variants and cells --------------------------------------------------------

def _value_id(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(_value_id(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value).replace("/", "_").replace(" ", "_")


def _get(section: dict[str, Any], dotted: str, where: str) -> Any:
    node: Any = section
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{where}: {dotted!r} is not a key of the detector's section")
        node = node[part]
    return node


def _set(section: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = section
    for part in parents:
        node = node[part]
    node[last] = copy.deepcopy(value)


def _expand_ablations(cfg: dict[str, Any], source: str = "config"
                      ) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Variant id -> (its detector section, {base, key, value}) for every swept value."""
    out: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for det, sweeps in cfg["ablations"].items():
        base = cfg["detectors"][det]
        for key, values in sweeps.items():
            where = f"{source}: ablations.{det}.{key}"
            if isinstance(values, dict):
                out.update(_named_variants(det, base, key, values, where, out))
                continue
            current = _get(base, key, where)
            short = key.rsplit(".", 1)[-1]
            if sum(k.rsplit(".", 1)[-1] == short for k in sweeps) > 1:
                short = key
            for value in values:
                if value == current:
                    continue  # the base detector itself
                section = copy.deepcopy(base)
                _set(section, key, value)
                section.pop("label", None)
                vid = f"{det}{VARIANT_MARK}{short}={_value_id(value)}"
                if vid in out:
                    raise ConfigError(f"{where}: two values give the variant id {vid!r}")
                out[vid] = (section, {"base": det, "key": key, "value": value})
    for vid, entry in _expand_poisoning(cfg, source).items():
        if vid in out:
            raise ConfigError(f"{source}: poisoning: the variant id {vid!r} is also an "
                              "ablation variant")
        out[vid] = entry
    return out


def _named_variants(det: str, base: dict[str, Any], key: str,
                    named: dict[str, dict[str, Any] | None], where: str,
                    taken: dict[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """A named sweep: ``{name: {dotted key: value, ...}}``, each name a variant
    ``<det>@<key>=<name>`` whose section is the detector's with those keys replaced; a null
    entry names the detector itself (the report's base value)."""
    own = [name for name, over in named.items() if over is None]
    if len(own) > 1:
        raise ConfigError(f"{where}: {', '.join(own)} are all null; one entry at most names "
                          "the detector itself")
    out = {}
    for name, over in named.items():
        if over is None:
            continue
        section = copy.deepcopy(base)
        for dotted, value in over.items():
            parent = dotted.rpartition(".")[0]
            if parent:
                _get(section, parent, f"{where}.{name}")
            _set(section, dotted, value)
        label = section.pop("label", None) if "label" in over else None
        section.pop("label", None)
        vid = f"{det}{VARIANT_MARK}{key}={name}"
        if vid in taken:
            raise ConfigError(f"{where}: the variant id {vid!r} is given twice")
        info = {"base": det, "key": key, "value": name, "named": True,
                **({"label": label} if label else {})}
        out[vid] = (section, {**info, "base_name": own[0]} if own else info)
    return out


def _expand_poisoning(cfg: dict[str, Any], source: str = "config"
                      ) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Variant id (``<det>@poison=<fraction>``) -> (its section: the detector's with
    ``train.poison``, {base, key: train.poison.fraction, value: fraction})."""
    spec = cfg.get("poisoning")
    if not spec:
        return {}
    out: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for det in spec["detectors"]:
        if det not in cfg["detectors"]:
            raise ConfigError(f"{source}: poisoning.detectors: no detector {det!r}; known: "
                              f"{', '.join(cfg['detectors'])}")
        base = cfg["detectors"][det]
        if imported(base):
            raise ConfigError(f"{source}: poisoning.detectors: {det!r} imports released "
                              "weights (weights.from: checkpoints); only a trained detector "
                              "can be poisoned")
        for fraction in spec["fractions"]:
            if not 0 < fraction < 1:
                raise ConfigError(f"{source}: poisoning.fractions: {fraction} is not in (0, 1)")
            section = copy.deepcopy(base)
            section.pop("label", None)
            section["train"]["poison"] = {"fraction": fraction,
                                          "trigger": copy.deepcopy(spec["trigger"]),
                                          "target": spec.get("target", "real")}
            vid = f"{det}{VARIANT_MARK}poison={_value_id(fraction)}"
            out[vid] = (section, {"base": det, "key": POISON_KEY, "value": fraction})
    return out


def imported(section: dict[str, Any]) -> bool:
    """Whether a detector section's weights are released checkpoints, not trained."""
    return (section.get("weights") or {}).get("from") == "checkpoints"


def checkpoints(section: dict[str, Any]) -> dict[str, dict[str, str | None]]:
    """An imported detector's checkpoints: training generator -> {source, revision} (the
    block's revision unless the entry names its own); {} for a trained detector. A null
    entry (an overlay dropping a generator) is left out."""
    if not imported(section):
        return {}
    weights = section["weights"]
    out: dict[str, dict[str, str | None]] = {}
    for g, entry in weights["checkpoints"].items():
        if entry is None:
            continue
        entry = {"source": entry} if isinstance(entry, str) else entry
        if "url" in entry:  # one file pinned by size and sha256
            out[g] = {"source": entry["url"], "revision": None, "size": entry["size"],
                      "sha256": entry["sha256"]}
            continue
        out[g] = {"source": entry["source"],
                  "revision": entry.get("revision", weights.get("revision"))}
    return out


def detectors(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every detector of the run, by id: the configured ones, then the ablation variants."""
    return {**cfg["detectors"], **{v: sec for v, (sec, _) in _expand_ablations(cfg).items()}}


def variants(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Ablation variant id -> {base, key, value} (what the sweep changed)."""
    return {v: info for v, (_, info) in _expand_ablations(cfg).items()}


def labels(cfg: dict[str, Any]) -> dict[str, str]:
    """Display name of every detector (the report's business only; default the id)."""
    out = {d: sec.get("label") or d for d, sec in cfg["detectors"].items()}
    for v, info in variants(cfg).items():
        if info.get("label"):  # a named sweep's entry may name itself
            out[v] = info["label"]
            continue
        short = "poison" if info["key"] == POISON_KEY else info["key"].rsplit(".", 1)[-1]
        out[v] = f"{out[info['base']]} [{short}={_value_id(info['value'])}]"
    return out


def seeds(cfg: dict[str, Any]) -> list[int]:
    """Training seeds: ``seeds``, or ``[seed]`` when it is null."""
    return list(cfg["seeds"]) if cfg["seeds"] is not None else [cfg["seed"]]


@dataclass(frozen=True)
class Cell:
    """One trained model: detector x training generator x training seed."""

    detector: str
    train: str
    seed: int

    def path(self, cfg: dict[str, Any]) -> str:
        return f"results/{cfg['run']}/{self.detector}/train={self.train}/seed={self.seed}"


def cells(cfg: dict[str, Any], detector: str | None = None) -> list[Cell]:
    """Every cell of the run (or of one detector), in table order. An imported detector's
    cells are its checkpoints' generators (every seed imports the same weights)."""
    sections = detectors(cfg)
    dets = [detector] if detector else list(sections)
    return [Cell(d, g, s) for d in dets for g in cfg["generators"]["train"] for s in seeds(cfg)
            if not imported(sections[d]) or g in checkpoints(sections[d])]


# -- slices: what one job depends on (passed as rule params, a rerun trigger) -------------

def dataset_of(cfg: dict[str, Any], generator: str) -> str:
    for name, ds in cfg["data"]["datasets"].items():
        if generator in generators_of(ds):
            return name
    raise ConfigError(f"generator {generator!r} is provided by no dataset")


def jpeg_quality(cfg: dict[str, Any]) -> int | None:
    """The format control's JPEG quality, or None (images as stored)."""
    control = cfg["data"]["format_control"]
    return None if control is None else control["jpeg_quality"]


def _model_section(section: dict[str, Any]) -> dict[str, Any]:
    """A detector section without what does not change the trained model."""
    return {k: v for k, v in section.items() if k not in ("label", "eval")}


class TrainSpec(TypedDict):
    detector_id: str
    detector: dict[str, Any]
    train_generator: str
    seed: int
    device: str
    jpeg_quality: int | None


class ScoreSpec(TypedDict):
    trigger: NotRequired[dict[str, Any]]  # only with `poisoning`
    detector_id: str
    eval: dict[str, Any]
    test_generators: list[str]
    seed: int
    perturbations: dict[str, list]
    protocol: str
    device: str
    jpeg_quality: int | None


class ProceduralJobSpec(TypedDict):
    dataset: dict[str, Any]
    seed: int
    max_rejected_fraction: float


class BaseSpec(TypedDict):
    kind: str
    base: dict[str, Any]
    seed: int


class MetricsSpec(TypedDict):
    threshold: float
    resamples: int
    confidence: float
    seed: int


class ReportSpec(TypedDict):
    run: str
    train: list[str]
    test: list[str]
    labels: dict[str, str]
    note: str
    threshold: float
    confidence: float
    seeds: list[int]
    variants: dict[str, dict[str, Any]]
    real_sets: dict[str, str]
    datasets: dict[str, str]  # test generator -> the dataset holding it
    published: dict[str, Any] | None
    format_control: dict[str, int] | None
    protocol: str
    backdoor: NotRequired[dict[str, Any]]  # only with `poisoning`


def train_spec(cfg: dict[str, Any], detector: str, generator: str, seed: int) -> TrainSpec:
    return {"detector_id": detector, "detector": _model_section(detectors(cfg)[detector]),
            "train_generator": generator, "seed": seed, "device": cfg["device"],
            "jpeg_quality": jpeg_quality(cfg)}


class ImportSpec(TypedDict):
    detector_id: str
    detector: dict[str, Any]
    train_generator: str
    seed: int
    checkpoint: dict[str, str | None]


def import_spec(cfg: dict[str, Any], detector: str, generator: str, seed: int) -> ImportSpec:
    """One imported cell's slice: its section holding only this cell's checkpoint (another
    generator's checkpoint changing reruns only that cell's import)."""
    section = _model_section(detectors(cfg)[detector])
    ckpt = checkpoints(section)[generator]
    # a URL entry keeps its own form ({url, size, sha256}): the section stays valid
    entry = section["weights"]["checkpoints"][generator] if "sha256" in ckpt else ckpt
    section["weights"] = {"from": "checkpoints", "checkpoints": {generator: entry}}
    return {"detector_id": detector, "detector": section, "train_generator": generator,
            "seed": seed, "checkpoint": ckpt}


def trigger(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The backdoor trigger every cell is also scored under (``poisoning``), or None."""
    spec = cfg.get("poisoning")
    return copy.deepcopy(spec["trigger"]) if spec else None


def perturbations(cfg: dict[str, Any]) -> dict[str, list]:
    """``evaluation.perturbations``, plus ``trigger: [patch]`` when ``poisoning`` is set."""
    out = dict(cfg["evaluation"]["perturbations"])
    if trigger(cfg) is not None:
        out[TRIGGER_CONDITION[0]] = [TRIGGER_CONDITION[1]]
    return out


def score_spec(cfg: dict[str, Any], detector: str) -> ScoreSpec:
    out: ScoreSpec = {"detector_id": detector, "eval": detectors(cfg)[detector]["eval"],
                      "test_generators": cfg["generators"]["test"], "seed": cfg["seed"],
                      "perturbations": perturbations(cfg),
                      "protocol": cfg["evaluation"]["protocol"], "device": cfg["device"],
                      "jpeg_quality": jpeg_quality(cfg)}
    if trigger(cfg) is not None:  # absent otherwise: the params of other runs stay as they were
        out["trigger"] = trigger(cfg)
    return out


def conditions(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """(perturbation, level) of every scored condition, levels as the score tables spell them
    (the trigger last when ``poisoning`` is set)."""
    return [(kind, str(level)) for kind, levels in perturbations(cfg).items()
            for level in levels]


def condition_name(kind: str, level: str) -> str:
    """A condition's name in file names: ``<perturbation>=<level>``."""
    return f"{kind}={level}"


def sharing_groups(cfg: dict[str, Any]) -> dict[str, list[str]]:
    """Scoring groups (``evaluation.sharing: group``): group id -> the detectors whose cells
    share one frozen part (their kind's ``share_key`` is equal and not None). Imported
    detectors form groups of their own (the trained groups' params stay as they were)."""
    from bilora.api.kinds import share_key

    if cfg["evaluation"]["sharing"] != "group":
        return {}
    out: dict[str, list[str]] = {}
    for det, section in detectors(cfg).items():
        key = share_key(section)
        if key is not None:
            key = {**key, "weights": "checkpoints"} if imported(section) else key
            out.setdefault(f"{section['kind']}-{digest(key, 10)}", []).append(det)
    return out


def group_of(cfg: dict[str, Any], detector: str) -> str | None:
    """The scoring group of a detector, or None when it is scored cell by cell."""
    return next((g for g, dets in sharing_groups(cfg).items() if detector in dets), None)


class GroupScoreSpec(TypedDict):
    trigger: NotRequired[dict[str, Any]]  # only with `poisoning`
    group: str
    conditions: list[list[str]]
    cells: list[list]
    members: dict[str, ScoreSpec]
    batch_size: int
    test_generators: list[str]
    seed: int
    protocol: str
    device: str
    jpeg_quality: int | None


def group_chunks(cfg: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """A scoring group's jobs (``chunk<k>``) and their conditions, round robin."""
    n = min(cfg["evaluation"]["group_jobs"], len(conditions(cfg)))
    return {f"chunk{k}": conditions(cfg)[k::n] for k in range(n)}


def group_score_spec(cfg: dict[str, Any], group: str, chunk: str) -> GroupScoreSpec:
    members = {d: score_spec(cfg, d) for d in sharing_groups(cfg)[group]}
    cells_ = [[c.detector, c.train, c.seed] for d in members for c in cells(cfg, d)]
    extra: dict[str, Any] = {} if trigger(cfg) is None else {"trigger": trigger(cfg)}
    return {**extra, "group": group, "conditions": [list(c) for c in group_chunks(cfg)[chunk]],
            "members": members,
            "cells": cells_,
            "batch_size": min(m["eval"]["batch_size"] for m in members.values()),
            "test_generators": cfg["generators"]["test"], "seed": cfg["seed"],
            "protocol": cfg["evaluation"]["protocol"], "device": cfg["device"],
            "jpeg_quality": jpeg_quality(cfg)}


def procedural_spec(cfg: dict[str, Any], dataset: str) -> ProceduralJobSpec:
    return {"dataset": cfg["data"]["datasets"][dataset], "seed": cfg["seed"],
            "max_rejected_fraction": cfg["data"]["max_rejected_fraction"]}


def base_spec(cfg: dict[str, Any], detector: str) -> BaseSpec:
    """What determines a detector's built base (its kind's recipe decides), and the seed."""
    from bilora.api.kinds import base_recipe

    section = detectors(cfg)[detector]
    recipe = base_recipe(section)
    if recipe is None:
        raise ConfigError(f"detectors.{detector}: this detector trains from no built base")
    return {"kind": section["kind"], "base": recipe.spec(section), "seed": cfg["seed"]}


def metrics_spec(cfg: dict[str, Any]) -> MetricsSpec:
    return {"threshold": cfg["evaluation"]["threshold"], "seed": cfg["seed"],
            "resamples": cfg["metrics"]["resamples"],
            "confidence": cfg["metrics"]["confidence"]}


def real_set(cfg: dict[str, Any], generator: str) -> str:
    """A short description of the real images a test generator's set is scored against."""
    ds = cfg["data"]["datasets"][dataset_of(cfg, generator)]
    if ds.get("test_reals") == "shared":
        shared = cfg["data"]["datasets"][cfg["data"]["shared_test_reals"]]
        ds = shared
    if ds["source"] == "procedural":
        return "shared procedural test reals"
    from bilora.api.layouts import LAYOUTS, layout_of

    return LAYOUTS.get(layout_of(ds)).test_reals


def published_file(path: str) -> str:
    """A published-figures file: as given if it exists, else relative to the repository."""
    return path if Path(path).exists() else str(PACKAGE_DIR.parent / path)


def report_spec(cfg: dict[str, Any]) -> ReportSpec:
    out_variants = {}
    for vid, info in variants(cfg).items():
        if info.get("named"):  # a named sweep: its null entry names the base detector
            out_variants[vid] = ({**info, "base_value": info["base_name"]}
                                 if "base_name" in info else dict(info))
            continue
        base_value = (0.0 if info["key"] == POISON_KEY  # the base detector is unpoisoned
                      else _get(cfg["detectors"][info["base"]], info["key"], "ablations"))
        out_variants[vid] = {**info, "base_value": base_value}
    published = cfg["report"]["published"]
    if published is not None:
        published = {**published, "file": published_file(published["file"])}
    return {"run": cfg["run"], "train": cfg["generators"]["train"],
            "test": cfg["generators"]["test"], "labels": labels(cfg),
            "note": cfg["report"]["note"], "threshold": cfg["evaluation"]["threshold"],
            "confidence": cfg["metrics"]["confidence"], "seeds": seeds(cfg),
            "variants": out_variants,
            "real_sets": {g: real_set(cfg, g) for g in cfg["generators"]["test"]},
            "datasets": {g: dataset_of(cfg, g) for g in cfg["generators"]["test"]},
            "published": published, "format_control": cfg["data"]["format_control"],
            "protocol": cfg["evaluation"]["protocol"], **backdoor_spec(cfg)}


def backdoor_spec(cfg: dict[str, Any]) -> dict[str, Any]:
    """The report spec's ``backdoor`` entry (only with ``poisoning``): the poisoned
    detectors' variants by base, the trigger condition and the target."""
    spec = cfg.get("poisoning")
    if not spec:
        return {}
    rows = {det: {v: info["value"] for v, info in variants(cfg).items()
                  if info["base"] == det and info["key"] == POISON_KEY}
            for det in spec["detectors"]}
    return {"backdoor": {"detectors": rows, "condition": list(TRIGGER_CONDITION),
                         "trigger": spec["trigger"], "target": spec["target"]}}
