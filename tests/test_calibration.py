"""Calibration of P(fake) (the caption error analysis): ECE, Brier and the per-bin counts in
the metrics, and their pooling in the report's ``calibration`` table, on score sets with a
known answer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bilora.metrics import CAL_BINS, CAL_COLUMNS, compute, metrics_table
from bilora.report.calibration import pooled


def test_ece_and_brier_of_known_score_sets():
    y = np.array([0] * 4 + [1] * 4)
    confident = np.array([0.05] * 4 + [0.95] * 4)  # bins 0 and 9: |0 - 0.2| + |4 - 3.8|
    m = compute(y, confident)
    assert m["ece"] == pytest.approx(0.4 / 8) and m["brier"] == pytest.approx(0.05 ** 2)
    flat = compute(y, np.full(8, 0.9))  # one bin, half fakes, mean score 0.9
    assert flat["ece"] == pytest.approx(0.4)
    assert flat["brier"] == pytest.approx((4 * 0.81 + 4 * 0.01) / 8)
    perfect = compute(np.array([0, 1, 1, 0, 1]), np.array([0.0, 1.0, 1.0, 0.0, 1.0]))
    assert perfect["ece"] == pytest.approx(0) and perfect["brier"] == pytest.approx(0)


def test_unanswered_images_are_left_out_and_bins_count_each_class():
    y = np.array([0, 0, 1, 1, 1])
    s = np.array([0.0, 0.55, 1.0, np.nan, 0.55])  # a NaN: the generate readout's "neither"
    table = metrics_table(pd.DataFrame({"generator": "g", "perturbation": "none",
                                        "level": "-", "label": y, "p_fake": s}))
    row = table.iloc[0]
    bins = row[CAL_COLUMNS].to_numpy(float).reshape(3, CAL_BINS)
    assert bins[0].tolist() == [0] * 5 + [1] + [0] * 3 + [1]  # fakes: 0.55 and 1.0
    assert bins[1].tolist() == [1] + [0] * 4 + [1] + [0] * 4  # reals: 0.0 and 0.55
    assert bins[2][5] == pytest.approx(1.1) and bins[2][9] == pytest.approx(1.0)
    # 4 answered: bin 5 holds a fake and a real at 0.55 (|1 - 1.1|), the others are exact
    assert row["ece"] == pytest.approx(0.1 / 4)
    assert row["unlabelled"] == 1


def test_pooling_groups_equals_the_metrics_of_their_images_together():
    rng = np.random.default_rng(0)
    frames = []
    for test, shift in (("a", 0.1), ("b", -0.2)):
        y = rng.integers(0, 2, 300)
        s = np.clip(rng.normal(0.5 + 0.3 * (y - 0.5) + shift, 0.25), 0, 1)
        frames.append(pd.DataFrame({"generator": test, "perturbation": "none", "level": "-",
                                    "label": y, "p_fake": s}))
    both = pd.concat(frames, ignore_index=True)
    p = pooled(metrics_table(both))
    whole = compute(both["label"].to_numpy(), both["p_fake"].to_numpy())
    assert p["ece"] == pytest.approx(whole["ece"]) and p["brier"] == pytest.approx(
        whole["brier"])
    assert p["ece"] > 0.05  # the shifted sets are miscalibrated: the check has teeth
    said_fake = int((both["p_fake"] >= 0.5).sum())
    assert (p["said_fake"], p["said_real"], p["other"], p["n"]) == (
        said_fake, 600 - said_fake, 0, 600)
