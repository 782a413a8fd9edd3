"""The paper's tables from the long metrics table, in csv, Markdown and LaTeX.

Means are reported twice and labelled: over the *unseen* test sets (test
generator differs from the training one) and over *all* test sets (the seen one
included; the paper's headline 93.41 % is of this kind, over its seven sets).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

UNSEEN, ALL = "mean (unseen)", "mean (all)"


def write_table(df: pd.DataFrame, out_dir: str | os.PathLike, name: str, caption: str,
                index: bool = True) -> list[Path]:
    """Write ``name``.csv, .md and .tex; the Markdown and LaTeX carry the caption."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.{ext}" for ext in ("csv", "md", "tex")]
    df.to_csv(paths[0], index=index, float_format="%.4f")
    shown = df.round(2)
    paths[1].write_text(f"**{caption}**\n\n{shown.to_markdown(index=index)}\n")
    paths[2].write_text(shown.to_latex(index=index, caption=caption, label=f"tab:{name}",
                                       float_format="%.2f", escape=True))
    return paths


def clean(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics[metrics["perturbation"] == "none"]


def accuracy_matrix(metrics: pd.DataFrame, detector: str, train: Sequence[str],
                    test: Sequence[str], metric: str = "accuracy") -> pd.DataFrame:
    """Train x test matrix (in %) of one detector on clean images, with both means."""
    m = clean(metrics)
    m = m[m["detector"] == detector]
    mat = m.pivot_table(index="train", columns="test", values=metric, aggfunc="first")
    mat = mat.reindex(index=[g for g in train if g in mat.index],
                      columns=[g for g in test if g in mat.columns]) * 100
    unseen = [mat.loc[g, [c for c in mat.columns if c != g]].mean() for g in mat.index]
    mat[UNSEEN] = unseen
    mat[ALL] = mat[[c for c in mat.columns if c not in (UNSEEN, ALL)]].mean(axis=1)
    mat.index.name = "train \\ test"
    return mat


def detector_summary(metrics: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """Detectors side by side: clean-image metrics (in %) averaged over the matrix cells."""
    m = clean(metrics).copy()
    m["seen"] = m["train"] == m["test"]
    rows = []
    for det, g in m.groupby("detector", sort=False):
        row = {"detector": labels.get(det, det),
               f"accuracy {UNSEEN}": g.loc[~g["seen"], "accuracy"].mean() * 100,
               f"accuracy {ALL}": g["accuracy"].mean() * 100,
               "accuracy (seen)": g.loc[g["seen"], "accuracy"].mean() * 100}
        for k in ("f1", "auc", "auc_hard", "ap", "pd@5%", "pd@1%"):
            row[f"{k} {ALL}"] = g[k].mean() * 100
        rows.append(row)
    return pd.DataFrame(rows).set_index("detector")


def robustness(metrics: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """Mean accuracy and AUC (in %) over all cells, per detector x perturbation x level."""
    g = metrics.groupby(["detector", "perturbation", "level"], sort=False)
    out = g[["accuracy", "auc"]].mean().mul(100).reset_index()
    out["detector"] = out["detector"].map(lambda d: labels.get(d, d))
    return out.set_index(["detector", "perturbation", "level"])


def render_tables(metrics: pd.DataFrame, out_dir: str | os.PathLike, train: Sequence[str],
                  test: Sequence[str], labels: dict[str, str], note: str = "") -> list[Path]:
    """Every table of the report; returns the files written."""
    suffix = f" {note}" if note else ""
    paths = []
    for det in metrics["detector"].unique():
        mat = accuracy_matrix(metrics, det, train, test)
        paths += write_table(mat, out_dir, f"accuracy_matrix_{det}",
                             f"{labels.get(det, det)}: accuracy (%) by training (rows) and "
                             f"test (columns) generator, clean images.{suffix}")
    paths += write_table(detector_summary(metrics, labels), out_dir, "detectors",
                         f"Detectors side by side, clean images, means over train x test "
                         f"cells (%).{suffix}")
    paths += write_table(robustness(metrics, labels), out_dir, "robustness",
                         f"Robustness: mean accuracy and AUC (%) over every train x test "
                         f"cell, per perturbation and level.{suffix}")
    return paths
