"""The Bi-LoRA detector kind: the method (``detector.py``) over a captioning VLM base
(``bilora/bases/``), its scoring groups (``group.py``) and its summary (``describe.py``).

This module is the kind's spec and stays torch-free: the Snakefile reads it at DAG build.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bilora.api.kinds import BaseRecipe, Cost, Kind
from bilora.errors import ConfigError

HERE = Path(__file__).resolve().parent
DEFAULT_BASE = "blip-2"  # the paper's; a tiny base of another type states base_model.model_type


def base_of(section: dict[str, Any], key: str = "base_model"):
    """The VLM base class of a Bi-LoRA section (by its checkpoint's model_type)."""
    from bilora.api.bases import base_class, model_type_of

    return base_class(model_type_of(section["base_model"], DEFAULT_BASE, key))


def _schema() -> dict[str, Any]:
    """The section's schema, with ``base_model.tiny`` checked against each base's tiny
    schema (a section without ``model_type`` is the default base)."""
    import yaml

    from bilora.api.bases import BASES, base_class

    schema = yaml.safe_load((HERE / "schema.yaml").read_text())
    rules = schema["properties"]["base_model"].setdefault("allOf", [])
    for name in BASES.names():
        tiny = yaml.safe_load(base_class(name).tiny_schema.read_text())
        stated = {"properties": {"model_type": {"const": name}}, "required": ["model_type"]}
        when = {"anyOf": [stated, {"not": {"required": ["model_type"]}}]} \
            if name == DEFAULT_BASE else stated
        rules.append({"if": when, "then": {"properties": {"tiny": tiny}}})
    schema["properties"]["base_model"]["properties"]["model_type"]["enum"] = BASES.names()
    return schema


def check_section(section: dict[str, Any], key: str) -> None:
    """At DAG build: the base is a hub id or a checkpoint folder of a known base type, and
    the modules trained besides LoRA are parts of that base."""
    from bilora.artifacts import check_checkpoint_name

    base = section["base_model"]
    if base["source"] == "pretrained":
        check_checkpoint_name(base["name_or_path"], f"{key}.base_model.name_or_path")
    vlm = base_of(section, f"{key}.base_model")
    unknown = [p for p in section["extra_trainable"] if p not in vlm.parts]
    if unknown:
        raise ConfigError(f"{key}.extra_trainable: {unknown} are not parts of a {vlm.display} "
                          f"base; known: {', '.join(vlm.parts)}")
    cache = section["feature_cache"]
    if cache not in ("auto", "off", *vlm.stages[1:]):
        raise ConfigError(f"{key}.feature_cache: {cache!r} is neither auto, off nor a stage of a "
                          f"{vlm.display} base ({', '.join(vlm.stages[1:])})")


def _vision_trains(section: dict[str, Any]) -> bool:
    return base_of(section).frozen_stage(list(section["extra_trainable"])) is None


def _cost(section: dict[str, Any]) -> Cost:
    fwd, params, side = base_of(section).cost(section["base_model"])
    # LoRA on a frozen image path: no backward through it
    return Cost(fwd, params, side, 3.0 if _vision_trains(section) else 1.8, 0.02)


#: The artifact type of a checkpoint whose base is not known before it is fetched (a hub
#: id neither shipped nor cached): its config.json tells, once it is there.
ANY_BASE = "vlm"


def _artifacts(section: dict[str, Any], key: str) -> list:
    from bilora.artifacts import Artifact

    base = section["base_model"]
    if base["source"] != "pretrained":
        return []
    try:
        kind = base_of(section).artifact
    except ConfigError:  # not fetched yet: prefetch it first, check it by its config.json
        kind = ANY_BASE
    return [Artifact(kind, base["name_or_path"], f"{key}.base_model.name_or_path")]


def _checkpoint_files(folder: Path) -> list[Path]:
    """The files of a fetched checkpoint of any registered base (by its config.json)."""
    import json

    from bilora.api.bases import base_class
    from bilora.errors import ArtifactError

    config = folder / "config.json"
    if not config.is_file():
        raise ArtifactError(f"{folder}: no config.json")
    model_type = json.loads(config.read_text()).get("model_type", "")
    try:
        return base_class(model_type).checkpoint_files(folder)
    except ConfigError as exc:
        raise ArtifactError(f"{folder}: {exc}") from None


def _artifact_types() -> dict[str, Any]:
    from bilora.api.bases import BASES, base_class
    from bilora.artifacts import HubCheckpoint

    return {ANY_BASE: HubCheckpoint(_checkpoint_files),
            **{base_class(n).artifact: HubCheckpoint(base_class(n).checkpoint_files)
               for n in BASES.names()}}


def _base_spec(section: dict[str, Any]) -> dict[str, Any]:
    base = section["base_model"]
    spec = {"tiny": base["tiny"]}
    if base.get("model_type"):  # only when stated: the default base's spec stays as it was
        spec["model_type"] = base["model_type"]
    return spec


def build_base(spec: dict[str, Any], out_dir: str | os.PathLike, seed: int) -> Path:
    """The base recipe: build the tiny random stand-in of the section's base."""
    from bilora.api.bases import base_class

    return base_class(spec.get("model_type", DEFAULT_BASE)).build_tiny(spec["tiny"], out_dir,
                                                                       seed)


def _share_key(section: dict[str, Any]) -> dict[str, Any] | None:
    """Cells share the frozen image path when the base is loaded the same way and no
    image-path module trains."""
    if _vision_trains(section):
        return None
    return {"base": section["base_model"], "dtype": section["dtype"],
            "attn": section["attn_implementation"], "int8": section["load_in_8bit"]}


def white_box(section: dict[str, Any]) -> tuple[str, str] | None:
    """The ``logits`` readout is a softmax of two logits, differentiable in the pixels; the
    ``generate`` readout is a hard label."""
    if section.get("readout", "logits") == "generate":
        return "readout", "readout 'generate' gives hard labels: no gradient to the pixels"
    return None


KIND = Kind(
    detector="bilora.kinds.bilora.detector:BiLoRADetector",
    schema=_schema,
    cost=_cost,
    tiny={"kind": "bilora",
          "base_model": {"source": "tiny", "tiny": {
              "vision_width": 16, "qformer_width": 16, "text_width": 16, "vision_layers": 1,
              "qformer_layers": 1, "text_layers": 1, "heads": 2, "image_size": 32,
              "patch_size": 8, "num_query_tokens": 4,
              "init_std": {"vision": 0.02, "other": 0.2}}},
          "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "k_proj"],
                   "bias": "none"},
          "extra_trainable": ["qformer", "language_projection"],
          "train": {"epochs": 1, "batch_size": 8, "lr": 3e-3}},
    describe="bilora.kinds.bilora.describe:describe_bilora",
    check="bilora.kinds.bilora:check_section",
    artifacts=_artifacts,
    artifact_types=_artifact_types,
    base=BaseRecipe(lambda s: s["base_model"]["source"] == "tiny", _base_spec,
                    "bilora.kinds.bilora:build_base"),
    share_key=_share_key,
    group_scorer="bilora.kinds.bilora.group:AdapterGroup",
    white_box=white_box,
)
