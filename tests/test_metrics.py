import subprocess
import sys
from itertools import product

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score, roc_curve

from bilora.errors import UserError
from bilora.metrics import (
    COUNT_METRICS,
    KEYS,
    V01_SCALE,
    add_intervals,
    compute,
    count_metric,
    draw_counts,
    load_draws,
    mean_interval,
    metrics_table,
    run_metrics,
)


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


def test_ranking_metrics_with_ties_and_nans_match_sklearn():
    """Coarse scores (many ties) and NaNs (ranked as 0.5): AUC, AP and both PD@FPR rules."""
    rng = np.random.default_rng(1)
    for trial in range(60):
        n = int(rng.integers(5, 120))
        y = np.r_[0, 1, rng.integers(0, 2, n - 2)]
        s = (np.round(rng.random(n) * 7) / 7).astype(np.float32)
        s[rng.random(n) < 0.1] = np.nan
        m = compute(y, s)
        filled = np.where(np.isnan(s), 0.5, s)
        assert m["auc"] == pytest.approx(roc_auc_score(y, filled)), trial
        assert m["ap"] == pytest.approx(average_precision_score(y, filled)), trial
        fpr, tpr, _ = roc_curve(y, filled, drop_intermediate=False)
        for name, x in (("5%", 0.05), ("1%", 0.01)):
            assert m[f"pd@{name}_nearest"] == tpr[np.argmin(np.abs(fpr - x))], trial
            assert m[f"pd@{name}"] == tpr[fpr <= x].max(), trial


def test_hand_worked_counts_and_both_pd_rules():
    # 10 fakes: 4 above every real, 2 tied with the top real at 0.9, 4 low
    fakes = [0.99, 0.98, 0.97, 0.96, 0.9, 0.9, 0.3, 0.2, 0.1, 0.05]
    reals = [0.9, 0.8, 0.6, 0.48, 0.44, 0.40, 0.36, 0.32, 0.28, 0.24, 0.16, 0.12, 0.08, 0.04,
             0.02]
    y = np.r_[np.ones(10), np.zeros(15)].astype(int)
    m = compute(y, np.r_[fakes, reals])
    # >= 0.5: 6 fakes (tp 6, fn 4), 3 reals (fp 3, tn 12)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (6, 4, 3, 12)
    assert m["tpr"] == pytest.approx(6 / 10) and m["tnr"] == pytest.approx(12 / 15)
    assert m["accuracy"] == pytest.approx(18 / 25)
    assert m["f1"] == pytest.approx(12 / 19)  # 2tp / (2tp + fp + fn)
    assert m["auc_hard"] == pytest.approx((0.6 + 0.8) / 2)
    # ROC starts (0,0) (0,.1) .. (0,.4), then the 0.9 block jumps to (1/15, .6)
    assert m["pd@5%"] == pytest.approx(0.4)  # ours: best TPR with FPR <= 5 %
    assert m["pd@5%_nearest"] == pytest.approx(0.6)  # Ricker: FPR 1/15 is nearest 5 %
    assert m["pd@1%"] == pytest.approx(0.4)
    assert m["pd@1%_nearest"] == 0.0  # FPR 0 is nearest 1 %: its first point is (0, 0)


def test_threshold_rule_is_greater_or_equal():
    y = np.array([1, 0, 1, 0])
    m = compute(y, np.array([0.5, 0.5, 0.4999, 0.4999], np.float32))
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 1, 1, 1)
    assert compute(y, np.array([0.7, 0.7, 0.3, 0.3]), threshold=0.7)["tp"] == 1


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
    assert (m["fn"], m["fp"]) == (1, 1)


def test_metrics_table_groups_cells():
    df = pd.DataFrame({"detector": "d", "train": "A", "generator": ["A"] * 4 + ["B"] * 4,
                       "perturbation": "none", "level": "-", "label": [0, 0, 1, 1] * 2,
                       "p_fake": [0.1, 0.2, 0.8, 0.9, 0.1, 0.6, 0.4, 0.9]})
    t = metrics_table(df).set_index("test")
    assert t.loc["A", "accuracy"] == 1.0 and t.loc["B", "accuracy"] == 0.5


def test_groups_are_computed_independently():
    """Interleaved rows of three groups give each group's own numbers."""
    rng = np.random.default_rng(2)
    n = 900
    df = pd.DataFrame({"generator": rng.choice(["A", "B", "C"], n), "perturbation": "none",
                       "level": "-", "label": rng.integers(0, 2, n)})
    df["p_fake"] = np.clip(df["label"] * 0.2 + rng.normal(0.4, 0.2, n), 0, 1).round(2)
    t = metrics_table(df).set_index("test")
    assert list(t.index) == list(pd.unique(df["generator"]))  # order of appearance
    for g, part in df.groupby("generator"):
        alone = compute(part["label"].to_numpy(), part["p_fake"].to_numpy())
        for k, v in alone.items():
            assert t.loc[g, k] == pytest.approx(v), (g, k)


def _delong_pairwise(y, s):
    """DeLong's variance from its definition: O(n^2) pairwise comparisons."""
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return psi.mean(1).var(ddof=1) / len(pos) + psi.mean(0).var(ddof=1) / len(neg)


def test_delong_variance_definition_and_bootstrap():
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(200), np.zeros(180)].astype(int)
    s = np.round(np.clip(y * 0.25 + rng.normal(0.4, 0.2, len(y)), 0, 1), 2)  # with ties
    m = compute(y, s)
    assert m["auc_var"] == pytest.approx(_delong_pairwise(y, s), rel=1e-9)
    pos = s[y == 1]
    psi = (pos[:, None] > s[y == 0]) + 0.5 * (pos[:, None] == s[y == 0])
    assert m["auc_var_fake"] == pytest.approx(psi.mean(1).var(ddof=1) / len(pos), rel=1e-9)
    assert 0 < m["auc_var_fake"] < m["auc_var"]
    # stratified row bootstrap of sklearn's AUC: its variance estimates the same thing.
    # B = 500 gives the bootstrap variance a relative Monte Carlo error of
    # sqrt(2 / B) = 6.3 %, and the two estimators differ by O(1/n) ~ 0.5 %; measured
    # ratio 0.98 (0.96 with B = 1000), so 25 % is about 4 standard errors.
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    aucs = []
    for _ in range(500):
        idx = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        aucs.append(roc_auc_score(y[idx], s[idx]))
    assert np.var(aucs, ddof=1) == pytest.approx(m["auc_var"], rel=0.25)


def _one_group_table(y, s, key=("d", "A", 0, "A", "none", "-")):
    t = metrics_table(pd.DataFrame({"generator": key[3], "perturbation": key[4],
                                    "level": key[5], "label": y, "p_fake": s}))
    for k, v in zip(("detector", "train", "seed"), key[:3], strict=True):
        t[k] = v
    return t[KEYS + [c for c in t.columns if c not in KEYS]]


def test_count_draw_intervals_match_row_resampling():
    rng = np.random.default_rng(4)
    y = np.r_[np.ones(300), np.zeros(250)].astype(int)
    s = np.clip(y * 0.35 + rng.normal(0.3, 0.2, len(y)), 0, 1)
    s[rng.random(len(y)) < 0.02] = np.nan
    table = _one_group_table(y, s)
    fast = add_intervals(table, *draw_counts(table, 20_000, seed=7)).iloc[0]
    # slow, obvious reference: resample rows within each class, recount, percentile
    B = 2000
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    idx = np.c_[rng.choice(pos, (B, len(pos))), rng.choice(neg, (B, len(neg)))]
    yy, ss = y[idx], s[idx]
    pred = ss >= 0.5  # NaN compares False: a NaN fake is missed, a NaN real is wrong below
    tp = ((pred == 1) & (yy == 1)).sum(1)
    fp = (((pred == 1) | np.isnan(ss)) & (yy == 0)).sum(1)
    fn, tn = len(pos) - tp, len(neg) - fp
    ref = {"accuracy": (tp + tn) / len(y), "f1": 2 * tp / (2 * tp + fp + fn),
           "tpr": tp / len(pos), "tnr": tn / len(neg),
           "auc_hard": (tp / len(pos) + tn / len(neg)) / 2}
    # Monte Carlo error of a 2.5 % / 97.5 % percentile with B = 2000 draws: about
    # sqrt(.025 * .975 / B) / density = 0.0014 for tpr (sd 0.023), less for the others;
    # count steps are 1/300. 0.01 is ~7 standard errors and 3 count steps; the largest
    # difference measured was 0.004 (one step of tnr).
    for m in COUNT_METRICS:
        lo, hi = np.percentile(ref[m], [2.5, 97.5])
        assert fast[f"{m}_lo"] == pytest.approx(lo, abs=0.01), m
        assert fast[f"{m}_hi"] == pytest.approx(hi, abs=0.01), m
        assert fast[f"{m}_lo"] < fast[m] < fast[f"{m}_hi"]
    assert fast["tpr_hi"] - fast["tpr_lo"] > 0.05  # not degenerate: ~4 sd of a proportion
    half = 1.959964 * np.sqrt(fast["auc_var"])
    assert fast["auc_lo"] == pytest.approx(fast["auc"] - half)
    assert fast["auc_hi"] == pytest.approx(fast["auc"] + half)


def test_intervals_are_seeded_per_group():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 500)
    s = np.clip(y * 0.3 + rng.normal(0.35, 0.25, 500), 0, 1)
    table = _one_group_table(y, s)
    a, b, c = (draw_counts(table, 500, seed) for seed in (1, 1, 2))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    ia, ic = add_intervals(table, *a), add_intervals(table, *c)
    ends = [f"{m}_{e}" for m in COUNT_METRICS for e in ("lo", "hi")]
    assert not np.allclose(ia[ends].to_numpy(), ic[ends].to_numpy())
    # the same group beside another one draws the same
    other = _one_group_table(y[:200], s[:200], key=("d", "B", 0, "C", "none", "-"))
    both = draw_counts(pd.concat([other, table], ignore_index=True), 500, seed=1)
    assert np.array_equal(both[0][1], a[0][0]) and np.array_equal(both[1][1], a[1][0])


def test_mean_interval_matches_a_slow_reference():
    rng = np.random.default_rng(6)
    n_fake = rng.integers(50, 200, 6)
    n_real = rng.integers(50, 200, 6)
    table = pd.DataFrame({"n_fake": n_fake, "n_real": n_real,
                          "tp": (n_fake * rng.uniform(0.5, 0.95, 6)).astype(int),
                          "tn": (n_real * rng.uniform(0.5, 0.95, 6)).astype(int),
                          "auc": rng.uniform(0.6, 0.9, 6), "auc_var": rng.uniform(1e-4, 1e-3, 6)})
    table["auc_var_fake"] = table.auc_var * rng.uniform(0.2, 0.8, 6)
    R = 400
    tp_d = rng.binomial(n_fake[:, None], (table.tp / n_fake).to_numpy()[:, None], (6, R))
    tn_d = rng.binomial(n_real[:, None], (table.tn / n_real).to_numpy()[:, None], (6, R))
    draws = {"tp": tp_d, "tn": tn_d}
    for m in ("accuracy", "f1", "tpr", "tnr"):
        table[m] = [_scalar(m, table.tp[i], table.tn[i], n_fake[i], n_real[i]) for i in range(6)]
    rows = np.array([0, 2, 3, 5])
    for m in ("accuracy", "f1", "tpr", "tnr"):
        means = [np.mean([_scalar(m, tp_d[i, r], tn_d[i, r], n_fake[i], n_real[i])
                          for i in rows]) for r in range(R)]
        point, lo, hi = mean_interval(draws, rows, table, m, 0.9)
        assert point == pytest.approx(table[m][rows].mean())
        assert (lo, hi) == pytest.approx(tuple(np.percentile(means, [5, 95])))
    point, lo, hi = mean_interval(draws, rows, table, "auc", 0.95)
    half = 1.959964 * np.sqrt(table.auc_var[rows].sum()) / len(rows)
    assert (point, lo, hi) == pytest.approx((table.auc[rows].mean(),
                                             table.auc[rows].mean() - half,
                                             table.auc[rows].mean() + half))
    # many means at once: one per line of a 2-D rows
    for m in ("f1", "auc"):
        many = mean_interval(draws, np.array([rows, [1, 2, 4, 5]]), table, m, 0.95)
        for j, r in enumerate((rows, np.array([1, 2, 4, 5]))):
            assert tuple(x[j] for x in many) == pytest.approx(
                mean_interval(draws, r, table, m, 0.95))


def _scalar(m, tp, tn, nf, nr):
    fp, fn = nr - tn, nf - tp
    return {"accuracy": (tp + tn) / (nf + nr), "f1": 2 * tp / (2 * tp + fp + fn),
            "tpr": tp / nf, "tnr": tn / nr}[m]


def _score_file(path, detector, train, tests, rng, seed=None, categorical=True):
    n = 60
    frames = []
    for t in tests:
        for pert, level in (("none", "-"), ("jpeg", "50")):
            y = np.r_[np.ones(n // 2), np.zeros(n // 2)].astype("int8")
            p = np.clip(y * 0.3 + rng.normal(0.35, 0.2, n), 0, 1).astype("float32")
            frames.append(pd.DataFrame({"image": [f"{t}/{i}.png" for i in range(n)],
                                        "sha1": [f"{i:040x}" for i in range(n)],
                                        "generator": t, "label": y, "perturbation": pert,
                                        "level": level, "p_fake": p}))
    df = pd.concat(frames, ignore_index=True).sample(frac=1, random_state=0)
    if categorical:
        for c in ("image", "sha1", "generator", "perturbation", "level"):
            df[c] = df[c].astype("category")
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = {b"detector": detector.encode(), b"train": train.encode(),
            b"detector_label": f"{detector} label".encode()}
    if seed is not None:
        meta[b"seed"] = str(seed).encode()
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, **meta}), path)
    return df


def test_run_metrics_writes_aligned_table_and_draws(tmp_path):
    rng = np.random.default_rng(8)
    da = _score_file(tmp_path / "a.parquet", "det", "A", ["A", "B"], rng, seed=3)
    _score_file(tmp_path / "b.parquet", "det", "B", ["A"], rng, categorical=False)  # old file
    out = tmp_path / "m" / "metrics.parquet"
    t = run_metrics([tmp_path / "a.parquet", tmp_path / "b.parquet"], out, resamples=300)
    assert len(t) == 6 and list(t.columns[:6]) == KEYS
    assert list(t.seed) == [3, 3, 3, 3, 0, 0]  # absent seed: 0
    assert pd.read_parquet(out).equals(t)
    assert len(pd.read_csv(out.with_suffix(".csv"))) == 6
    assert b"det label" in pq.read_schema(out).metadata[b"detector_labels"]
    row = t[(t.train == "A") & (t.test == "B") & (t.perturbation == "jpeg")].iloc[0]
    part = da[(da.generator == "B") & (da.perturbation == "jpeg")]
    assert row["n"] == 60 and row["accuracy"] == pytest.approx(
        compute(part.label.to_numpy(), part.p_fake.to_numpy())["accuracy"])
    boot = np.load(out.with_name("bootstrap.npz"))
    assert boot["tp"].shape == boot["tn"].shape == (6, 300) and boot["tp"].dtype == np.int32
    assert int(boot["resamples"]) == 300 and float(boot["confidence"]) == 0.95
    for i in range(6):  # row i of the draws is row i of the table
        tp_i, tn_i = draw_counts(t.iloc[[i]], 300, int(boot["seed"]))
        assert np.array_equal(boot["tp"][i], tp_i[0]) and np.array_equal(boot["tn"][i], tn_i[0])
    # a group's numbers do not change when another file joins the run
    alone = run_metrics([tmp_path / "a.parquet"], tmp_path / "n" / "metrics.parquet",
                        resamples=300)
    pd.testing.assert_frame_equal(alone, t.iloc[:4])
    assert np.array_equal(np.load(tmp_path / "n" / "bootstrap.npz")["tp"], boot["tp"][:4])


def _shared_reals_file(path, tests, rng, shared=True, conditions=(("none", "-"),),
                       n_fake=150, n_real=200, train="A"):
    """Score file of ``tests``: logit fakes N(0.2 + 0.3 j, 1.2), reals N(-1, 1.2). With
    ``shared`` every set holds the same reals (same sha1, one score per condition)."""
    frames = []
    for pert, level in conditions:
        common = rng.normal(-1.0, 1.2, n_real)
        for j, t in enumerate(tests):
            real = common if shared else rng.normal(-1.0, 1.2, n_real)
            logit = np.r_[rng.normal(0.2 + 0.3 * j, 1.2, n_fake), real]
            frames.append(pd.DataFrame({
                "sha1": [f"{t}-fake{i:05d}" for i in range(n_fake)]
                + [f"{'' if shared else t}real{i:05d}" for i in range(n_real)],
                "generator": t, "label": np.r_[np.ones(n_fake), np.zeros(n_real)].astype("int8"),
                "perturbation": pert, "level": level,
                "p_fake": (1 / (1 + np.exp(-logit))).astype("float32")}))
    df = pd.concat(frames, ignore_index=True).sample(frac=1, random_state=1)
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = {b"detector": b"det", b"train": train.encode()}
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, **meta}), path)
    return df


def test_real_set_names_the_sorted_sha1s():
    df = pd.DataFrame({"generator": list("AAAABBBBCCCDDEE"), "perturbation": "none",
                       "level": "-", "label": [1, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 1, 1, 1, 0],
                       "sha1": ["f1", "r2", "r1", "r3", "r3", "f2", "r2", "r1", "f3", "r1", "r9",
                                "f5", "f4", None, "r1"],
                       "p_fake": np.linspace(0, 1, 15)})
    t = metrics_table(df).set_index("test")
    import hashlib
    assert t.loc["A", "real_set"] == hashlib.sha256(b"r1\nr2\nr3").hexdigest()[:16]
    assert t.loc["B", "real_set"] == t.loc["A", "real_set"]  # same images, other order
    assert t.loc["C", "real_set"] not in ("", t.loc["A", "real_set"])
    assert t.loc["D", "real_set"] == ""  # no reals
    # fake_set alike: D's fakes sorted; a fake without its sha1 leaves E's unnamed
    assert t.loc["D", "fake_set"] == hashlib.sha256(b"f4\nf5").hexdigest()[:16]
    assert t.loc["A", "fake_set"] == hashlib.sha256(b"f1").hexdigest()[:16]
    assert t.loc["E", "fake_set"] == "" and t.loc["E", "real_set"] != ""


def test_tn_draws_are_shared_by_sets_with_the_same_reals(tmp_path):
    rng = np.random.default_rng(10)
    _shared_reals_file(tmp_path / "a.parquet", ["A", "B", "C"], rng,
                       conditions=(("none", "-"), ("jpeg", "50")))
    _shared_reals_file(tmp_path / "b.parquet", ["A", "B"], rng, shared=False, train="B")
    t = run_metrics([tmp_path / "a.parquet", tmp_path / "b.parquet"],
                    tmp_path / "m" / "metrics.parquet", resamples=1000)
    d = load_draws(tmp_path / "m" / "bootstrap.npz")
    none = np.flatnonzero((t.train == "A") & (t.perturbation == "none"))
    jpeg = np.flatnonzero((t.train == "A") & (t.perturbation == "jpeg"))
    own = np.flatnonzero(t.train == "B")
    assert t.real_set[none].nunique() == 1 and t.real_set[own].nunique() == 2
    assert (t.real_set[jpeg] == t.real_set[none[0]]).all()  # same images, other condition
    for rows in (none, jpeg):  # one tn draw for the sets of a share, tp per set
        assert all(np.array_equal(d["tn"][rows[0]], d["tn"][i]) for i in rows)
        assert not np.array_equal(d["tp"][rows[0]], d["tp"][rows[1]])
    # independent: across conditions and across real sets; |corr| sd is ~0.03 at R = 1000
    for a, b in ((none[0], jpeg[0]), (own[0], own[1])):
        assert abs(np.corrcoef(d["tn"][a], d["tn"][b])[0, 1]) < 0.15
    # V01 kept for the groups of shares of several sets only, aligned by image
    length = np.diff(d["v01_start"])
    assert (length[none] == 200).all() and (length[own] == 0).all()
    v = d["v01"][d["v01_start"][none[0]]:d["v01_start"][none[0] + 1]] / V01_SCALE
    assert v.mean() == pytest.approx(t.auc[none[0]], abs=1e-4)  # mean placement: the AUC


def _weights(rng, n, size):
    """Bootstrap multiplicities: how often each of n rows is drawn, [size, n]."""
    idx = rng.integers(0, n, (size, n))
    return np.stack([np.bincount(i, minlength=n) for i in idx])


def test_mean_intervals_match_a_bootstrap_that_draws_shared_reals_once(tmp_path):
    """The slow reference: stratified row bootstrap, the shared reals resampled once per
    draw for the four sets, each set's fakes apart; AUC and counts of every set recomputed."""
    rng = np.random.default_rng(11)
    tests = ["A", "B", "C", "D"]
    df = _shared_reals_file(tmp_path / "a.parquet", tests, rng)
    t = run_metrics([tmp_path / "a.parquet"], tmp_path / "m" / "metrics.parquet",
                    resamples=4000)
    d = load_draws(tmp_path / "m" / "bootstrap.npz")
    sets = {g: p.sort_values("sha1") for g, p in df.groupby("generator")}  # reals aligned
    B = 4000
    w_real = _weights(rng, 200, B)  # one draw of the reals for all four sets
    ref = {m: np.zeros(B) for m in (*COUNT_METRICS, "auc")}
    for g in tests:
        y, s = sets[g].label.to_numpy(), sets[g].p_fake.to_numpy().astype(float)
        fake, real = s[y == 1], s[y == 0]
        w_fake = _weights(rng, len(fake), B)
        psi = (fake[:, None] > real[None, :]) + 0.5 * (fake[:, None] == real[None, :])
        auc = np.einsum("bi,ij,bj->b", w_fake, psi, w_real) / (len(fake) * len(real))
        for b in range(5):  # the reference's AUC is sklearn's AUC of the resampled rows
            rows = np.r_[np.repeat(np.arange(len(fake)), w_fake[b]),
                         len(fake) + np.repeat(np.arange(len(real)), w_real[b])]
            assert auc[b] == pytest.approx(roc_auc_score(np.r_[y[y == 1], y[y == 0]][rows],
                                                         np.r_[fake, real][rows]))
        tp, tn = w_fake @ (fake >= 0.5), w_real @ (real < 0.5)
        ref["auc"] += auc / len(tests)
        for m in COUNT_METRICS:
            ref[m] += count_metric(m, tp, tn, len(fake), len(real)) / len(tests)
    rows = np.flatnonzero(t.perturbation == "none")
    independent = t.assign(real_set=t.test)  # every set its own reals: the old intervals
    tp_i, tn_i = draw_counts(independent, 4000, 42)
    # Tolerance: a 2.5 % / 97.5 % percentile end of B = 4000 draws has a Monte Carlo sd of
    # sqrt(.025 * .975 / B) / phi(1.96) = 0.042 sd of the mean; both sides, 0.06 sd. Allow
    # 0.3 sd (5 Monte Carlo sd) plus one count step (1/200, 0.19 sd of tnr). Largest
    # differences measured over six data seeds: auc 0.13 sd, tnr 0.17 sd (one step), the
    # others 0.15 sd. The independent intervals miss by 0.5-0.8 sd (auc) and 0.8-1.1 sd
    # (tnr) at each end.
    for m in (*COUNT_METRICS, "auc"):
        sd = ref[m].std(ddof=1)
        lo, hi = np.percentile(ref[m], [2.5, 97.5])
        step = 0.0 if m == "auc" else 1 / 200
        _, a, b = mean_interval(d, rows, t, m)
        assert a == pytest.approx(lo, abs=0.3 * sd + step), m
        assert b == pytest.approx(hi, abs=0.3 * sd + step), m
        if m in ("auc", "tnr"):  # treating the sets as independent fails this check
            _, a, b = mean_interval({"tp": tp_i, "tn": tn_i}, rows, independent, m)
            assert abs(a - lo) + abs(b - hi) > 2 * (0.3 * sd + step), m


def test_shared_reals_widen_mean_intervals_and_own_reals_leave_them(tmp_path):
    rng = np.random.default_rng(12)
    tests = ["A", "B", "C", "D"]
    _shared_reals_file(tmp_path / "a.parquet", tests, rng)
    _shared_reals_file(tmp_path / "b.parquet", tests, rng, shared=False, train="B")
    t = run_metrics([tmp_path / "a.parquet", tmp_path / "b.parquet"],
                    tmp_path / "m" / "metrics.parquet", resamples=2000)
    d = load_draws(tmp_path / "m" / "bootstrap.npz")
    independent = t.assign(real_set=t.test + t.train)
    tp_i, tn_i = draw_counts(independent, 2000, 7)
    indep = {"tp": tp_i, "tn": tn_i}

    def width(draws, table, rows, m):
        _, lo, hi = mean_interval(draws, rows, table, m)
        return hi - lo

    shared, own = np.flatnonzero(t.train == "A"), np.flatnonzero(t.train == "B")
    # the sets' reals are the same images: tnr of the mean is one set's tnr, sqrt(4) = 2
    # times wider than four independent ones. Ratios measured over six data seeds: tnr
    # 1.87-1.96, accuracy 1.54-1.71, f1 1.23-1.37, auc_hard 1.38-1.53, auc 1.43-1.55;
    # tpr (fakes only) 0.95-1.02
    for m, least in (("tnr", 1.6), ("accuracy", 1.3), ("f1", 1.1), ("auc_hard", 1.2),
                     ("auc", 1.25)):
        assert width(d, t, shared, m) > least * width(indep, independent, shared, m), m
    assert width(d, t, shared, "tpr") == pytest.approx(
        width(indep, independent, shared, "tpr"), rel=0.15)
    # own reals: the same AUC formula as before, count widths within Monte Carlo error
    # (percentile ends of 2000 draws: about 3 % of the width; measured within 7 %)
    half = 1.959964 * np.sqrt(t.auc_var[own].sum()) / 4
    assert width(d, t, own, "auc") == pytest.approx(2 * half, rel=1e-6)
    for m in COUNT_METRICS:
        assert width(d, t, own, m) == pytest.approx(width(indep, independent, own, m),
                                                    rel=0.15), m
    # a mean across both cells: reals shared within cell A, fakes (the same sha1 in both
    # files) across the cells
    both = np.r_[shared, own]
    assert width(d, t, both, "auc") > width(indep, independent, both, "auc")


def _cells_on_same_images(folder, trains, rng, tests=("A", "B"), n_fake=150, n_real=200,
                          noise=1.0):
    """One score file per cell (train), every cell scoring the same images: test set t's
    fakes and the reals shared by the sets. logit = the image's own effect (fakes
    N(0.3 + 0.4 j, 1.5), reals N(-0.8, 1.5)) + the cell's noise N(0, noise), so the
    cells' errors correlate through the images (identical scores with noise 0).
    Returns {(train, test): (fake scores, real scores)}, reals in sha1 order."""
    effect_fake = {t: rng.normal(0.3 + 0.4 * j, 1.5, n_fake) for j, t in enumerate(tests)}
    effect_real = rng.normal(-0.8, 1.5, n_real)
    scores = {}
    for c, train in enumerate(trains):
        real = (1 / (1 + np.exp(-effect_real - rng.normal(0, noise, n_real)))).astype("float32")
        frames = []
        for t in tests:
            fake = (1 / (1 + np.exp(-effect_fake[t] - rng.normal(0, noise, n_fake)))
                    ).astype("float32")
            scores[train, t] = fake.astype(float), real.astype(float)
            frames.append(pd.DataFrame({
                "sha1": [f"{t}-fake{i:05d}" for i in range(n_fake)]
                + [f"real{i:05d}" for i in range(n_real)],
                "generator": t, "label": np.r_[np.ones(n_fake), np.zeros(n_real)].astype("int8"),
                "perturbation": "none", "level": "-", "p_fake": np.r_[fake, real]}))
        df = pd.concat(frames, ignore_index=True).sample(frac=1, random_state=c)
        table = pa.Table.from_pandas(df, preserve_index=False)
        meta = {b"detector": b"det", b"train": train.encode()}
        pq.write_table(table.replace_schema_metadata({**table.schema.metadata, **meta}),
                       folder / f"{train}.parquet")
    return scores


def _cells_run(tmp_path, trains, rng, resamples, **kw):
    scores = _cells_on_same_images(tmp_path, trains, rng, **kw)
    t = run_metrics([tmp_path / f"{x}.parquet" for x in trains],
                    tmp_path / "m" / "metrics.parquet", resamples=resamples)
    return scores, t, load_draws(tmp_path / "m" / "bootstrap.npz")


def _as_independent_cells(t, d, resamples):
    """Table and draws as before the coupling across cells: every cell its own images."""
    old = t.assign(fake_set=t.fake_set + t.train, real_set=t.real_set + t.train)
    tp, tn = draw_counts(old, resamples, 42)
    return old, {**d, "tp": tp, "tn": tn}


def test_binomial_inverse_cdf_is_exact_in_the_tails():
    """The draws' inverse CDF equals a search of the whole CDF, extreme uniforms included."""
    from scipy import special

    from bilora.metrics import _binomial_ppf

    rng = np.random.default_rng(23)
    for n, k in ((1, 0), (1, 1), (5, 1), (200, 199), (10_000, 9_990), (10_000, 5_000),
                 (100_000, 3)):
        u = np.r_[1e-300, 1 - 1e-16, rng.random(500)]
        full = np.minimum(np.searchsorted(special.bdtr(np.arange(n + 1), n, k / n), u), n)
        assert np.array_equal(_binomial_ppf(n, k / n, u), full), (n, k)


def test_coupled_draws_keep_each_groups_binomial_marginal():
    """Seeded by image blocks, not by group: every group still draws Binomial(n, p)."""
    rng = np.random.default_rng(20)
    rows = []
    for train, seed in product(["A", "B", "C"], [0, 1]):
        for test in ("X", "Y"):
            rows.append({"detector": "d", "train": train, "seed": seed, "test": test,
                         "perturbation": "none", "level": "-", "n_fake": 300, "n_real": 250,
                         "tp": int(rng.integers(150, 290)), "tn": int(rng.integers(100, 240)),
                         "fake_set": f"fakes-{test}", "real_set": "reals"})
    table = pd.DataFrame(rows)
    R = 20_000
    tp_d, tn_d = draw_counts(table, R, seed=3)
    for draws, n, k in ((tp_d, table.n_fake, table.tp), (tn_d, table.n_real, table.tn)):
        for i in range(len(table)):
            p = k[i] / n[i]
            var = n[i] * p * (1 - p)
            # the mean is within 4 standard errors, the variance within 6 % (its relative
            # sd is sqrt(2 / R) = 1 %); the 2.5 % and 97.5 % percentiles of the draws are
            # the binomial's own quantiles, up to one count
            assert draws[i].mean() == pytest.approx(k[i], abs=4 * np.sqrt(var / R)), i
            assert draws[i].var() == pytest.approx(var, rel=0.06), i
            ends = np.percentile(draws[i], [2.5, 97.5])
            assert ends == pytest.approx(stats.binom.ppf([0.025, 0.975], n[i], p), abs=1), i
    # the same group alone draws the same: seeded by its images, not by its neighbours
    alone = draw_counts(table.iloc[[7]], R, seed=3)
    assert np.array_equal(alone[0][0], tp_d[7]) and np.array_equal(alone[1][0], tn_d[7])
    # comonotone across cells on the same images, independent across fake sets
    x, y = np.flatnonzero(table.test == "X"), np.flatnonzero(table.test == "Y")
    assert min(np.corrcoef(tp_d[x])[0, 1:].min(), np.corrcoef(tn_d)[0, 1:].min()) > 0.95
    assert abs(np.corrcoef(tp_d[x[0]], tp_d[y[0]])[0, 1]) < 0.05  # sd 0.007 at R = 20,000


@pytest.mark.parametrize("tests", [("A", "B"), ("A",)])  # V01 stored / none stored
def test_cells_with_identical_scores_give_the_interval_of_one_cell(tmp_path, tests):
    """Two cells that score the same images alike are one sample, not two."""
    rng = np.random.default_rng(21)
    _, t, d = _cells_run(tmp_path, ["X", "Y"], rng, 2000, noise=0.0, tests=tests)
    assert (np.diff(d["v01_start"]) > 0).all() == (len(tests) == 2)
    if len(tests) == 2:  # draws of another table: the sets of a cell lack their V01
        with pytest.raises(ValueError, match="not the draws of this table"):
            mean_interval({**d, "v01_start": 0 * d["v01_start"]}, [0, 1], t, "auc")
    one, both = np.flatnonzero(t.train == "X"), np.arange(len(t))
    by_test = t.sort_values(["test", "train"])
    assert by_test.auc.tolist()[::2] == by_test.auc.tolist()[1::2]  # X and Y agree
    old, d_old = _as_independent_cells(t, d, 2000)
    for m in (*COUNT_METRICS, "auc"):
        interval = mean_interval(d, one, t, m)
        assert mean_interval(d, both, t, m) == pytest.approx(interval, rel=1e-9), m
        # as independent cells the interval was sqrt(2) narrower: measured 0.66-0.77 of
        # it over six data seeds (auc 0.707; counts are steps of 1/150 or 1/200)
        _, lo, hi = mean_interval(d_old, both, old, m)
        assert hi - lo < 0.85 * (interval[2] - interval[1]), m


def test_means_across_cells_are_no_narrower_than_a_shared_row_bootstrap(tmp_path):
    """The slow reference resamples the same image rows for two cells whose scores differ
    but correlate (stratified: one draw of each test set's fakes, one of the shared reals,
    for both cells). The coupled intervals cover it; independent cells fall short."""
    rng = np.random.default_rng(22)
    trains, tests, B = ["X", "Y"], ("A", "B"), 4000
    scores, t, d = _cells_run(tmp_path, trains, rng, B, noise=0.6)
    w_real = _weights(rng, 200, B).astype(float)
    ref = {m: np.zeros(B) for m in (*COUNT_METRICS, "auc")}
    for test in tests:
        w_fake = _weights(rng, 150, B).astype(float)
        for train in trains:
            fake, real = scores[train, test]
            psi = (fake[:, None] > real[None, :]) + 0.5 * (fake[:, None] == real[None, :])
            ref["auc"] += ((w_fake @ psi) * w_real).sum(1) / (150 * 200) / 4
            tp, tn = w_fake @ (fake >= 0.5), w_real @ (real < 0.5)
            for m in COUNT_METRICS:
                ref[m] += count_metric(m, tp, tn, 150, 200) / 4
    old, d_old = _as_independent_cells(t, d, B)
    rows = np.arange(len(t))
    # width / reference width, measured over eight data seeds: coupled counts 1.06-1.18
    # (comonotone: the bound), auc 1.01-1.04 (fakes' part bounded, reals' exact);
    # independent cells 0.76-0.82 (counts), 0.73-0.76 (auc). Each coupled end lies
    # -0.01 to +0.11 widths beyond the reference's. A percentile end of 4000 draws moves
    # by ~3 % of the width (Monte Carlo), so 0.95, 0.9 and 0.05 are 2-3 of those away.
    for m in (*COUNT_METRICS, "auc"):
        lo, hi = np.percentile(ref[m], [2.5, 97.5])
        _, a, b = mean_interval(d, rows, t, m)
        assert b - a > 0.95 * (hi - lo), m
        assert a < lo + 0.05 * (hi - lo) and b > hi - 0.05 * (hi - lo), m  # and covers it
        _, a, b = mean_interval(d_old, rows, old, m)
        assert b - a < 0.9 * (hi - lo), m


def test_run_metrics_rejects_two_files_of_one_cell(tmp_path):
    rng = np.random.default_rng(9)
    for name in ("a", "b"):
        _score_file(tmp_path / f"{name}.parquet", "det", "A", ["A"], rng)
    with pytest.raises(UserError, match="a.parquet.*one file a cell"):
        run_metrics([tmp_path / "b.parquet", tmp_path / "a.parquet"],
                    tmp_path / "metrics.parquet", resamples=10)


def test_score_files_need_the_sha1_of_every_real(tmp_path):
    rng = np.random.default_rng(13)
    df = _shared_reals_file(tmp_path / "a.parquet", ["A"], rng)
    pq.write_table(pa.Table.from_pandas(df.drop(columns="sha1")).replace_schema_metadata(
        {"detector": "det", "train": "A"}), tmp_path / "b.parquet")
    with pytest.raises(UserError, match="b.parquet lacks column.*sha1"):
        run_metrics([tmp_path / "b.parquet"], tmp_path / "m.parquet", resamples=10)
    df.loc[df.label == 0, "sha1"] = df.loc[df.label == 0, "sha1"].where(
        np.arange((df.label == 0).sum()) > 0)
    pq.write_table(pa.Table.from_pandas(df).replace_schema_metadata(
        {"detector": "det", "train": "A"}), tmp_path / "c.parquet")
    with pytest.raises(UserError, match="c.parquet has real rows with an empty 'sha1'"):
        run_metrics([tmp_path / "c.parquet"], tmp_path / "m.parquet", resamples=10)


def test_metrics_and_report_never_import_a_model_library():
    code = ("import sys, bilora.metrics, bilora.report.tables, bilora.report.figures, "
            "bilora.evaluation\n"
            "bad = [m for m in ('transformers', 'peft', 'timm', 'baselines', 'bilora.kinds', "
            "'bilora.api.detector') "
            "if m in sys.modules]\nprint(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
