"""Dataset layouts as plug-ins: one module in bilora/data/layouts/ plus one registration line."""

from __future__ import annotations

import copy
import inspect
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

import bilora.data.layouts as layouts_pkg
from bilora import config as C
from bilora import workflow as W
from bilora.api import plugins
from bilora.api.layouts import LAYOUTS, Layout, layout_of
from bilora.cli import build_parser, main
from bilora.data.folders import SourceError
from bilora.data.local_sources import layout_entries

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "adding_a_dataset.md"
PAPER = ROOT / "workflow/config/paper.yaml"


def _clear_caches() -> None:
    """The registry and the schema are read once per process: forget them."""
    plugins._refs.cache_clear()
    plugins._get.cache_clear()
    C.schema.cache_clear()


@pytest.fixture
def register(tmp_path, monkeypatch):
    """Place a layout module in the layouts folder (a tmp folder on the package's path) and
    add its one line to the map; everything is undone after the test."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    monkeypatch.setattr(layouts_pkg, "__path__", [*layouts_pkg.__path__, str(folder)])
    added: list[str] = []

    def place(name: str, code: str, ref: str | None = None) -> str:
        (folder / f"{name}.py").write_text(code)
        monkeypatch.setitem(layouts_pkg.LAYOUTS, name, ref or f"bilora.data.layouts.{name}:LAYOUT")
        added.append(f"bilora.data.layouts.{name}")
        _clear_caches()
        return name

    yield place
    for module in added:
        sys.modules.pop(module, None)
    _clear_caches()


@pytest.fixture
def doc_layout(register):
    """The doc's example layout, its module and its one line as written there: its name."""
    module, line = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[:2]
    name, ref = re.fullmatch(r'\s*"(\w+)": "([\w.:]+)",\s*', line).groups()
    assert ref == f"bilora.data.layouts.{name}:LAYOUT"
    return register(name, module, ref)


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (seed * 40 % 256, 10, 200)).save(path)


def _layout_choices() -> list[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    organize = sub.choices["organize"]
    return next(a for a in organize._actions if a.dest == "layout").choices


def test_a_layout_module_and_its_line_are_all_it_takes(doc_layout, tmp_path):
    """The doc's example, as written there: the CLI, the schema, organize and the captions
    pick it up."""
    assert doc_layout in _layout_choices()
    for section in ("local", "zenodo"):
        assert doc_layout in C.schema()["$defs"][section]["properties"]["layout"]["enum"]

    src = tmp_path / "mine"
    for i in range(2):
        for gen in ("A", "B"):
            _png(src / gen / "real" / f"{i}.png", i)
            _png(src / gen / "fake" / f"{i}.png", i + 3)
    out = tmp_path / "data" / "mine" / "manifest.parquet"
    args = ["organize", "--layout", doc_layout, "--source", str(src), "--dataset-dir",
            str(out.parent), "--max-rejected-fraction", "0", "--out", str(out), "--quiet"]
    assert main([*args, "--generators", "A", "B"]) == 0
    df = pd.read_parquet(out)
    assert sorted(zip(df.generator, df.split, df.label, strict=True)) == sorted(
        [(g, "test", lab) for g in "AB" for lab in (0, 1) for _ in range(2)])
    assert main(args) == 1  # it requires generators

    cfg = C.load_yaml(PAPER)
    cfg["data"]["datasets"]["mine"] = {"source": "local", "layout": doc_layout,
                                       "path": str(src), "generators": ["A"]}
    cfg["generators"]["test"].append("A")
    C.validate(cfg, "paper.yaml + mine")
    assert f"--layout {doc_layout} --source {src}" in W.organize_args(cfg, "mine")
    assert C.real_set(cfg, "A") == "own reals of its folder"


def test_an_unregistered_layout_is_refused_everywhere(tmp_path):
    assert "nonesuch" not in _layout_choices()
    with pytest.raises(SourceError, match="unknown dataset layout 'nonesuch'; known: canonical"):
        layout_entries("nonesuch", tmp_path, tmp_path, generators=["A"])
    cfg = C.load_yaml(PAPER)
    cfg["data"]["datasets"]["genimage_sd14"]["layout"] = "nonesuch"
    with pytest.raises(C.ConfigError, match="genimage_sd14.layout: 'nonesuch' is not one of"):
        C.validate(cfg, "paper.yaml")


def test_every_module_of_the_layouts_folder_is_registered():
    folder = Path(layouts_pkg.__file__).parent
    modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    refs = LAYOUTS.refs()
    assert {r.partition(":")[0] for r in refs.values()} == {
        f"bilora.data.layouts.{m}" for m in modules}
    for name in refs:
        spec = LAYOUTS.get(name)
        assert isinstance(spec, Layout), name
        taken = inspect.signature(spec.mapper).parameters
        assert set(spec.params) <= set(taken), f"{name}: params its mapper does not take"
        assert set(spec.required) <= set(spec.params), name


def test_a_layouts_required_params_are_checked_by_the_schema(register):
    name = register("needs_generator", "from dataclasses import replace\n"
                    "from bilora.data.layouts.canonical import LAYOUT as CANONICAL\n"
                    "LAYOUT = replace(CANONICAL, required=('generator',))\n")
    cfg = C.load_yaml(PAPER)
    ds = cfg["data"]["datasets"]["genimage_sd14"]
    ds["layout"] = name
    ds["generators"] = [ds.pop("generator")]  # this layout needs its one generator
    with pytest.raises(C.ConfigError, match="genimage_sd14: 'generator' is a required"):
        C.validate(cfg, "paper.yaml")


def test_genimage_takes_one_generator_or_the_published_ids():
    cfg = C.load_yaml(PAPER)
    ds = cfg["data"]["datasets"]["genimage_sd14"]
    ds["generators"] = [ds.pop("generator")]  # GenImage in full, one of its published ids
    C.validate(copy.deepcopy(cfg), "paper.yaml")
    ds["generators"] = ["SD14", "DALLE"]
    with pytest.raises(C.ConfigError, match=r"genimage_sd14.generators.1: 'DALLE' is not one"):
        C.validate(cfg, "paper.yaml")


def test_the_transport_is_chosen_apart_from_the_layout():
    cfg = C.load(PAPER, ROOT / "workflow/config/default.yaml")
    zenodo = cfg["data"]["datasets"]["ricker"]
    assert "layout" not in zenodo  # absent stays absent: no default filled in
    assert layout_of(zenodo) == "ricker"
    assert "--layout ricker " in W.organize_args(cfg, "ricker")

    given = C.load_yaml(PAPER)
    given["data"]["datasets"]["ricker"]["layout"] = "canonical"
    cfg = C.validate(given, "paper.yaml")
    assert "--layout canonical " in W.organize_args(cfg, "ricker")
    assert C.real_set(cfg, "ADM") == "own reals of its folder"


def test_a_layouts_schema_fragment_applies_to_sections_naming_it(register):
    name = register("no_split_map", "from dataclasses import replace\n"
                    "from bilora.data.layouts.canonical import LAYOUT as CANONICAL\n"
                    "LAYOUT = replace(CANONICAL, schema={'properties': "
                    "{'split_map': {'type': 'null'}}})\n")
    cfg = C.load_yaml(PAPER)
    ds = cfg["data"]["datasets"]["genimage_sd14"]
    ds["layout"] = name
    with pytest.raises(C.ConfigError, match="genimage_sd14.split_map: .* is not of type 'null'"):
        C.validate(copy.deepcopy(cfg), "paper.yaml")
    ds["split_map"] = None
    C.validate(cfg, "paper.yaml")
    cfg["data"]["datasets"]["genimage_glide"]["split_map"] = {"val": "test"}  # genimage: free
    C.validate(cfg, "paper.yaml")
