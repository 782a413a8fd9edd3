"""The rule params of the embedded default and the paper config, pinned byte for byte.

Params are a rerun trigger: if a refactor changes one job's slice of the config, every
finished cell of every user reruns on upgrade. ``tests/pinned/<config>.json`` holds the
params of every job of both configs as the rule files compute them (written with
``python tests/test_rule_params_pinned.py`` from the commit whose params are the contract).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bilora import config as C
from bilora import workflow as W

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIGS = {"default": ROOT / "workflow/config/default.yaml",
           "paper": ROOT / "workflow/config/paper.yaml"}


def rule_params(cfg: dict) -> dict[str, str]:
    """Every job's params, keyed ``<rule>/<wildcards>``, as the rule files compute them."""
    out: dict[str, str] = {}
    for name, ds in cfg["data"]["datasets"].items():
        if ds["source"] == "procedural":
            out[f"make_procedural_dataset/{name}"] = W.json_param(C.procedural_spec(cfg, name))
        if ds["source"] == "zenodo":
            out[f"fetch_zenodo_record/{name}"] = W.fetch_args(cfg, name)
            if {"train", "val"} & set(W.ricker_splits(cfg, name)):
                out[f"rebuild_lsun_real/{name}"] = W.lsun_args(cfg, name)
            for split in W.digest_checks(cfg, name):
                out[f"check_split_digest/{name}/{split}"] = W.digest_args(cfg, name, split)
        if ds["source"] in ("zenodo", "local"):
            out[f"organize_dataset/{name}"] = W.organize_args(cfg, name)
            out[f"organize_dataset/{name}/input"] = json.dumps(W.organize_inputs(cfg, name))
    for base, spec in W.bases(cfg).items():
        out[f"build_base_model/{base}"] = W.json_param(spec)
    out["prefetch_models"] = W.json_param(W.artifacts(cfg))
    for c in C.cells(cfg):
        key = f"{c.detector}/{c.train}/{c.seed}"
        if c.detector in W.imported_detectors(cfg):
            out[f"import_checkpoint/{key}"] = W.json_param(C.import_spec(cfg, c.detector,
                                                                         c.train, c.seed))
            out[f"import_checkpoint/{key}/base"] = json.dumps(W.base_model_dir(cfg, c.detector))
            continue
        out[f"train_detector/{key}"] = W.json_param(C.train_spec(cfg, c.detector, c.train,
                                                                 c.seed))
        out[f"train_detector/{key}/base"] = json.dumps(W.base_model_dir(cfg, c.detector))
    for det in W.cell_detectors(cfg):
        out[f"score_cell/{det}"] = W.json_param(C.score_spec(cfg, det))
    for det in W.group_detectors(cfg):
        out[f"gather_scores/{det}"] = W.json_param(C.score_spec(cfg, det))
    for group in C.sharing_groups(cfg):
        for chunk in W.group_chunk_names(cfg):
            out[f"score_group/{group}/{chunk}"] = W.json_param(
                C.group_score_spec(cfg, group, chunk))
    out["compute_metrics"] = W.json_param(C.metrics_spec(cfg))
    out["render_report"] = W.json_param(C.report_spec(cfg))
    from bilora.attacks import plan as A

    for det in W.attacked_detectors(cfg):
        out[f"attack_cell/{det}"] = W.json_param(A.attack_spec(cfg, det))
    for det in W.transfer_targets(cfg):
        out[f"transfer_cell/{det}"] = W.json_param(A.attack_spec(cfg, det))
    if W.attack_dirs(cfg):
        out["render_attack_report"] = W.json_param(A.report_spec(cfg))
    out["outputs"] = json.dumps({"tables": W.tables(cfg), "figures": W.figures(cfg),
                                 "models": W.models(cfg), "scores": W.scores(cfg)})
    if W.attack_dirs(cfg):
        out["attack_outputs"] = json.dumps({"attacks": W.attack_dirs(cfg),
                                            "transfers": W.transfer_files(cfg),
                                            "report": W.attack_outputs(cfg)})
    return out


def _pinned(name: str) -> Path:
    return HERE / "pinned" / f"rule_params_{name}.json"


def _normalise(params: dict[str, str]) -> dict[str, str]:
    """The published-figures file is an absolute path of the checkout: compare it relative."""
    return {k: v.replace(str(ROOT), "<repo>") for k, v in params.items()}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_rule_params_are_unchanged(name):
    cfg = C.load(CONFIGS[name], CONFIGS["default"])
    now = _normalise(rule_params(cfg))
    pinned = json.loads(_pinned(name).read_text())
    assert sorted(now) == sorted(pinned), "the set of jobs changed"
    changed = [k for k in pinned if now[k] != pinned[k]]
    assert not changed, f"params changed (every finished cell would rerun): {changed[:5]}"


if __name__ == "__main__":  # re-pin (only when a change of params is intended and documented)
    for name, path in CONFIGS.items():
        params = _normalise(rule_params(C.load(path, CONFIGS["default"])))
        _pinned(name).write_text(json.dumps(params, indent=1, sort_keys=True) + "\n")
        print(f"pinned {len(params)} jobs of {name}", file=sys.stderr)
