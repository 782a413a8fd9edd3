"""The fast paths change nothing: training from cached frozen features and scoring in a
group with one image pass give the tables of the uncached, cell-by-cell path."""

import pandas as pd
import pytest
import yaml

from tests.test_ablation_seeds import _base
from tests.test_workflow import job_counts, smk

pytestmark = pytest.mark.slow


def _run(tmp_path, name, fast):
    cfg = _base()
    cfg["run"] = name
    if not fast:
        cfg["detectors"]["bilora"]["feature_cache"] = "off"
        cfg["evaluation"]["sharing"] = "cell"
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    out = smk("--cores", "2", "all", "--configfile", str(tmp_path / f"{name}.yaml"),
              cwd=tmp_path)
    return tmp_path / "results" / name, job_counts(out.stdout + out.stderr)


def test_cached_and_grouped_equal_uncached_and_per_cell(tmp_path):
    fast, fast_jobs = _run(tmp_path, "fast", True)
    slow, slow_jobs = _run(tmp_path, "slow", False)
    assert fast_jobs["score_group"] == 1 and "score_cell" not in fast_jobs
    assert slow_jobs["score_cell"] == 2 and "score_group" not in slow_jobs
    log = (fast / "bilora" / "train=sim-LDM" / "seed=42" / "train.log").read_text()
    assert "training from cached features: the deepest frozen point (vision)" in log
    log = (slow / "bilora" / "train=sim-LDM" / "seed=42" / "train.log").read_text()
    assert "training without a frozen-feature cache: feature_cache is off" in log
    a, b = (pd.read_csv(r / "metrics.csv") for r in (fast, slow))
    keys = ["detector", "train", "seed", "test", "perturbation", "level"]
    a, b = a.sort_values(keys).reset_index(drop=True), b.sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[keys], b[keys])
    # float32 reorderings move the scores by ~1e-6: the same decisions, the same AUCs
    assert (a.accuracy == b.accuracy).all() and (a.tp == b.tp).all()
    assert (a.auc - b.auc).abs().max() < 1e-4
    ta, tb = (pd.read_csv(r / "tables" / "accuracy_matrix_bilora.csv") for r in (fast, slow))
    pd.testing.assert_frame_equal(ta, tb, check_exact=False, atol=1e-6)
