"""Several Bi-LoRA cells over one frozen base: one image pass per condition, the same scores."""

import json

import numpy as np
import pandas as pd
import pytest

from bilora.cli import main

pytestmark = pytest.mark.slow
PERTURBATIONS = {"none": ["-"], "jpeg": [50], "mixed": ["random"]}
GENS = ["sim-LDM", "sim-ProGAN"]


def _spec(default_cfg, det_id, **over):
    det = {**default_cfg["detectors"]["bilora"], **over}
    det["train"] = {**det["train"], "epochs": 1, "batch_size": 32}
    return det


@pytest.fixture(scope="module")
def cells(tmp_path_factory, tiny_data, tiny_base, default_cfg):
    """Three trained cells: two generators of the embedded Bi-LoRA (Q-Former trains: they
    share the vision tower's output) and one LoRA-only variant (shares only up to there)."""
    root = tmp_path_factory.mktemp("group")
    plan = [("bilora", "sim-LDM", {}), ("bilora", "sim-ProGAN", {}),
            ("bilora@lora-only", "sim-LDM", {"extra_trainable": []})]
    out = []
    for det_id, gen, over in plan:
        det = _spec(default_cfg, det_id, **over)
        cell = root / det_id / f"train={gen}" / "seed=42"
        spec = {"detector_id": det_id, "detector": det, "train_generator": gen, "seed": 42,
                "device": "cpu", "jpeg_quality": None}
        assert main(["train", "--spec", json.dumps(spec), "--manifest", str(tiny_data),
                     "--base", str(tiny_base), "--out", str(cell / "model"),
                     "--checkpoint-dir", str(cell / "checkpoint"), "--quiet"]) == 0
        score = {"detector_id": det_id, "eval": {"batch_size": 64}, "test_generators": GENS,
                 "seed": 1, "perturbations": PERTURBATIONS, "protocol": "ricker",
                 "device": "cpu", "jpeg_quality": None}
        out.append((cell, gen, score))
    return root, out


def _group_spec(cells, condition):
    members = {score["detector_id"]: score for _, _, score in cells}
    return {"group": "g", "conditions": [list(condition)], "members": members,
            "cells": [[s["detector_id"], g, 42] for _, g, s in cells], "batch_size": 64,
            "test_generators": GENS, "seed": 1, "protocol": "ricker", "device": "cpu",
            "jpeg_quality": None}


def _score_group(root, cells, tiny_data, condition):
    marker = root / "groups" / f"{condition[0]}={condition[1]}.json"
    assert main(["score-group", "--spec", json.dumps(_group_spec(cells, condition)),
                 "--models", *[str(c / "model") for c, _, _ in cells], "--manifest",
                 str(tiny_data), "--out", str(marker), "--quiet"]) == 0
    return json.loads(marker.read_text())


def test_group_and_cell_scoring_give_the_same_scores(cells, tiny_data, tmp_path):
    root, cells = cells
    for kind, levels in PERTURBATIONS.items():
        for level in levels:
            done = _score_group(root, cells, tiny_data, (kind, str(level)))
            assert done["conditions"][0]["scored"] == [True, True, True]
    for cell, gen, score in cells:
        grouped = cell / "scores.parquet"
        assert main(["gather-scores", "--spec", json.dumps(score), "--model",
                     str(cell / "model"), "--manifest", str(tiny_data), "--train-generator",
                     gen, "--seed", "42", "--out", str(grouped)]) == 0
        alone = tmp_path / f"{score['detector_id']}-{gen}.parquet"
        assert main(["score", "--spec", json.dumps(score), "--model", str(cell / "model"),
                     "--manifest", str(tiny_data), "--train-generator", gen, "--seed", "42",
                     "--out", str(alone), "--quiet"]) == 0
        a, b = pd.read_parquet(grouped), pd.read_parquet(alone)
        assert len(a) == len(b) > 0
        pd.testing.assert_frame_equal(a.drop(columns="p_fake"), b.drop(columns="p_fake"))
        assert np.abs(a.p_fake.to_numpy() - b.p_fake.to_numpy()).max() <= 1e-6
        assert a.p_fake.std() > 1e-3  # the images move the scores: the check has teeth
        assert (a.token >= 0).all()  # the generated word is kept


def test_a_changed_cell_is_the_only_one_rescored(cells, tiny_data, default_cfg, tiny_base):
    root, cells = cells
    cell, gen, score = cells[1]
    det = _spec(default_cfg, "bilora")
    det["train"]["lr"] = 1e-3  # the cell trained anew, with another setting
    spec = {"detector_id": "bilora", "detector": det, "train_generator": gen, "seed": 42,
            "device": "cpu", "jpeg_quality": None}
    assert main(["train", "--spec", json.dumps(spec), "--manifest", str(tiny_data), "--base",
                 str(tiny_base), "--out", str(cell / "model"), "--checkpoint-dir",
                 str(cell / "checkpoint"), "--quiet"]) == 0
    done = _score_group(root, cells, tiny_data, ("jpeg", "50"))
    assert done["conditions"][0]["scored"] == [False, True, False]
    assert main(["gather-scores", "--spec", json.dumps(score), "--model", str(cell / "model"),
                 "--manifest", str(tiny_data), "--train-generator", gen, "--seed", "42",
                 "--out", str(root / "x.parquet")]) == 1  # the other conditions are stale
