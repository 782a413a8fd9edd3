"""Shared CLIP vision tower of the CLIP baselines (``univfd``, ``clip_lora``): their
``base_model`` section, the tiny random tower the workflow builds, the pretrained
checkpoint as an artifact, and job sizing. Torch-free: the kinds' specs import it (the
torch side is :mod:`baselines._clip.tower`). A private helper, not a plug-in.

The tower is transformers' ``CLIPVisionModelWithProjection``: it builds a tiny random
stand-in from a ``CLIPVisionConfig`` offline (saved with ``save_pretrained``, loaded with
``from_pretrained`` exactly like the real one), and it loads the vision half of
``openai/clip-vit-large-patch14`` (``visual_projection`` included, so ``image_embeds`` is
OpenAI's ``encode_image``) from a local folder or the hub cache. The authors' ``clip``
package downloads from a URL and has no config to build a tiny tower from; timm and
open_clip hold the same weights under other keys (FIELD.md section 1).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bilora.api.kinds import BaseRecipe, Cost

HERE = Path(__file__).resolve().parent
PRETRAINED = "openai/clip-vit-large-patch14"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ARTIFACT = "clip"  # the artifact type of a pretrained tower
BASE_REF = "clip_base.json"  # in a saved model folder: the tower it runs on
# ViT-L/14 at 224 px: (width, layers, patch, side, projection)
VIT_L14 = {"width": 1024, "layers": 24, "heads": 16, "patch_size": 14, "image_size": 224,
           "projection_dim": 768}


def with_base_schema(path: Path):
    """A kind's ``schema``: its YAML fragment at ``path`` with the shared ``base_model``."""
    def load() -> dict[str, Any]:
        import yaml

        schema = yaml.safe_load(path.read_text())
        schema["properties"]["base_model"] = yaml.safe_load((HERE / "base.schema.yaml")
                                                            .read_text())
        return schema
    return load


def geometry(section: dict[str, Any]) -> dict[str, int]:
    """Width, layers, heads, patch, side and projection of the section's tower (torch-free;
    a pretrained one counts as ViT-L/14)."""
    base = section["base_model"]
    return dict(base["tiny"]) if base["source"] == "tiny" else dict(VIT_L14)


def cost(section: dict[str, Any], train_factor: float, trainable_share: float) -> Cost:
    """A ViT forward: per layer and token 12 d^2 MACs (attention + 4d MLP) and 2 T d for
    the attention scores (ViT-L/14 at 224: 81 GMACs)."""
    g = geometry(section)
    d, side = g["width"], g["image_size"]
    tokens = (side // g["patch_size"]) ** 2 + 1
    macs = g["layers"] * (12 * tokens * d * d + 2 * tokens * tokens * d)
    params = g["layers"] * 12 * d * d + 3 * g["patch_size"] ** 2 * d + d * g["projection_dim"]
    return Cost(2.0 * macs, params, side, train_factor, trainable_share)


def check_base(section: dict[str, Any], key: str) -> None:
    """At DAG build: a pretrained tower is a hub id or a saved checkpoint folder."""
    from bilora.artifacts import check_checkpoint_name

    base = section["base_model"]
    if base["source"] == "pretrained":
        check_checkpoint_name(base["name_or_path"], f"{key}.base_model.name_or_path")


def artifacts(section: dict[str, Any], key: str) -> list:
    from bilora.artifacts import Artifact

    base = section["base_model"]
    if base["source"] != "pretrained":
        return []
    return [Artifact(ARTIFACT, base["name_or_path"], f"{key}.base_model.name_or_path")]


def artifact_types() -> dict[str, Any]:
    from bilora.artifacts import HubCheckpoint

    return {ARTIFACT: HubCheckpoint(checkpoint_files)}


def checkpoint_files(folder: Path) -> list[Path]:
    """The files of a CLIP checkpoint folder (a full CLIP or its vision half), checked
    loadable: its config parses as a vision config, its weights and processor are there."""
    import json

    from transformers import CLIPVisionConfig

    from bilora.errors import ArtifactError

    if not (folder / "config.json").is_file():
        raise ArtifactError(f"{folder}: no config.json")
    CLIPVisionConfig.from_pretrained(folder)
    index = folder / "model.safetensors.index.json"
    weights = ([folder / s for s in sorted(set(json.loads(index.read_text())["weight_map"]
                                                .values()))]
               if index.is_file() else [folder / "model.safetensors"])
    missing = [w.name for w in weights if not w.is_file()]
    if missing:
        raise ArtifactError(f"{folder}: weight files missing: {', '.join(missing[:5])}")
    if not (folder / "preprocessor_config.json").is_file():
        raise ArtifactError(f"{folder}: no preprocessor_config.json (the image processor)")
    return [folder / "config.json", *weights]


def base_spec(section: dict[str, Any]) -> dict[str, Any]:
    return {"tiny": section["base_model"]["tiny"]}


def needs_base(section: dict[str, Any]) -> bool:
    return section["base_model"]["source"] == "tiny"


def build_tiny(spec: dict[str, Any], out_dir: str | os.PathLike, seed: int) -> Path:
    """The base recipe: a random ``CLIPVisionModelWithProjection`` of ``spec['tiny']``'s
    size and a ``CLIPImageProcessor`` with CLIP's statistics, saved to ``out_dir``."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from bilora.atomic import atomic_path

    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(vision_config(spec["tiny"]))
    side = spec["tiny"]["image_size"]
    processor = CLIPImageProcessor(size={"shortest_edge": side},
                                   crop_size={"height": side, "width": side},
                                   image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    out = Path(out_dir)
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out


def vision_config(g: dict[str, int]):
    """The ``CLIPVisionConfig`` of a geometry (:func:`geometry`; MLP 4x, no dropout)."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=g["width"], intermediate_size=4 * g["width"],
        num_hidden_layers=g["layers"], num_attention_heads=g["heads"],
        image_size=g["image_size"], patch_size=g["patch_size"],
        projection_dim=g["projection_dim"], attention_dropout=0.0)


def describe(section: dict[str, Any]) -> list[str]:
    """A kind's summary (``bilora describe``): the detector on a tower of the section's
    geometry built on the meta device (no weights read), its parameter counts."""
    import torch
    from transformers import CLIPVisionModelWithProjection

    from bilora.api.detector import detector_class
    from bilora.config import complete_detector

    section = complete_detector(section)
    base = section["base_model"]
    with torch.device("meta"):
        tower = CLIPVisionModelWithProjection(vision_config(geometry(section)))
        det = detector_class(section["kind"]).from_tower(
            section, tower, base.get("name_or_path", "tiny"))
    counts = det.parameter_counts()
    return [f"model: {det.describe()}", f"total parameters: {counts['total']:,}",
            f"trainable parameters: {counts['trainable']:,}"]


#: The tiny random tower of the kinds' contract-test sections.
TINY_BASE = {"source": "tiny", "tiny": {"width": 16, "layers": 1, "heads": 2, "patch_size": 8,
                                        "image_size": 32, "projection_dim": 8}}


def spec_fields() -> dict[str, Any]:
    """The ``Kind`` fields every CLIP kind shares: its tower as the base the workflow builds
    or the artifact it prefetches, and the summary."""
    return {"describe": "baselines._clip:describe", "artifacts": artifacts,
            "artifact_types": artifact_types,
            "base": BaseRecipe(needs_base, base_spec, "baselines._clip:build_tiny")}


def tower_path(section: dict[str, Any], base_dir: str | None) -> str:
    """Where the tower comes from: the built tiny base folder, or a hub id / local folder."""
    base = section["base_model"]
    if base["source"] == "tiny":
        if not base_dir:
            raise ValueError(f"a {section['kind']} detector with base_model.source 'tiny' needs "
                             "the built base folder (bilora build-base) passed as --base")
        return str(base_dir)
    return base["name_or_path"]
