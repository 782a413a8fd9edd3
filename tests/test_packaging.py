"""Set-up facts: the conda env matches pyproject, the README's commands are what CI runs."""

import re
import subprocess
import sys
import tomllib

import pytest
import yaml

from tests.conftest import ROOT


def _name(req):
    return re.split(r"[<>=!~ ]", req, maxsplit=1)[0].lower()


def test_conda_env_lists_the_same_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "envs" / "bilora.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(r for r in pip if not r.startswith("-e")) == sorted(project["dependencies"])


def test_requirements_are_satisfiable_by_the_local_torch():
    """pip here is capped at torch 2.14.1 / torchvision 0.29.1 (on local disk)."""
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    local = {"torch": "2.14.1", "torchvision": "0.29.1"}
    reqs = {_name(r): Requirement(r) for r in project["dependencies"]}
    for name, version in local.items():
        assert reqs[name].specifier.contains(version), reqs[name]


def test_readme_dependency_list_explains_every_dependency():
    readme = (ROOT / "README.md").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in project["dependencies"]:
        assert f"`{_name(req)}`" in readme, f"README does not say why {_name(req)} is there"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- test-command -->\s*```(?:bash|sh)?\n(.*?)```", readme, re.S)
    assert block, "README lacks the marked test command"
    ci = (ROOT / ".ci" / "run").read_text()
    assert block.group(1).strip() in ci


def test_cli_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "bilora.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for cmd in ("train", "score", "metrics", "report", "describe", "ls", "fetch-zenodo",
                "organize", "tree-digest", "rebuild-lsun-real", "extract"):
        assert cmd in out


@pytest.mark.slow
def test_describe_command_prints_the_paper_trainable_count():
    out = subprocess.run([sys.executable, "-m", "bilora.cli", "describe", "--configfile",
                          str(ROOT / "workflow/config/paper.yaml"), "--detector", "bilora"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "trainable parameters: 5,242,880" in out


def test_describe_unknown_detector_lists_the_known_ones():
    out = subprocess.run([sys.executable, "-m", "bilora.cli", "describe", "--detector", "vit"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0 and "bilora, resnet50, xception" in out.stderr
