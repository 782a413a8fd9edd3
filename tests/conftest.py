"""Shared fixtures: tiny configs and data made by the package itself."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from bilora import config as C

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "workflow" / "config" / "default.yaml"
PAPER = ROOT / "workflow" / "config" / "paper.yaml"


@pytest.fixture(scope="session")
def default_cfg() -> dict:
    return C.load(DEFAULT, DEFAULT)


@pytest.fixture()
def cfg(default_cfg) -> dict:
    return copy.deepcopy(default_cfg)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small procedural dataset (3 training, 4 test generators); returns the manifest."""
    from bilora.data.procedural import ProceduralSpec, make_dataset

    out = tmp_path_factory.mktemp("procedural")
    make_dataset(ProceduralSpec(
        generators=["sim-LDM", "sim-ProGAN", "sim-ADM", "sim-GLIDE"],
        image_size=48,
        train_per_class=48, test_per_class=24, seed=3), out, progress=False)
    return out / "manifest.parquet"


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, default_cfg) -> Path:
    """The embedded default's tiny BLIP-2, built and saved once."""
    from bilora.bases.blip2.tiny import build_tiny_blip2

    out = tmp_path_factory.mktemp("base") / "base"
    build_tiny_blip2(default_cfg["detectors"]["bilora"]["base_model"]["tiny"], out, seed=0)
    return out


@pytest.fixture(scope="session")
def built_bases(tmp_path_factory) -> dict[str, str | None]:
    """kind -> the folder of the base its spec's tiny section trains from (or None), built
    by its base recipe as the workflow's build_base_model rule does."""
    from bilora.api.kinds import base_recipe, kind, kind_names
    from bilora.api.plugins import resolve

    out = {}
    for name in kind_names():
        recipe = base_recipe(kind(name).tiny)
        if recipe is None:
            out[name] = None
            continue
        folder = tmp_path_factory.mktemp(f"base-{name}") / "base"
        out[name] = str(resolve(recipe.build)(recipe.spec(kind(name).tiny), folder, 0))
    return out
