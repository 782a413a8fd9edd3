import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from bilora.metrics import compute, metrics_table


def test_metrics_agree_with_sklearn_definitions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    s = np.clip(y * 0.3 + rng.normal(0.35, 0.25, 400), 0, 1)
    m = compute(y, s)
    pred = (s >= 0.5).astype(int)
    assert m["accuracy"] == pytest.approx((pred == y).mean())
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["auc"] == pytest.approx(roc_auc_score(y, s))
    assert m["auc_hard"] == pytest.approx(roc_auc_score(y, pred))  # the paper's AUC
    assert m["ap"] == pytest.approx(average_precision_score(y, s))
    assert m["auc"] > m["auc_hard"]  # scores carry more than the hard labels


def test_detection_rate_at_fixed_false_positives():
    # 100 reals with scores 0..0.99, 10 fakes scored above 0.95 except 3 low ones
    reals = np.arange(100) / 100
    fakes = np.array([0.999, 0.998, 0.997, 0.996, 0.995, 0.994, 0.993, 0.5, 0.4, 0.3])
    y = np.r_[np.zeros(100), np.ones(10)].astype(int)
    m = compute(y, np.r_[reals, fakes])
    assert m["pd@1%"] == pytest.approx(0.7)  # threshold above 0.99: 7 of 10 fakes
    assert m["pd@5%"] == pytest.approx(0.7)  # 0.95..0.99 reals add fps, no fakes there
    assert compute(y, np.r_[reals * 0.1, fakes])["pd@5%"] == pytest.approx(1.0)


def test_unlabelled_images_count_as_wrong():
    y = np.array([0, 1, 1, 0])
    m = compute(y, np.array([0.1, np.nan, 0.9, np.nan]))
    assert m["unlabelled"] == 2 and m["accuracy"] == 0.5


def test_metrics_table_groups_cells():
    df = pd.DataFrame({"detector": "d", "train": "A", "generator": ["A"] * 4 + ["B"] * 4,
                       "perturbation": "none", "level": "-", "label": [0, 0, 1, 1] * 2,
                       "p_fake": [0.1, 0.2, 0.8, 0.9, 0.1, 0.6, 0.4, 0.9]})
    t = metrics_table(df).set_index("test")
    assert t.loc["A", "accuracy"] == 1.0 and t.loc["B", "accuracy"] == 0.5


def test_metrics_and_report_never_import_a_model_library():
    code = ("import sys, bilora.metrics, bilora.report.tables, bilora.report.figures, "
            "bilora.evaluation\n"
            "bad = [m for m in ('transformers', 'peft', 'timm', 'baselines', 'bilora.detector') "
            "if m in sys.modules]\nprint(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
