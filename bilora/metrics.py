"""Detection metrics from per-image scores, with seeded intervals. Never imports a model class.

A *group* is one set of images scored by one trained model: (detector, train, seed, test,
perturbation, level). Fake is the positive class. Per group:

- prediction: ours counts ``p_fake >= threshold`` as fake; Ricker et al.'s code counts
  ``p_fake > threshold`` (the two differ only for a score exactly at the threshold). An
  image without a label from the detector (NaN score, the paper's unmapped token) is
  wrong whatever its label: a NaN fake is a false negative, a NaN real a false positive.
- ``tp``, ``tn``, ``fp``, ``fn`` and ``accuracy`` = (tp + tn) / n, ``f1`` = 2 tp / (2 tp +
  fp + fn) (0 when nothing is fake or predicted fake), ``tpr`` = tp / n_fake (recall on
  fakes), ``tnr`` = tn / n_real (accuracy on reals).
- ``auc``: ROC AUC of the scores (threshold-free), NaN scores ranked as 0.5.
  ``auc_hard``: ROC AUC of the hard 0/1 predictions, as the Bi-LoRA paper computed its
  "AUC"; it equals (tpr + tnr) / 2, the balanced accuracy. ``ap``: average precision
  (scikit-learn's step definition, no interpolation), NaN scores ranked as 0.5.
- ``pd@5%``, ``pd@1%`` (ours, conservative): the largest TPR among the ROC's operating
  points whose FPR does not exceed the target. ``pd@5%_nearest``, ``pd@1%_nearest``
  (Ricker et al.'s): ``fpr, tpr = roc_curve(y, s, drop_intermediate=False)`` and
  ``tpr[argmin(abs(fpr - target))]``, the first point of ties: its FPR may exceed the
  target, and when the nearest FPR is 0 it is the (0, 0) point (PD 0).

Intervals (``confidence``, 95 % by default) are stratified by class: the fakes and the
reals of a group are resampled separately. For the count metrics (accuracy, f1, tpr, tnr,
auc_hard) the rows are not resampled; the counts are drawn, tp* ~ Binomial(n_fake,
tp / n_fake) and tn* ~ Binomial(n_real, tn / n_real), which is exactly their distribution
under stratified row resampling, and the interval is the percentile interval of the metric
over the draws. For ``auc`` the interval is DeLong's normal interval, auc +- z sqrt(auc_var),
clipped to [0, 1], with ``auc_var`` from the fast midrank algorithm of Sun & Xu (2014);
``auc_var_fake`` is its fake-side term S10 / n_fake.

Shared images. Groups are not independent samples when they score the same images:
the test sets of one cell (detector, train, seed) are usually scored against the same
real images (Ricker et al.'s 10k LSUN reals), and every cell (other detectors, training
generators, training seeds) scores the same test images. ``real_set`` and ``fake_set``
name a group's real and fake images: the first 16 hex digits of the SHA-256 of their
``sha1`` values, sorted, one per line ("" when it has none, or, for ``fake_set``, when a
fake lacks its sha1). A *block* is one such set of images under one condition
(perturbation, level); blocks of different images are independent samples, and so is a
group's block of fakes from its block of reals (stratified resampling).

- Counts: tp* is the inverse Binomial CDF of one set of uniforms per block of fakes,
  seeded by (seed, fake_set, perturbation, level), tn* likewise per block of reals; no
  detector, train or training seed enters. Every group keeps its own binomial marginal,
  so its own interval is that of stratified row resampling. Groups of one block draw
  comonotone counts (identical for equal counts: the test sets of a cell sharing reals,
  or cells that agree), which gives the sum the largest variance possible for its
  marginals.
- ``auc``: ``mean_interval`` sums the variance of the sum over independent blocks. A
  block of reals contributes var_j(sum over its groups of V01(j)) / n_real, V01(j)
  being real image j's placement value (the share of that group's fakes scored above
  it, ties half) aligned by image, plus, as perfectly correlated, the sd of any group
  without stored V01; a block of fakes contributes (sum over its groups of
  sqrt(auc_var_fake))^2 (V10 are not stored, so perfect correlation is assumed). A
  group alone in both its blocks contributes its auc_var. ``bootstrap.npz`` keeps V01
  of every group whose share (same cell, condition and real set) has two or more groups.

So the interval of a mean over groups is:

- exact (up to Monte Carlo error and DeLong's approximation) within one cell and
  condition: tn* identical across the test sets that share reals, tp* independent across
  test sets (other fakes); for ``auc`` the shared reals' covariance through V01.
- conservative across cells on the same images (the mean over training seeds of a
  matrix cell, a detector's mean over its matrix, a robustness mean over detectors,
  cells and test sets): counts comonotone, ``auc`` with the fakes' parts perfectly
  correlated (its reals' part is exact where V01 is stored, as it is whenever a cell's
  test sets share reals). An upper bound, not too narrow; tight when the cells' errors
  fall on the same images.
- independent where the images differ: other real sets, other fake sets, and other
  conditions (perturbed copies of the same images: correlated, not covered; the report
  never averages across conditions). Nor does any interval cover the seed-to-seed spread
  of training, which the report shows apart.

Every draw comes from a generator seeded by (seed, block), so a group's draws do not
depend on which other groups are in the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import special, stats

from bilora.atomic import atomic_path, derive_seed
from bilora.errors import DataError

log = logging.getLogger(__name__)

KEYS = ["detector", "train", "seed", "test", "perturbation", "level"]
SCORE_COLUMNS = ["sha1", "generator", "label", "perturbation", "level", "p_fake"]
SHARE_KEYS = ["detector", "train", "seed", "perturbation", "level", "real_set"]
COUNT_METRICS = ("accuracy", "f1", "tpr", "tnr", "auc_hard")
INTERVAL_METRICS = (*COUNT_METRICS, "auc")
PD_TARGETS = {"5%": 0.05, "1%": 0.01}
POINT_COLUMNS = ["n", "n_fake", "n_real", "unlabelled", "tp", "tn", "fp", "fn", "accuracy",
                 "f1", "tpr", "tnr", "auc", "auc_hard", "ap", "pd@5%", "pd@1%",
                 "pd@5%_nearest", "pd@1%_nearest", "auc_var", "auc_var_fake", "ece", "brier"]
#: equal-width bins of P(fake) for calibration: per group, answered fakes and reals and the
#: sum of their scores in each bin (score histograms per class, the reliability diagram)
CAL_BINS = 10
CAL_COLUMNS = [f"cal_{part}_{b}" for part in ("fake", "real", "psum") for b in range(CAL_BINS)]
V01_SCALE = 65535  # V01 is stored as round(V01 * V01_SCALE) in uint16


# -- count metrics (points and bootstrap draws share one formula) -------------------------

def count_metric(metric: str, tp: np.ndarray, tn: np.ndarray, n_fake: np.ndarray,
                 n_real: np.ndarray) -> np.ndarray:
    """``metric`` from true-positive and true-negative counts (arrays broadcast)."""
    tp, tn = np.asarray(tp, dtype=float), np.asarray(tn, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "tpr":
            return tp / n_fake
        if metric == "tnr":
            return tn / n_real
        if metric == "accuracy":
            return (tp + tn) / (n_fake + n_real)
        if metric == "auc_hard":
            return (tp / n_fake + tn / n_real) / 2
        if metric == "f1":  # 2tp / (2tp + fp + fn), fp = n_real - tn, fn = n_fake - tp
            den = tp + n_fake + n_real - tn
            return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0)
    raise ValueError(f"not a count metric: {metric!r} (one of {', '.join(COUNT_METRICS)})")


# -- per-group point metrics, vectorised over the groups of one file ----------------------

def _midranks(g: np.ndarray, s: np.ndarray) -> np.ndarray:
    """1-based midrank of each element within its group; ``g`` sorted, ``s`` sorted in g."""
    n = len(g)
    if n == 0:
        return np.zeros(0)
    gnew = np.ones(n, bool)
    gnew[1:] = g[1:] != g[:-1]
    new = gnew.copy()
    new[1:] |= s[1:] != s[:-1]
    gstart = np.maximum.accumulate(np.where(gnew, np.arange(n), 0))
    start = np.flatnonzero(new)
    stop = np.append(start[1:], n)
    mid = (start + stop - 1) / 2 - gstart[start] + 1
    return np.repeat(mid, stop - start)


def _per_group(g: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    return np.bincount(g, weights=values, minlength=n_groups)


def group_metrics(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                  threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Point metrics (``POINT_COLUMNS``) of every group, with numpy only.

    ``groups`` holds codes 0..G-1, every one present. Also returns ``first``: the index
    of each group's first row, to keep groups in order of appearance, and ``v01``: per
    row, a real image's DeLong placement value in its group (NaN for fakes, and for every
    row of a group without fakes).
    """
    g = np.asarray(groups, dtype=np.int64)
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores)
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(float)
    if len(g) == 0:
        return {**{k: np.zeros(0) for k in [*POINT_COLUMNS, "first", "v01"]},
                "cal": np.zeros((0, len(CAL_COLUMNS)))}
    G = int(g.max()) + 1
    nan = np.isnan(s)
    correct = ((s >= threshold) == y) & ~nan  # NaN: wrong whatever the label

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(g[mask], minlength=G)

    n = np.bincount(g, minlength=G)
    n_fake = count(y)
    n_real = n - n_fake
    tp, tn = count(correct & y), count(correct & ~y)
    out: dict[str, np.ndarray] = {
        "n": n, "n_fake": n_fake, "n_real": n_real, "unlabelled": count(nan),
        "tp": tp, "tn": tn, "fp": n_real - tn, "fn": n_fake - tp}
    for m in COUNT_METRICS:
        out[m] = count_metric(m, tp, tn, n_fake, n_real)
    out.update(_calibration(g, y, s, ~nan, G))

    # one sort by (group, score descending): ROC, AP, PD@FPR and DeLong all read it
    s = np.where(nan, s.dtype.type(0.5), s)
    o = np.argsort(-s)
    o = o[np.argsort(g[o].astype(np.uint16) if G <= 65536 else g[o], kind="stable")]
    gs, ys, ss = g[o], y[o], s[o]
    gstart = np.concatenate([[0], np.cumsum(n)[:-1]])
    out["first"] = np.minimum.reduceat(o, gstart)

    # ROC operating points: the last row of each tie block (one distinct threshold)
    bend = np.flatnonzero(np.append((gs[1:] != gs[:-1]) | (ss[1:] != ss[:-1]), True))
    bg = gs[bend]
    bfirst = np.ones(len(bend), bool)
    bfirst[1:] = bg[1:] != bg[:-1]
    cum_tp = np.concatenate([[0], np.cumsum(ys)])
    tps = cum_tp[bend + 1] - cum_tp[gstart[bg]]
    fps = (bend + 1 - gstart[bg]) - tps
    with np.errstate(divide="ignore", invalid="ignore"):
        tpr = tps / n_fake[bg]
        fpr = fps / n_real[bg].astype(float)
        prev_tpr = np.where(bfirst, 0.0, np.roll(tpr, 1))
        prev_fpr = np.where(bfirst, 0.0, np.roll(fpr, 1))
        prev_tps = np.where(bfirst, 0, np.roll(tps, 1))
        out["auc"] = _per_group(bg, (fpr - prev_fpr) * (tpr + prev_tpr) / 2, G)
        out["ap"] = _per_group(bg, (tps - prev_tps) / n_fake[bg] * tps / (tps + fps), G)
    bstart = np.flatnonzero(bfirst)
    for name, x in PD_TARGETS.items():
        ok = fpr <= x + 1e-12  # the (0, 0) point is always allowed: PD >= 0
        out[f"pd@{name}"] = np.maximum.reduceat(np.where(ok, tpr, 0.0), bstart)
        dist = np.abs(fpr - x)
        best = np.minimum(x, np.minimum.reduceat(dist, bstart))
        hit = np.flatnonzero(dist == best[bg])
        first_hit = hit[np.append(True, bg[hit][1:] != bg[hit][:-1])] if len(hit) else hit
        near = np.zeros(G)  # the (0, 0) point, first of the ROC, wins its ties
        won = best[bg[first_hit]] < x
        near[bg[first_hit][won]] = tpr[first_hit][won]
        out[f"pd@{name}_nearest"] = near

    # DeLong (Sun & Xu 2014): V10 = share of reals below each fake (ties half), V01 likewise
    rank = _midranks(gs, ss)  # descending midrank among all images of the group
    gp, gn = gs[ys], gs[~ys]
    with np.errstate(divide="ignore", invalid="ignore"):  # a group of one class: NaN
        v10 = 1 - (rank[ys] - _midranks(gp, ss[ys])) / n_real[gp]
        v01 = (rank[~ys] - _midranks(gn, ss[~ys])) / n_fake[gn]
        m10 = _per_group(gp, v10, G) / n_fake
        m01 = _per_group(gn, v01, G) / n_real
        s10 = _per_group(gp, (v10 - m10[gp]) ** 2, G) / (n_fake - 1)
        s01 = _per_group(gn, (v01 - m01[gn]) ** 2, G) / (n_real - 1)
        out["auc_var_fake"] = s10 / n_fake
        out["auc_var"] = out["auc_var_fake"] + s01 / n_real
    out["v01"] = np.full(len(g), np.nan)
    out["v01"][o[~ys]] = v01
    both = (n_fake > 0) & (n_real > 0)
    for k in ("auc", "ap", "pd@5%", "pd@1%", "pd@5%_nearest", "pd@1%_nearest"):
        out[k] = np.where(both, out[k], np.nan)
    for k in ("auc_var", "auc_var_fake"):
        out[k] = np.where((n_fake > 1) & (n_real > 1), out[k], np.nan)
    return out


def image_sets(groups: np.ndarray, mask: np.ndarray, sha1: pd.Categorical
               ) -> tuple[np.ndarray, np.ndarray]:
    """(identity of every group's images at ``mask``, those rows in canonical order).

    The identity is the first 16 hex digits of the SHA-256 of the images' ``sha1``
    values, sorted, one per line; "" for a group without such rows or with one whose
    ``sha1`` is empty. The order lists the masked rows group by group (codes 0..G-1),
    each group's by ``sha1``, so the groups of one identity list their images alike.
    Groups that list the same images in the same order (one file's conditions) are
    sorted and hashed once.
    """
    g = np.asarray(groups, dtype=np.int64)
    G = int(g.max()) + 1 if len(g) else 0
    rows = np.flatnonzero(np.asarray(mask).astype(bool))
    gr = g[rows]
    order = rows[np.argsort(gr.astype(np.uint16) if G <= 65536 else gr, kind="stable")]
    codes = np.asarray(sha1.codes)[order]
    names = np.asarray(sha1.categories.astype(str), dtype=object)
    stop = np.cumsum(np.bincount(gr, minlength=G))
    out, seen = np.full(G, "", dtype=object), {}
    for i in range(G):
        a, b = (stop[i - 1] if i else 0), stop[i]
        if a == b:
            continue
        fp = hashlib.blake2b(codes[a:b].tobytes()).digest()
        if fp not in seen:
            c = codes[a:b]
            named = np.flatnonzero(c >= 0)
            perm = np.r_[named[np.argsort(names[c[named]], kind="stable")],
                         np.flatnonzero(c < 0)].astype(np.int64)
            text = "\n".join(names[c[perm]]).encode() if len(named) == len(c) else None
            seen[fp] = (hashlib.sha256(text).hexdigest()[:16] if text else "", perm)
        out[i], perm = seen[fp]
        order[a:b] = order[a:b][perm]
    return out, order


def real_sets(groups: np.ndarray, labels: np.ndarray, sha1: pd.Categorical
              ) -> tuple[np.ndarray, np.ndarray]:
    """(``real_set`` of every group, the real rows in canonical order): ``image_sets``
    of the reals."""
    return image_sets(groups, ~np.asarray(labels).astype(bool), sha1)


def fake_sets(groups: np.ndarray, labels: np.ndarray, sha1: pd.Categorical) -> np.ndarray:
    """``fake_set`` of every group: ``image_sets`` of the fakes ("" if one lacks a sha1)."""
    return image_sets(groups, np.asarray(labels).astype(bool), sha1)[0]


def _calibration(g: np.ndarray, y: np.ndarray, s: np.ndarray, ok: np.ndarray, G: int
                 ) -> dict[str, np.ndarray]:
    """ECE and Brier score of P(fake) per group over the answered images (``ok``), and the
    per-bin counts behind them (``cal``: [G, CAL_COLUMNS]). ECE = sum over bins of
    |fakes in the bin - sum of its scores| / answered images: the bin-weighted gap between
    the share of fakes and the mean score."""
    b = np.clip((np.where(ok, s, 0.0) * CAL_BINS).astype(np.int64), 0, CAL_BINS - 1)
    idx, size = g * CAL_BINS + b, G * CAL_BINS
    fake = np.bincount(idx[ok & y], minlength=size).reshape(G, CAL_BINS)
    real = np.bincount(idx[ok & ~y], minlength=size).reshape(G, CAL_BINS)
    psum = np.bincount(idx[ok], weights=s[ok], minlength=size).reshape(G, CAL_BINS)
    answered = fake.sum(1) + real.sum(1)
    sq = np.bincount(g[ok], weights=(s[ok] - y[ok]) ** 2, minlength=G)
    with np.errstate(divide="ignore", invalid="ignore"):  # nothing answered: NaN
        ece = np.abs(fake - psum).sum(1) / answered
        brier = sq / answered
    return {"ece": ece, "brier": brier, "cal": np.hstack([fake, real, psum]).astype(float)}


def compute(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Point metrics of one set of (label, P(fake)) pairs."""
    y = np.asarray(labels)
    if len(y) == 0:
        return {k: float("nan") for k in POINT_COLUMNS}
    m = group_metrics(np.zeros(len(y), np.int64), y, scores, threshold)
    return {k: m[k][0].item() for k in POINT_COLUMNS}


def metrics_table(scores: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """Point metrics, one row per group, from per-image rows held in memory.

    ``scores`` has ``generator`` (the test set), ``perturbation``, ``level``, ``label``,
    ``p_fake`` and whichever of ``detector``, ``train``, ``seed`` it groups by; with a
    ``sha1`` column the table also has ``real_set`` and ``fake_set``.
    """
    df = scores.rename(columns={"generator": "test"})
    keys = [k for k in KEYS if k in df.columns]
    codes = df.groupby(keys, sort=False, observed=True).ngroup().to_numpy()
    m = group_metrics(codes, df["label"].to_numpy(), df["p_fake"].to_numpy(), threshold)
    table = df.iloc[m["first"]][keys].reset_index(drop=True)
    for k in POINT_COLUMNS:
        table[k] = m[k]
    table[CAL_COLUMNS] = m["cal"]
    if "sha1" in df.columns:
        sha1 = pd.Categorical(df["sha1"])
        if (np.asarray(sha1.codes)[df["label"].to_numpy() == 0] < 0).any():
            raise ValueError("scores: real rows with an empty 'sha1'")
        table["real_set"] = real_sets(codes, df["label"].to_numpy(), sha1)[0]
        table["fake_set"] = fake_sets(codes, df["label"].to_numpy(), sha1)
    return table


# -- reading score files, one at a time ---------------------------------------------------

def read_scores(path: str | os.PathLike) -> tuple[dict[str, str], pd.DataFrame]:
    """(metadata, frame of ``SCORE_COLUMNS``) of one score file; strings as categoricals.

    The metadata always holds ``detector``, ``train`` and ``seed`` ("0" when absent).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()
            if not k.startswith((b"pandas", b"ARROW"))}
    for key in ("detector", "train"):
        if key not in meta:
            raise DataError(f"{path} lacks '{key}' in its metadata: not a score file")
    meta.setdefault("seed", "0")
    missing = [c for c in SCORE_COLUMNS if c not in schema.names]
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(missing)}")
    strings = [c for c in ("sha1", "generator", "perturbation", "level")
               if pa.types.is_string(schema.field(c).type)
               or pa.types.is_large_string(schema.field(c).type)]
    table = pq.read_table(path, columns=SCORE_COLUMNS, read_dictionary=strings)
    for c in ("sha1", "generator", "perturbation", "level"):
        col = table.column(c)
        if not pa.types.is_dictionary(col.type):
            table = table.set_column(table.schema.get_field_index(c), c,
                                     pc.dictionary_encode(col.cast("string")))
    df = table.to_pandas()
    if df[["generator", "perturbation", "level", "label"]].isna().any().any():
        raise DataError(f"{path} has empty generator/perturbation/level/label cells")
    if not df["label"].isin([0, 1]).all():
        raise DataError(f"{path}: column 'label' holds values other than 0 and 1")
    if (df["sha1"].cat.codes.to_numpy()[df["label"].to_numpy() == 0] < 0).any():
        raise DataError(f"{path} has real rows with an empty 'sha1' cell")
    return meta, df


def file_metrics(path: str | os.PathLike, threshold: float = 0.5
                 ) -> tuple[dict[str, str], pd.DataFrame, np.ndarray, np.ndarray]:
    """(metadata, point-metrics table, V01, V01 lengths) of one score file.

    The table's groups are in order of appearance and carry ``real_set`` and
    ``fake_set``. V01 (uint16, ``V01_SCALE`` = 1) concatenates, in table order, each
    group's placement values in canonical real order (``real_sets``) for groups whose
    share (condition and real set) holds two or more groups with fakes and reals; the
    other groups have length 0.
    """
    meta, df = read_scores(path)
    try:
        seed = int(meta["seed"])
    except ValueError:
        raise DataError(f"{path}: metadata 'seed' is not an integer: "
                         f"{meta['seed']!r}") from None
    cats = [df[c].cat for c in ("generator", "perturbation", "level")]
    code = np.zeros(len(df), np.int64)
    for c in cats:
        code = code * len(c.categories) + c.codes.to_numpy()
    present = np.bincount(code) > 0 if len(code) else np.zeros(0, bool)
    dense = (np.cumsum(present) - 1)[code]
    labels = df["label"].to_numpy()
    m = group_metrics(dense, labels, df["p_fake"].to_numpy(), threshold)
    first = m.pop("first")
    cal = pd.DataFrame(m.pop("cal"), columns=CAL_COLUMNS)
    real_set, real_order = real_sets(dense, labels, df["sha1"].array)
    fake_set = fake_sets(dense, labels, df["sha1"].array)
    v01 = np.rint(m.pop("v01")[real_order] * V01_SCALE)
    del df
    table = pd.DataFrame({"detector": meta["detector"], "train": meta["train"], "seed": seed,
                          **{k: np.asarray(c.categories.astype(str))[c.codes.to_numpy()[first]]
                             for k, c in zip(["test", "perturbation", "level"], cats,
                                             strict=True)},
                          **{k: m[k] for k in POINT_COLUMNS}, "real_set": real_set,
                          "fake_set": fake_set},
                         index=range(len(first)))
    table = pd.concat([table, cal], axis=1)
    # keep V01 of groups whose share holds two or more groups with an AUC
    n_real = table["n_real"].to_numpy()
    stop = np.cumsum(n_real)
    start = stop - n_real
    has_auc = ~np.isnan(table["auc"].to_numpy())
    share = table.groupby(["perturbation", "level", "real_set"], sort=False).ngroup().to_numpy()
    keep = has_auc & (np.bincount(share, weights=has_auc)[share] >= 2)
    order = np.argsort(first, kind="stable")
    lengths = np.where(keep, n_real, 0)[order]
    take = np.concatenate([np.arange(start[i], stop[i]) for i in order if keep[i]]
                          or [np.zeros(0, np.int64)])
    return meta, table.iloc[order].reset_index(drop=True), v01[take].astype(np.uint16), lengths


# -- intervals ----------------------------------------------------------------------------

def _z(confidence: float) -> float:
    return float(stats.norm.ppf(0.5 + confidence / 2))


def _binomial_ppf(n: int, p: float, u: np.ndarray) -> np.ndarray:
    """The inverse CDF of Binomial(n, p) at ``u``: the CDF is evaluated only between the
    (continuous) quantiles of min(u) and max(u), two counts wider."""
    if n <= 0 or p <= 0 or len(u) == 0:
        return np.zeros(len(u), np.int32)
    if p >= 1:
        return np.full(len(u), n, np.int32)
    ends = special.bdtrik(np.array([u.min(), u.max()]), n, p)
    lo = max(0, int(np.floor(ends[0])) - 2) if np.isfinite(ends[0]) else 0
    hi = min(n, int(np.ceil(ends[1])) + 2) if np.isfinite(ends[1]) else n
    cdf = special.bdtr(np.arange(lo, hi + 1), n, p)
    return (lo + np.minimum(np.searchsorted(cdf, u), hi - lo)).astype(np.int32)


def share_keys(table: pd.DataFrame) -> list[tuple]:
    """Each group's share: (detector, train, seed, perturbation, level, real_set).

    Without a ``real_set`` column every group is a share of its own.
    """
    if "real_set" in table.columns:
        return list(table[SHARE_KEYS].itertuples(index=False, name=None))
    return [("own", *key) for key in table[KEYS].itertuples(index=False, name=None)]


def image_keys(table: pd.DataFrame, side: str) -> list[tuple]:
    """Each group's block of ``side`` ("fake" or "real") images: (side, ``<side>_set``,
    perturbation, level), the same for every cell that scored those images under that
    condition. Without the column, or for a set of "", the group's own block (side,
    "own", *group key).
    """
    keys = list(table[KEYS].itertuples(index=False, name=None))
    col = f"{side}_set"
    sets = table[col].tolist() if col in table.columns else [""] * len(keys)
    return [(side, name, key[4], key[5]) if name else (side, "own", *key)
            for key, name in zip(keys, sets, strict=True)]


def draw_counts(table: pd.DataFrame, resamples: int, seed: int = 42
                ) -> tuple[np.ndarray, np.ndarray]:
    """Stratified bootstrap draws of (tp, tn): int32 arrays [groups, resamples].

    tp* is the inverse Binomial(n_fake, tp / n_fake) CDF of uniforms seeded by (seed,
    the group's block of fakes), tn* likewise with (seed, its block of reals), blocks as
    in ``image_keys``: the groups that score the same images under one condition (the
    test sets of a cell for the reals; every cell, of any detector, training generator
    or seed) draw comonotone counts, identical ones for equal counts. A group's draws
    depend only on its own row, not on the other rows of ``table``.
    """
    G = len(table)
    out = {side: np.zeros((G, resamples), np.int32) for side in ("fake", "real")}
    uniforms: dict[tuple, np.ndarray] = {}
    drawn: dict[tuple, np.ndarray] = {}
    for side, count in (("fake", "tp"), ("real", "tn")):
        ns, ks = table[f"n_{side}"].to_numpy(), table[count].to_numpy()
        for i, block in enumerate(image_keys(table, side)):
            n, k = int(ns[i]), int(ks[i])
            if block not in uniforms:
                uniforms[block] = np.random.default_rng(
                    derive_seed(seed, *block)).random(resamples)
            if (block, n, k) not in drawn:
                drawn[block, n, k] = _binomial_ppf(n, k / n if n else 0.0, uniforms[block])
            out[side][i] = drawn[block, n, k]
    return out["fake"], out["real"]


def add_intervals(table: pd.DataFrame, tp_draws: np.ndarray, tn_draws: np.ndarray,
                  confidence: float = 0.95) -> pd.DataFrame:
    """``table`` with ``<m>_lo``, ``<m>_hi`` for every metric of ``INTERVAL_METRICS``."""
    out = table.copy()
    n_fake = table["n_fake"].to_numpy(float)[:, None]
    n_real = table["n_real"].to_numpy(float)[:, None]
    q = [50 * (1 - confidence), 50 * (1 + confidence)]
    for m in COUNT_METRICS:
        if tp_draws.shape[1]:
            draws = count_metric(m, tp_draws, tn_draws, n_fake, n_real)
            lo, hi = np.percentile(draws, q, axis=1)
        else:
            lo = hi = np.full(len(table), np.nan)
        out[f"{m}_lo"], out[f"{m}_hi"] = lo, hi
    half = _z(confidence) * np.sqrt(table["auc_var"].to_numpy(float))
    out["auc_lo"] = np.clip(table["auc"] - half, 0, 1)
    out["auc_hi"] = np.clip(table["auc"] + half, 0, 1)
    return out


def load_draws(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of a ``bootstrap.npz``, read into memory once."""
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _real_block_sd(members: np.ndarray, var_real: np.ndarray, table: pd.DataFrame,
                   share: np.ndarray, draws: Mapping[str, np.ndarray]) -> float:
    """sd of the real-image part of the summed AUCs of ``members`` (one block of reals):
    exact (V01 aligned by image) over the groups with V01, plus the sd of each other."""
    n = int(table["n_real"].iloc[members[0]])
    start = draws.get("v01_start")
    lengths = (start[members + 1] - start[members] if start is not None
               else np.zeros(len(members), np.int64))
    _, inverse, counts = np.unique(share[members], return_inverse=True, return_counts=True)
    wrong = ((lengths != 0) & (lengths != n)) | ((counts[inverse] > 1) & (lengths != n))
    if wrong.any():
        raise ValueError(f"draws lack V01 of group(s) {members[wrong].tolist()} that share "
                         "their reals: not the draws of this table?")
    have = lengths == n
    if have.sum() >= 2:
        total = np.zeros(n, np.int64)
        for i in members[have]:
            total += draws["v01"][start[i]:start[i + 1]]
        sd = float(np.sqrt(np.var(total / V01_SCALE, ddof=1) / n))
    else:
        sd = float(np.sqrt(var_real[have]).sum())
    return sd + float(np.sqrt(var_real[~have]).sum())


def _auc_sum_variance(rows: np.ndarray, table: pd.DataFrame, blocks: np.ndarray,
                      draws: Mapping[str, np.ndarray]) -> tuple[float, int]:
    """(a variance of the sum of the AUCs at ``rows``, how many count).

    ``blocks`` [groups, 3]: block of fakes, block of reals, share. The blocks are
    independent; within a block of fakes the sds add (perfect correlation, a bound),
    within a block of reals the V01 give the covariance (``_real_block_sd``).
    """
    var = table["auc_var"].to_numpy(float)[rows]
    ok = ~np.isnan(var)
    rows, var = rows[ok], var[ok]
    if not len(rows):
        return 0.0, 0
    var_fake = table["auc_var_fake"].to_numpy(float)[rows]
    var_real = np.maximum(var - var_fake, 0.0)
    _, inverse = np.unique(blocks[rows, 0], return_inverse=True)
    total = float((np.bincount(inverse, weights=np.sqrt(var_fake)) ** 2).sum())
    _, inverse, counts = np.unique(blocks[rows, 1], return_inverse=True, return_counts=True)
    total += float(var_real[counts[inverse] == 1].sum())
    for c in np.flatnonzero(counts > 1):
        at = np.flatnonzero(inverse == c)
        total += _real_block_sd(rows[at], var_real[at], table, blocks[:, 2], draws) ** 2
    return total, len(rows)


def _block_ids(table: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """[groups, 3] ids (block of fakes, block of reals, share) of the groups at ``rows``
    (-1 elsewhere), as ``image_keys`` and ``share_keys``; without the set columns every
    group is its own block and share."""
    at = np.unique(rows)
    ids = np.full((len(table), 3), -1, np.int64)
    ids[at] = len(table) + at[:, None]  # own block: a number no factorized id reaches
    part = table.iloc[at]
    for j, col in enumerate(("fake_set", "real_set")):
        if col in table.columns:
            keys = part[[col, "perturbation", "level"]].astype(str).agg("\x1f".join, axis=1)
            named = (part[col] != "").to_numpy()
            ids[at[named], j] = keys[named].factorize()[0]
    if "real_set" in table.columns:
        ids[at, 2] = pd.Series(share_keys(part), dtype=object).factorize()[0]
    return ids


def mean_interval(draws: Mapping[str, np.ndarray], rows: np.ndarray, table: pd.DataFrame,
                  metric: str, confidence: float = 0.95
                  ) -> tuple[float, float, float] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point, lo, hi) of the mean of ``metric`` over the groups at positions ``rows``.

    ``draws``: ``load_draws("bootstrap.npz")`` of the run that wrote ``table`` (count
    metrics read ``tp``, ``tn``; ``auc`` reads ``v01``, ``v01_start``). ``rows`` indexes
    ``table``'s rows and the draws (positions, not labels). A 1-D ``rows`` gives floats;
    a 2-D one [means, k] gives arrays, one mean per line. Count metrics: the percentile
    interval of the per-draw means (``draw_counts`` couples the draws of groups that
    score the same images). ``auc``: mean AUC +- z sqrt(var) / k, clipped to [0, 1], var
    of the sum as in the module's docstring. NaN groups are skipped, as pandas' mean does.
    """
    rows = np.asarray(rows, dtype=np.int64)
    point = np.nanmean(table[metric].to_numpy(float)[rows], axis=-1)
    if metric == "auc":
        blocks = _block_ids(table, rows)
        var, k = np.zeros(rows.shape[:-1]), np.zeros(rows.shape[:-1], np.int64)
        for line in np.ndindex(rows.shape[:-1]):
            var[line], k[line] = _auc_sum_variance(rows[line], table, blocks, draws)
        with np.errstate(divide="ignore", invalid="ignore"):
            half = _z(confidence) * np.sqrt(var) / k
        lo, hi = np.clip(point - half, 0, 1), np.clip(point + half, 0, 1)
    else:
        n_fake = table["n_fake"].to_numpy(float)[rows][..., None]
        n_real = table["n_real"].to_numpy(float)[rows][..., None]
        draws_tp, draws_tn = draws["tp"], draws["tn"]
        values = count_metric(metric, draws_tp[rows], draws_tn[rows], n_fake, n_real)
        means = np.nanmean(values, axis=-2)
        lo, hi = np.percentile(means, [50 * (1 - confidence), 50 * (1 + confidence)], axis=-1)
    if rows.ndim == 1:
        return float(point), float(lo), float(hi)
    return point, lo, hi


# -- the metrics step ---------------------------------------------------------------------

def run_metrics(score_paths: Sequence[str | os.PathLike], out_parquet: str | os.PathLike,
                threshold: float = 0.5, resamples: int = 1000, confidence: float = 0.95,
                seed: int = 42) -> pd.DataFrame:
    """Metrics with intervals of every group of ``score_paths``, read one file at a time.

    Writes ``out_parquet`` (metadata: detector_labels, threshold, resamples, confidence,
    seed), the same table as csv beside it, and ``bootstrap.npz`` beside it, aligned with
    the table's rows: ``tp``, ``tn`` (int32 [groups, resamples]), ``v01`` (uint16, V01 *
    ``V01_SCALE``, see ``file_metrics``) and ``v01_start`` (int64 [groups + 1]: group i's
    V01 is ``v01[v01_start[i]:v01_start[i + 1]]``), plus ``resamples``, ``confidence``,
    ``seed``, ``threshold``, ``v01_scale``. Returns the table.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tables, labels, cells, v01s, lengths = [], {}, {}, [], []
    for path in score_paths:
        meta, t, v01, length = file_metrics(path, threshold)
        cell = (meta["detector"], meta["train"], int(meta["seed"]))
        if cell in cells:
            raise DataError(f"{path} and {cells[cell]} both hold detector "
                             f"{cell[0]!r}, train {cell[1]!r}, seed {cell[2]}: one file a cell")
        cells[cell] = path
        labels[meta["detector"]] = meta.get("detector_label", meta["detector"])
        tables.append(t)
        v01s.append(v01)
        lengths.append(length)
        log.info("%s: %d groups", path, len(t))
    table = (pd.concat(tables, ignore_index=True) if tables
             else pd.DataFrame(columns=[*KEYS, *POINT_COLUMNS, "real_set", "fake_set",
                                        *CAL_COLUMNS]))
    del tables
    tp_d, tn_d = draw_counts(table, resamples, seed)
    table = add_intervals(table, tp_d, tn_d, confidence)
    v01 = np.concatenate(v01s) if v01s else np.zeros(0, np.uint16)
    del v01s
    start = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64) \
        if lengths else np.zeros(1, np.int64)

    out = Path(out_parquet)
    with atomic_path(out.with_name("bootstrap.npz")) as tmp, open(tmp, "wb") as f:
        np.savez(f, tp=tp_d, tn=tn_d, v01=v01, v01_start=start, resamples=resamples,
                 confidence=confidence, seed=seed, threshold=threshold, v01_scale=V01_SCALE)
    with atomic_path(out.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    info = {"detector_labels": json.dumps(labels), "threshold": threshold,
            "resamples": resamples, "confidence": confidence, "seed": seed}
    arrow = arrow.replace_schema_metadata(
        {**(arrow.schema.metadata or {}), **{k.encode(): str(v).encode() for k, v in info.items()}})
    with atomic_path(out) as tmp:
        pq.write_table(arrow, tmp)
    return table
