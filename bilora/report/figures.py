"""Figures (png and pdf) drawn from the tables' numbers: an accuracy heatmap per detector,
robustness curves, the ablation sweep."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bilora.report.context import PERTURBATIONS  # noqa: E402

EXTS = ("png", "pdf")


def _save(fig: Any, out_dir: str | os.PathLike, name: str) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.{ext}" for ext in EXTS]
    # the tight box once for both formats ("tight" would lay the figure out twice per file)
    box = fig.get_tightbbox(fig.canvas.get_renderer()).padded(0.1)
    for p in paths:
        fig.savefig(p, dpi=120, bbox_inches=box)
    plt.close(fig)
    return paths


def heatmap(cells: pd.DataFrame, detector: str, title: str, train: Sequence[str],
            test: Sequence[str], out_dir: str | os.PathLike) -> list[Path]:
    """Train x test accuracy (%) from a matrix table's test cells (mean over seeds)."""
    mat = (cells.pivot(index="train", columns="column", values="value")
           .reindex(index=list(train), columns=list(test)))
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * mat.shape[1], 1.4 + 0.45 * mat.shape[0]))
    values = mat.to_numpy(float)
    im = ax.imshow(np.ma.masked_invalid(values), vmin=50, vmax=100, cmap="viridis")
    im.set_cmap(im.cmap.with_extremes(bad="lightgrey"))
    ax.set_xticks(range(mat.shape[1]), mat.columns, rotation=45, ha="right")
    ax.set_yticks(range(mat.shape[0]), mat.index)
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            v = values[i, j]
            ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.0f}", ha="center", va="center",
                    fontsize=7, color="black" if np.isnan(v) or v >= 80 else "white")
    ax.set_xlabel("test generator")
    ax.set_ylabel("training generator")
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, label="accuracy (%), clean images")
    return _save(fig, out_dir, f"heatmap_{detector}")


def robustness(curves: pd.DataFrame, labels: dict[str, str], title: str,
               out_dir: str | os.PathLike) -> list[Path]:
    """Accuracy vs level, one panel per perturbation, one line per detector, error bars.

    ``curves``: rows of a robustness table (detector, perturbation, level, value, lo, hi).
    """
    kinds = [k for k in dict.fromkeys(curves["perturbation"]) if k != "none"]
    ncols = min(4, max(1, len(kinds)))
    nrows = -(-max(1, len(kinds)) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.9 * ncols, 2.7 * nrows), squeeze=False,
                             sharey=True)
    flat = list(axes.flat)
    for ax in flat[len(kinds):]:
        ax.set_axis_off()
    if not kinds:
        flat[0].text(0.5, 0.5, "no perturbation in this run", ha="center", va="center")
    dets = [d for d in labels if d in set(curves["detector"])]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    low = np.nanmin(np.r_[curves["lo"].to_numpy(float), curves["value"].to_numpy(float), 40.0])
    for ax, kind in zip(flat, kinds, strict=False):
        for n, det in enumerate(dets):
            c = colors[n % len(colors)]
            s = curves[(curves["detector"] == det) & (curves["perturbation"] == kind)]
            x = np.arange(len(s))
            y, lo, hi = (s[k].to_numpy(float) for k in ("value", "lo", "hi"))
            # a percentile interval of discrete draws can end a hair inside its point
            err = np.clip(np.nan_to_num(np.vstack([y - lo, hi - y])), 0, None)
            ax.errorbar(x + 0.06 * (n - (len(dets) - 1) / 2), y, yerr=err, marker="o", ms=3,
                        capsize=2, color=c, label=labels[det])
            ax.set_xticks(x, [str(v) for v in s["level"]], fontsize=7)
            ax.set_xlim(-0.5, len(s) - 0.5)
            clean = curves[(curves["detector"] == det) & (curves["perturbation"] == "none")]
            if len(clean) and not np.isnan(clean["value"].iloc[0]):
                ax.axhline(clean["value"].iloc[0], ls=":", lw=0.8, color=c)
        head, what = PERTURBATIONS.get(kind, (kind, "level"))
        ax.set_title(head, fontsize=9)
        ax.set_xlabel(what or "level", fontsize=6)
        ax.set_ylim(max(0.0, min(40.0, low - 2)), 101)
    for row in axes:
        row[0].set_ylabel("mean accuracy (%)", fontsize=8)
    handles, names = flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="upper center", fontsize=7, bbox_to_anchor=(0.5, 0.0),
                   ncol=min(3, len(names)), frameon=False)
    fig.tight_layout()
    fig.suptitle(title, fontsize=7, y=1.0 + 0.03 * (title.count("\n") + 1))
    return _save(fig, out_dir, "robustness")


def _count(n: int | None) -> str:
    if n is None:
        return "n/a"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def ablation(sweeps: list[dict[str, Any]], labels: dict[str, str], title: str,
             out_dir: str | os.PathLike) -> list[Path]:
    """Swept value vs mean unseen accuracy with error bars, one panel per swept key,
    each point annotated with its trainable-parameter count."""
    from bilora.report.tables import numeric, value_text

    fig, axes = plt.subplots(1, len(sweeps), figsize=(3.4 * len(sweeps), 3.0), squeeze=False)
    for ax, s in zip(axes[0], sweeps, strict=True):
        pts = [p for p in s["points"] if p["known"]]
        base = [p for p in s["points"] if p["is_base"]][0]
        values = [p["value"] for p in pts]
        xs = np.asarray(values, float) if numeric(values) else np.arange(len(pts), dtype=float)
        if numeric(values) and min(xs) > 0 and max(xs) / min(xs) >= 8:
            ax.set_xscale("log", base=2)
        for x, p in zip(xs, pts, strict=True):
            e = p["est"]
            if not e.ok:
                ax.annotate("not run", (x, 50), fontsize=6, ha="center")
                continue
            yerr = ([[max(0.0, e.value - e.lo)], [max(0.0, e.hi - e.value)]] if e.has_interval
                    else None)
            ax.errorbar([x], [e.value], yerr=yerr, marker="*" if p["is_base"] else "o",
                        ms=8 if p["is_base"] else 4, capsize=2, color="C0")
            par = p["parameters"]
            ax.annotate(_count(par["trainable"] if par else None), (x, e.value),
                        textcoords="offset points", xytext=(4, 4), fontsize=6)
        if numeric(values):
            ax.set_xticks(xs, [value_text(v) for v in values])
        else:
            ax.set_xticks(xs, [value_text(v) for v in values], rotation=30, ha="right")
            ax.set_xlim(-0.5, len(xs) - 0.5)
        if not base["known"] and base["est"].ok:
            ax.axhline(base["est"].value, ls="--", lw=0.8, color="grey",
                       label=f"base ({_count((base['parameters'] or {}).get('trainable'))})")
            ax.legend(fontsize=6, frameon=False)
        ax.set_xlabel(s["key"])
        ax.set_title(labels.get(s["base"], s["base"]), fontsize=8)
        ax.set_ylim(40, 101)
    axes[0][0].set_ylabel("mean (unseen) accuracy (%)")
    fig.suptitle(title, fontsize=7, y=1.02 + 0.03 * title.count("\n"))
    return _save(fig, out_dir, "ablation")
