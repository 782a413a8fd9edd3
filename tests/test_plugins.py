"""Detector kinds and VLM bases are plug-ins: one folder (or module) plus one registration
line each, and no generic module names one. The throw-away kind and base built here are the
snippets of docs/adding_a_detector.md and docs/adding_a_vlm_base.md, run as written."""

from __future__ import annotations

import ast
import copy
import importlib
import pkgutil
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

import baselines
import bilora.bases
import bilora.kinds
from bilora import config as C
from bilora.api import plugins
from bilora.api.bases import BASES, base_class
from bilora.api.kinds import KINDS, kind, kind_names

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DIRS = [ROOT / "bilora/kinds", ROOT / "bilora/bases", ROOT / "bilora/data/layouts",
               ROOT / "baselines"]


def _generic_modules() -> list[Path]:
    """Every module of the harness outside the plug-in folders."""
    return [p for p in sorted((ROOT / "bilora").rglob("*.py"))
            if not any(d in p.parents for d in PLUGIN_DIRS)]


def _forbidden() -> tuple[set[str], set[str]]:
    """(string constants, identifiers) that name a registered kind or base or a base's
    parts."""
    strings = {n for n in kind_names() if n != "bilora"}  # "bilora" is also the logger's name
    idents: set[str] = set()
    for name in BASES.names():
        base = base_class(name)
        strings |= {base.model_type, base.artifact, base.display, *base.parts}
        idents |= {base.__name__, *base.parts}
    return strings, idents


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def test_no_generic_module_names_a_kind_or_a_base():
    strings, idents = _forbidden()
    plugin_modules = ("bilora.kinds.", "bilora.bases.", "bilora.data.layouts.", "baselines.")
    found = []
    for path in _generic_modules():
        tree = ast.parse(path.read_text())
        skip = _docstrings(tree)
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in skip and node.value in strings:
                found.append(f"{where}:{node.lineno} the string {node.value!r}")
            elif isinstance(node, ast.Compare) and any(
                    isinstance(c, ast.Constant) and c.value in kind_names()
                    for c in [node.left, *node.comparators]):
                found.append(f"{where}:{node.lineno} compares with a kind id")
            elif isinstance(node, ast.Name) and node.id in idents:
                found.append(f"{where}:{node.lineno} the name {node.id}")
            elif isinstance(node, ast.Attribute) and node.attr in idents:
                found.append(f"{where}:{node.lineno} the attribute .{node.attr}")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    plugin_modules):
                found.append(f"{where}:{node.lineno} imports {node.module}")
    for rules in [ROOT / "Snakefile", *sorted((ROOT / "workflow/rules").glob("*.smk"))]:
        for n, line in enumerate(rules.read_text().splitlines(), 1):
            hits = [s for s in strings | set(kind_names()) if f'"{s}"' in line]
            if hits:
                found.append(f"{rules.relative_to(ROOT)}:{n} names {hits}")
    assert not found, "generic code names a plug-in:\n" + "\n".join(found)


def _members(folder: Path, package: str) -> set[str]:
    """The plug-in modules and folders of a plug-in folder (a leading _ marks a helper)."""
    return {f"{package}.{m.name}" for m in pkgutil.iter_modules([str(folder)])
            if not m.name.startswith("_")}


@pytest.mark.parametrize("registry,folders", [
    (KINDS, {"bilora.kinds": ROOT / "bilora/kinds", "baselines": ROOT / "baselines"}),
    (BASES, {"bilora.bases": ROOT / "bilora/bases"}),
])
def test_every_module_of_a_plugin_folder_is_registered(registry, folders):
    registered = {ref.partition(":")[0] for ref in registry.refs().values()}
    for package, folder in folders.items():
        missing = _members(folder, package) - registered
        assert not missing, f"in {folder} but not registered: {sorted(missing)}"
    for name in registry.names():  # and every entry resolves
        assert registry.get(name) is not None


def _snippets(doc: str) -> dict[str, str]:
    """The fenced blocks of a doc whose first line is ``# <path>``, by that path."""
    text = (ROOT / "docs" / doc).read_text()
    out = {}
    for block in re.findall(r"```(?:python|yaml)\n(.*?)```", text, re.S):
        first, _, body = block.partition("\n")
        if first.startswith("# ") and "/" in first:
            out[first[2:].strip()] = block
    return out


def _registration_line(doc: str) -> tuple[str, str]:
    """The doc's one registration line: ``"<id>": "<module:attr>",``."""
    text = (ROOT / "docs" / doc).read_text()
    line = re.search(r'```python\n\s+"([^"]+)": "([^"]+)",\n```', text)
    assert line, f"{doc} shows no registration line"
    return line.group(1), line.group(2)


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder on sys.path for the docs' snippets; registries and schema re-read after."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def clear():
        plugins._refs.cache_clear()
        plugins._get.cache_clear()
        C.schema.cache_clear()
    clear()
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith(("my_kinds", "my_bases"))]:
        del sys.modules[name]
    clear()


def _write(folder: Path, snippets: dict[str, str]) -> None:
    for rel, text in snippets.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(folder).parents:
            init = folder / parent / "__init__.py"
            if parent != Path(".") and not init.exists():
                init.write_text("")
        path.write_text(text)


def _trains(det, x, y, opt, steps: int) -> bool:
    """Whether ``steps`` optimiser steps on one batch lower the detector's loss."""
    first = det.loss(x, y).item()
    for _ in range(steps):
        opt.zero_grad()
        det.loss(x, y).backward()
        opt.step()
    return det.loss(x, y).item() < first


def test_a_kind_from_the_docs_is_one_folder_and_one_line(plugin_dir, monkeypatch, tmp_path,
                                                         default_cfg, tiny_data):
    from bilora import resources as R
    from bilora.api.detector import create_detector, load_detector, save_detector
    from bilora.data.dataset import ImageTable, load_rows
    from bilora.describe import describe

    _write(plugin_dir, _snippets("adding_a_detector.md"))
    name, ref = _registration_line("adding_a_detector.md")
    monkeypatch.setitem(baselines.KINDS, name, ref)  # the one line

    assert name in kind_names() and kind(name).detector.endswith("MeanRGBDetector")
    section = yaml.safe_load(re.search(r"detectors:\n(.*?)```", (
        ROOT / "docs/adding_a_detector.md").read_text(), re.S).group(1))["stats"]
    cfg = copy.deepcopy(default_cfg)
    cfg["detectors"] = {"stats": section}
    cfg = C.validate(cfg)  # the schema knows the kind, fills its defaults
    assert cfg["detectors"]["stats"]["eval"] == {"batch_size": 64}
    with pytest.raises(C.ConfigError, match="image_size"):
        C.validate({**copy.deepcopy(cfg), "detectors": {"stats": {
            k: v for k, v in section.items() if k != "image_size"}}})

    # sized, described, trained, scored, saved and loaded through the generic code
    sized = R.rule_resources(cfg, "train_detector", {"detector": "stats",
                                                     "generator": "sim-LDM"})
    assert sized["mem_mb"] > 0 and sized["gpu"] == 0
    assert any("total parameters: 7" in line for line in describe(section))
    det = create_detector(section, seed=0)
    rows = load_rows([tiny_data], "train", ["sim-ProGAN"]).iloc[::4]
    images = ImageTable(rows, det.input_size, fit=det.input_fit)
    x = torch.stack([images[i][0] for i in range(len(images))])
    y = torch.tensor(rows["label"].to_numpy())
    assert _trains(det, x, y, torch.optim.SGD(det.trainable_parameters(), lr=0.5), 20)
    save_detector(det, tmp_path / "model")
    again = load_detector(tmp_path / "model")
    assert torch.equal(again.predict_proba(x), det.eval().predict_proba(x))


def test_a_vlm_base_from_the_docs_is_one_module_and_one_line(plugin_dir, monkeypatch, tmp_path,
                                                             default_cfg):
    from bilora.api.detector import create_detector, load_detector, save_detector
    from bilora.api.kinds import base_recipe
    from bilora.api.plugins import resolve

    _write(plugin_dir, _snippets("adding_a_vlm_base.md"))
    name, ref = _registration_line("adding_a_vlm_base.md")
    monkeypatch.setitem(bilora.bases.BASES, name, ref)  # the one line
    base_yaml = re.search(r"```yaml\n(base_model:.*?)```",
                          (ROOT / "docs/adding_a_vlm_base.md").read_text(), re.S).group(1)

    section = copy.deepcopy(default_cfg["detectors"]["bilora"])
    section.update(yaml.safe_load(base_yaml))
    cfg = copy.deepcopy(default_cfg)
    cfg["detectors"] = {"copy": section}
    C.validate(cfg)
    bad = copy.deepcopy(cfg)
    bad["detectors"]["copy"]["base_model"]["tiny"].pop("heads")
    with pytest.raises(C.ConfigError, match="heads"):  # the base's own tiny schema
        C.validate(bad)

    recipe = base_recipe(section)
    spec = recipe.spec(section)
    assert spec["model_type"] == name
    built = resolve(recipe.build)(spec, tmp_path / "base", 0)
    det = create_detector(section, seed=0, base_dir=str(built))
    assert type(det.vlm).__name__ == "BLIP2Copy" and det.describe().startswith(
        "Bi-LoRA (BLIP-2 (copy)")
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 0, 1])
    det.train()
    assert _trains(det, x, y, torch.optim.Adam(det.trainable_parameters(), lr=1e-2), 5)
    save_detector(det.eval(), tmp_path / "model")
    again = load_detector(tmp_path / "model")
    assert type(again.vlm).__name__ == "BLIP2Copy"
    assert torch.allclose(again.predict_proba(x), det.predict_proba(x), atol=1e-6)


def test_an_unknown_base_model_type_is_a_config_error_listing_the_known(default_cfg):
    cfg = copy.deepcopy(default_cfg)
    cfg["detectors"]["bilora"]["base_model"]["model_type"] = "llava"
    with pytest.raises(C.ConfigError, match="model_type"):
        C.validate(cfg)


def test_the_plugin_maps_import_no_torch():
    import subprocess

    code = ("import sys, bilora.config as C, bilora.workflow as W\n"
            "from bilora.api.kinds import kind, kind_names\n"
            "from bilora.api.bases import BASES\n"
            "cfg = C.load('workflow/config/paper.yaml')\n"
            "[kind(k) for k in kind_names()]; C.schema(); W.tables(cfg); W.bases(cfg)\n"
            "print([m for m in ('torch', 'transformers', 'timm', 'peft') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_registered_specs_are_importable_and_complete():
    for name in kind_names():
        spec = kind(name)
        assert importlib.import_module(spec.detector.partition(":")[0])
        section = spec.schema()
        assert section["properties"]["kind"] == {"const": name}
        C.complete_detector(spec.tiny)  # its tiny section validates


def test_bilora_schema_prints_every_plugins_part(capsys):
    from bilora.cli import main

    assert main(["schema"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["$defs"]["detector"]["properties"]["kind"]["enum"] == kind_names()
    for name in kind_names():
        assert printed["$defs"][name]["properties"]["kind"] == {"const": name}
    tiny = printed["$defs"]["bilora"]["properties"]["base_model"]["allOf"]
    assert any("vision_width" in str(rule) for rule in tiny)  # BLIP-2's tiny section


DOC_PATH = re.compile(r"`((?:bilora|baselines|workflow|docs|tests|benchmarks|scripts|profiles)"
                      r"/[A-Za-z0-9_./-]+?)/?`")


@pytest.mark.parametrize("doc", ["README.md", *sorted(
    p.name for p in (ROOT / "docs").glob("*.md"))])
def test_every_repository_path_a_doc_names_exists(doc):
    """The docs match the code: every path they quote (`bilora/...`, `docs/...`) exists."""
    path = ROOT / doc if doc == "README.md" else ROOT / "docs" / doc
    missing = sorted({p for p in DOC_PATH.findall(path.read_text())
                      if "<" not in p and "*" not in p and not (ROOT / p).exists()})
    assert not missing, f"{doc} names paths that do not exist: {missing}"


#: Where a layout's name may stand in generic code, and why: "ricker" is also the name of the
#: robustness protocol (Ricker et al.'s code), and the Zenodo transport's one record has
#: Ricker's layout (its default when a zenodo dataset names none).
LAYOUT_NAME_ALLOWED = {("bilora/data/perturbations.py", "ricker"),
                       ("bilora/report/context.py", "ricker"),
                       ("bilora/data/ricker.py", "ricker")}


def test_no_generic_module_names_a_layout():
    from bilora.api.layouts import LAYOUTS

    names = set(LAYOUTS.names())
    found = []
    for path in _generic_modules():
        tree = ast.parse(path.read_text())
        skip = _docstrings(tree)
        where = path.relative_to(ROOT).as_posix()
        found += [f"{where}:{node.lineno} the string {node.value!r}"
                  for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and id(node) not in skip and node.value in names
                  and (where, node.value) not in LAYOUT_NAME_ALLOWED]
    assert not found, "generic code names a layout:\n" + "\n".join(found)


def test_bilora_ls_lists_every_registered_plugin(capsys):
    from bilora.api.layouts import LAYOUTS
    from bilora.cli import main

    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert f"registered kinds: {', '.join(kind_names())}" in out
    assert f"registered VLM bases (model_type): {', '.join(BASES.names())}" in out
    assert f"registered dataset layouts: {', '.join(LAYOUTS.names())}" in out
