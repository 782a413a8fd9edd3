"""The paper's tables from the long metrics table, in csv, Markdown and LaTeX.

Means of a row are labelled by what they average:

- ``mean (unseen)``: every test generator except the training one;
- ``mean (all)``: every test generator, the seen one included;
- ``mean (unseen, train sets)`` and ``mean (all, train sets)``: the same over the test
  sets of the *training* generators only. The paper's headline (93.41 %) is the
  latter over its seven sets, the seen one included; over the six unseen it is 92.45 %.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

UNSEEN, ALL = "mean (unseen)", "mean (all)"
UNSEEN_T, ALL_T = "mean (unseen, train sets)", "mean (all, train sets)"
MEANS = (UNSEEN, ALL, UNSEEN_T, ALL_T)
_LATEX = str.maketrans({c: "\\" + c for c in "%&_#$"})


def write_table(df: pd.DataFrame, out_dir: str | os.PathLike, name: str, caption: str,
                index: bool = True) -> list[Path]:
    """Write ``name``.csv, .md and .tex; the Markdown and LaTeX carry the caption."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.{ext}" for ext in ("csv", "md", "tex")]
    df.to_csv(paths[0], index=index, float_format="%.4f")
    shown = df.round(2)
    paths[1].write_text(f"**{caption}**\n\n{shown.to_markdown(index=index)}\n")
    paths[2].write_text(shown.to_latex(index=index, caption=caption.translate(_LATEX),
                                       label=f"tab:{name}", float_format="%.2f", escape=True))
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
    tests = list(mat.columns)
    train_sets = [c for c in tests if c in train]
    mat[UNSEEN] = [mat.loc[g, [c for c in tests if c != g]].mean() for g in mat.index]
    mat[ALL] = mat[tests].mean(axis=1)
    if train_sets != tests:
        mat[UNSEEN_T] = [mat.loc[g, [c for c in train_sets if c != g]].mean() for g in mat.index]
        mat[ALL_T] = mat[train_sets].mean(axis=1)
    mat.index.name = "train \\ test"
    return mat


def detector_summary(metrics: pd.DataFrame, labels: dict[str, str],
                     train: Sequence[str] = ()) -> pd.DataFrame:
    """Detectors side by side: clean-image metrics (in %) averaged over the matrix cells."""
    m = clean(metrics).copy()
    m["seen"] = m["train"] == m["test"]
    m["train_set"] = m["test"].isin(list(train))
    rows = []
    for det, g in m.groupby("detector", sort=False):
        row = {"detector": labels.get(det, det),
               f"accuracy {UNSEEN}": g.loc[~g["seen"], "accuracy"].mean() * 100,
               f"accuracy {ALL}": g["accuracy"].mean() * 100,
               "accuracy (seen)": g.loc[g["seen"], "accuracy"].mean() * 100}
        if train and not g["train_set"].all():
            t = g[g["train_set"]]
            row[f"accuracy {UNSEEN_T}"] = t.loc[~t["seen"], "accuracy"].mean() * 100
            row[f"accuracy {ALL_T}"] = t["accuracy"].mean() * 100
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
    paths += write_table(detector_summary(metrics, labels, train), out_dir, "detectors",
                         f"Detectors side by side, clean images, means over train x test "
                         f"cells (%).{suffix}")
    paths += write_table(robustness(metrics, labels), out_dir, "robustness",
                         f"Robustness: mean accuracy and AUC (%) over every train x test "
                         f"cell, per perturbation and level.{suffix}")
    return paths
