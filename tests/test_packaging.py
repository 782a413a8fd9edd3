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


def test_requirements_are_lower_bounds_the_documented_torch_satisfies():
    """Lower bounds only (no cap that forces a multi-GB download), and the torch and
    torchvision the README names as the installable ones satisfy them."""
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for r in reqs:
        assert all(spec.operator == ">=" for spec in r.specifier), r
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"satisfiable by torch (\d+(?:\.\d+)*) / torchvision (\d+(?:\.\d+)*)", readme)
    assert found, "the README names the torch the requirements must admit"
    by_name = {r.name: r for r in reqs}
    assert by_name["torch"].specifier.contains(found.group(1))
    assert by_name["torchvision"].specifier.contains(found.group(2))


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


def test_the_cli_has_exactly_its_commands():
    """The subcommands the rules and the README use, no more and no fewer."""
    from bilora.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    assert set(sub.choices) == {
        "make-procedural", "build-base", "import-checkpoint", "train", "score", "score-group",
        "gather-scores",
        "collect-warnings", "metrics", "report", "fetch-zenodo", "extract",
        "rebuild-lsun-real", "organize", "tree-digest", "ls", "validate", "schema", "describe",
        "prefetch", "predict", "attack", "transfer", "attack-report"}
    help_text = subprocess.run([sys.executable, "-m", "bilora.cli", "--help"],
                               capture_output=True, text=True, check=True).stdout
    assert all(name in help_text for name in sub.choices)


def test_every_command_of_the_rules_exists():
    from bilora.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
    rules = "".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    used = set(re.findall(r"python3 -m bilora\.cli ([a-z-]+)", rules))
    assert used and used <= set(sub.choices)


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
