"""Evaluation with the dummy detector, then metrics and the report from its scores."""

import pandas as pd
import pytest
import torch

from bilora.data.dataset import load_rows
from bilora.detectors import create_detector
from bilora.evaluation import score_table
from bilora.metrics import metrics_table
from bilora.report.figures import heatmap, robustness_curves
from bilora.report.tables import ALL, ALL_T, UNSEEN, UNSEEN_T, accuracy_matrix, render_tables

DUMMY = {"kind": "dummy", "image_size": 48, "train": {"epochs": 1, "batch_size": 8, "lr": 1e-2},
         "eval": {"batch_size": 16}}
CONDS = [("none", "-"), ("jpeg", "50"), ("mixed", "random")]


class Counting:
    """Wraps a detector to count the images it is asked to score."""

    def __init__(self, det):
        self.det, self.seen, self.input_size = det, 0, det.input_size
        self.device = det.device

    def eval(self):
        self.det.eval()

    def predict_proba(self, x):
        self.seen += len(x)
        return self.det.predict_proba(x)


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


def _fake_metrics():
    rows = []
    for det in ("a", "b"):
        for tr in ("G1", "G2"):
            for te in ("G1", "G2", "G3"):
                acc = 1.0 if tr == te else (0.8 if det == "a" else 0.6)
                for pert, level, f in (("none", "-", 1.0), ("jpeg", "75", 0.9),
                                       ("jpeg", "30", 0.7)):
                    rows.append({"detector": det, "train": tr, "test": te, "perturbation": pert,
                                 "level": level, "accuracy": acc * f, "f1": acc, "auc": acc,
                                 "auc_hard": acc, "ap": acc, "pd@5%": acc, "pd@1%": acc})
    return pd.DataFrame(rows)


def test_matrix_means_are_labelled_and_unseen_excludes_the_diagonal():
    m = _fake_metrics()
    m.loc[(m.detector == "a") & (m.train == "G1") & (m.test == "G3"), "accuracy"] = 0.5
    mat = accuracy_matrix(m, "a", ["G1", "G2"], ["G1", "G2", "G3"])
    assert mat.loc["G1", UNSEEN] == pytest.approx((80 + 50) / 2)
    assert mat.loc["G1", ALL] == pytest.approx((100 + 80 + 50) / 3)
    # the paper's kind of mean: over the training generators' test sets only
    assert mat.loc["G1", UNSEEN_T] == pytest.approx(80.0)
    assert mat.loc["G1", ALL_T] == pytest.approx((100 + 80) / 2)
    assert list(mat.columns) == ["G1", "G2", "G3", UNSEEN, ALL, UNSEEN_T, ALL_T]
    same = accuracy_matrix(m, "a", ["G1", "G2"], ["G1", "G2"])
    assert UNSEEN_T not in same.columns  # no second pair when the two coincide


def test_tables_and_figures_are_written(tmp_path):
    m = _fake_metrics()
    labels = {"a": "Detector A", "b": "Detector B"}
    paths = render_tables(m, tmp_path / "t", ["G1", "G2"], ["G1", "G2", "G3"], labels, "demo")
    names = {p.name for p in paths}
    assert {"accuracy_matrix_a.csv", "accuracy_matrix_b.tex", "detectors.md",
            "robustness.tex"} <= names
    det = pd.read_csv(tmp_path / "t" / "detectors.csv", index_col=0)
    assert det.loc["Detector A", f"accuracy {UNSEEN}"] == pytest.approx(80.0)
    assert det.loc["Detector B", f"accuracy {UNSEEN}"] == pytest.approx(60.0)
    rob = pd.read_csv(tmp_path / "t" / "robustness.csv")
    a30 = rob[(rob.detector == "Detector A") & (rob.level.astype(str) == "30")]
    assert a30.accuracy.iloc[0] == pytest.approx(0.7 * (2 * 100 + 4 * 80) / 6)
    tex = (tmp_path / "t" / "detectors.tex").read_text()
    caption = tex[tex.index("\\caption{"):].split("\n", 1)[0]
    assert "(\\%)" in caption and "(%)" not in caption  # % would comment out the brace
    figs = heatmap(m, "a", ["G1", "G2"], ["G1", "G2", "G3"], "A", tmp_path / "f")
    figs += robustness_curves(m, labels, tmp_path / "f")
    assert all(p.stat().st_size > 1000 for p in figs) and len(figs) == 4


def test_metrics_from_dummy_scores_end_to_end(tiny_data):
    rows = load_rows([tiny_data], "test", ["sim-LDM", "sim-ProGAN"])
    scores = score_table(create_detector(DUMMY, seed=0), rows, CONDS[:1], 0, 16, progress=False)
    scores.insert(0, "train", "sim-LDM")
    scores.insert(0, "detector", "dummy")
    m = metrics_table(scores)
    assert len(m) == 2 and set(m.test) == {"sim-LDM", "sim-ProGAN"}
    assert (m.n == 48).all() and (m.n_fake == 24).all()
