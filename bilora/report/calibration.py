"""Calibration and answers of every trained model (the caption error analysis): the
``calibration`` table and figure, from the metrics' per-bin counts (no model, no scores).

Per detector, training generator and seed, on clean images of every test set pooled (a real
set shared by k test sets counts k times): the answers (said fake, said real, neither
caption word), the expected calibration error of P(fake) over ``CAL_BINS`` equal-width bins
(the bin-weighted gap between the share of fakes and the mean score) and the Brier score.
The figure pools each detector's clean cells: its reliability diagram (share of fakes vs
mean score per bin, the diagonal is perfect calibration) above its score histogram per class.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bilora.metrics import CAL_BINS, CAL_COLUMNS
from bilora.report.context import Context
from bilora.report.layout import Column, Table
from bilora.report.tables import clean_groups, trained_models

NAME = "calibration"
STALE = ("metrics.parquet holds no calibration bins (computed before they existed): "
         "`snakemake --forcerun compute_metrics` fills them in")


def pooled(rows: pd.DataFrame) -> dict[str, Any]:
    """Answers, ECE and Brier of a set of metrics groups pooled, and their bins."""
    bins = rows[CAL_COLUMNS].to_numpy(float).sum(0).reshape(3, CAL_BINS)
    fake, real, psum = bins
    answered = fake.sum() + real.sum()
    said_fake = int((rows["tp"] + rows["fp"]).sum())
    n, other = int(rows["n"].sum()), int(rows["unlabelled"].sum())
    brier = float((rows["brier"] * (rows["n"] - rows["unlabelled"])).sum() / answered) \
        if answered else float("nan")
    return {"n": n, "said_fake": said_fake, "said_real": n - other - said_fake,
            "other": other, "ece": float(np.abs(fake - psum).sum() / answered)
            if answered else float("nan"), "brier": brier,
            "fake": fake, "real": real, "psum": psum}


def calibration(ctx: Context) -> Table:
    """One row per trained model: its answers, ECE and Brier score on clean images."""
    stale = not set(CAL_COLUMNS) <= set(ctx.results.table.columns)
    rows, data = [], []
    for det, label, g, seed, c in trained_models(ctx):
        if not len(c) or stale:
            rows.append([label, g, str(seed), "not run" if not len(c) else "n/a",
                         "", "", "", "", ""])
            data.append({"detector": det, "label": label, "train": g, "seed": seed})
            continue
        p = pooled(c)
        rows.append([label, g, str(seed), f"{p['said_fake']:,}", f"{p['said_real']:,}",
                     f"{p['other']:,}", f"{p['n']:,}", f"{p['ece']:.3f}",
                     f"{p['brier']:.3f}"])
        data.append({"detector": det, "label": label, "train": g, "seed": seed,
                     **{k: p[k] for k in ("said_fake", "said_real", "other", "n",
                                          "ece", "brier")}})
    frame = pd.DataFrame(data)
    columns = [Column("detector", align="l"), Column("train", align="l"),
               Column("seed", align="l"), Column("said fake", align="r"),
               Column("said real", align="r"), Column("neither", align="r"),
               Column("images", align="r"), Column("ECE", align="r"),
               Column("Brier", align="r")]
    caption = [f"Answers and calibration of P(fake) per trained model, clean images of every "
               f"test set pooled (a real image shared by k test sets counts k times). Said "
               f"fake: P(fake) >= {ctx.spec['threshold']}; neither: the generated word was "
               f"neither caption word (the generate readout). ECE: expected calibration error over "
               f"{CAL_BINS} equal-width bins of P(fake), sum over bins of |fakes - sum of "
               "scores| / answered images (0: calibrated); Brier: mean (P(fake) - label)^2. "
               "figures/calibration shows the bins."
               + (f" {STALE}." if stale else ""), *ctx.common(NAME)]
    return Table(NAME, "Answers and calibration per trained model, clean images.", caption,
                 columns, rows, frame, formats=("csv", "md"))


def calibration_figure(ctx: Context, title: str, out_dir: str | os.PathLike) -> list[Path]:
    """Per detector: the reliability diagram above the score histogram per class."""
    import matplotlib.pyplot as plt

    from bilora.report.figures import _save

    clean = clean_groups(ctx)
    dets = list(ctx.labels)
    fig, axes = plt.subplots(2, len(dets), figsize=(2.8 * len(dets), 5.0), squeeze=False,
                             sharex=True)
    edges = np.linspace(0, 1, CAL_BINS + 1)
    mids = (edges[:-1] + edges[1:]) / 2
    for j, det in enumerate(dets):
        top, bottom = axes[0][j], axes[1][j]
        top.set_title(textwrap.fill(ctx.labels[det], 34), fontsize=7)
        c = clean[clean["detector"] == det]
        if not len(c) or not set(CAL_COLUMNS) <= set(c.columns):
            top.annotate("not run" if not len(c) else "no bins", (0.5, 0.5), ha="center",
                         fontsize=7)
            continue
        p = pooled(c)
        count = p["fake"] + p["real"]
        has = count > 0
        top.plot([0, 1], [0, 1], ls=":", lw=0.8, color="grey")
        top.plot((p["psum"][has] / count[has]), p["fake"][has] / count[has], marker="o",
                 ms=3, color="C0")
        top.set_ylim(0, 1)
        top.annotate(f"ECE {p['ece']:.3f}", (0.03, 0.9), fontsize=7)
        for side, colour in (("real", "C2"), ("fake", "C3")):
            share = p[side] / max(p[side].sum(), 1)
            bottom.bar(mids, share, width=1 / CAL_BINS, alpha=0.5, color=colour, label=side)
        bottom.set_xlabel("P(fake)", fontsize=7)
        bottom.set_xlim(0, 1)
    axes[0][0].set_ylabel("share of fakes", fontsize=7)
    axes[1][0].set_ylabel("share of the class", fontsize=7)
    axes[1][0].legend(fontsize=6, frameon=False)
    fig.suptitle(title, fontsize=7, y=1.02 + 0.03 * title.count("\n"))
    return _save(fig, out_dir, NAME)
