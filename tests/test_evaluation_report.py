"""Evaluation with the dummy detector, then metrics from its scores (the report: test_report.py)."""

import pandas as pd
import pytest
import torch

from bilora.api.detector import create_detector
from bilora.data.dataset import load_rows
from bilora.evaluation import score_table
from bilora.metrics import metrics_table

DUMMY = {"kind": "dummy", "image_size": 48, "train": {"epochs": 1, "batch_size": 8, "lr": 1e-2},
         "eval": {"batch_size": 16}}
CONDS = [("none", "-"), ("jpeg", "50"), ("mixed", "random")]


class Counting:
    """Wraps a detector to count the images it is asked to score."""

    def __init__(self, det):
        self.det, self.seen, self.input_size = det, 0, det.input_size
        self.input_fit = det.input_fit
        self.device = det.device

    def eval(self):
        self.det.eval()

    def predict_tokens(self, x):  # what scoring calls (Detector's default for timm kinds)
        self.seen += len(x)
        return self.det.predict_tokens(x)


def test_scores_every_image_once_per_condition(tiny_data):
    gens = ["sim-LDM", "sim-ProGAN", "sim-GLIDE"]
    rows = load_rows([tiny_data], "test", gens)
    det = Counting(create_detector(DUMMY, seed=0))
    scores = score_table(det, rows, CONDS, seed=1, batch_size=16, progress=False)
    unique = rows["abspath"].nunique()
    assert unique == 24 + 3 * 24  # the shared reals are stored and scored once
    assert det.seen == unique * len(CONDS)
    assert len(scores) == len(rows) * len(CONDS)
    for gen in gens:
        g = scores[(scores.generator == gen) & (scores.perturbation == "none")]
        assert (g.label == 0).sum() == 24 and (g.label == 1).sum() == 24
    again = score_table(create_detector(DUMMY, seed=0), rows, CONDS, seed=1, batch_size=16,
                        progress=False)
    assert torch.equal(torch.tensor(scores.p_fake.values), torch.tensor(again.p_fake.values))
    clean, jpeg = (scores[scores.perturbation == k].p_fake.values for k in ("none", "jpeg"))
    assert (clean != jpeg).any()


def test_a_rerun_scores_only_the_missing_conditions(tiny_data, tmp_path):
    rows = load_rows([tiny_data], "test", ["sim-LDM", "sim-ProGAN"])
    unique = rows["abspath"].nunique()
    first = score_table(create_detector(DUMMY, seed=0), rows, CONDS, 1, 16, progress=False,
                        parts_dir=tmp_path, fingerprint="model-A")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "jpeg=50.parquet", "mixed=random.parquet", "none=-.parquet"]
    (tmp_path / "jpeg=50.parquet").unlink()  # as if killed while scoring JPEG 50
    det = Counting(create_detector(DUMMY, seed=0))
    again = score_table(det, rows, CONDS, 1, 16, progress=False, parts_dir=tmp_path,
                        fingerprint="model-A")
    assert det.seen == unique  # one condition scored, two reused
    pd.testing.assert_frame_equal(again, first)
    other = Counting(create_detector(DUMMY, seed=0))
    score_table(other, rows, CONDS, 1, 16, progress=False, parts_dir=tmp_path,
                fingerprint="model-B")  # another model: nothing reused
    assert other.seen == unique * len(CONDS)


def test_an_image_changed_after_its_manifest_stops_scoring(tiny_data, tmp_path):
    import shutil

    from bilora.data.dataset import ImageChanged

    data = tmp_path / "data"
    shutil.copytree(tiny_data.parent, data)
    rows = load_rows([data / "manifest.parquet"], "test", ["sim-LDM"])
    victim = rows[rows.label == 1].abspath.iloc[3]
    with open(victim, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ImageChanged) as err:
        score_table(create_detector(DUMMY, seed=0), rows, CONDS[:1], 1, 16, progress=False)
    msg = str(err.value)
    assert victim in msg and str(data / "manifest.parquet") in msg and "changed" in msg
    import os

    os.unlink(victim)
    with pytest.raises(ImageChanged, match="no longer exists"):
        score_table(create_detector(DUMMY, seed=0), rows, CONDS[:1], 1, 16, progress=False)


def test_metrics_from_dummy_scores_end_to_end(tiny_data):
    rows = load_rows([tiny_data], "test", ["sim-LDM", "sim-ProGAN"])
    scores = score_table(create_detector(DUMMY, seed=0), rows, CONDS[:1], 0, 16, progress=False)
    scores.insert(0, "train", "sim-LDM")
    scores.insert(0, "detector", "dummy")
    m = metrics_table(scores)
    assert len(m) == 2 and set(m.test) == {"sim-LDM", "sim-ProGAN"}
    assert (m.n == 48).all() and (m.n_fake == 24).all()
