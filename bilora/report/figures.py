"""Figures: a train x test accuracy heatmap per detector, robustness curves."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bilora.report.tables import MEANS, accuracy_matrix  # noqa: E402


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.{ext}" for ext in ("png", "pdf")]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


def heatmap(metrics: pd.DataFrame, detector: str, train: Sequence[str], test: Sequence[str],
            title: str, out_dir: str | os.PathLike) -> list[Path]:
    mat = accuracy_matrix(metrics, detector, train, test)
    mat = mat.drop(columns=[c for c in MEANS if c in mat.columns])
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * mat.shape[1], 1.2 + 0.5 * mat.shape[0]))
    im = ax.imshow(mat.to_numpy(), vmin=50, vmax=100, cmap="viridis")
    ax.set_xticks(range(mat.shape[1]), mat.columns, rotation=45, ha="right")
    ax.set_yticks(range(mat.shape[0]), mat.index)
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            v = mat.iat[i, j]
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if v < 80 else "black")
    ax.set_xlabel("test generator")
    ax.set_ylabel("training generator")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    return _save(fig, Path(out_dir), f"heatmap_{detector}")


def robustness_curves(metrics: pd.DataFrame, labels: dict[str, str],
                      out_dir: str | os.PathLike, note: str = "") -> list[Path]:
    """Mean accuracy vs level, one panel per perturbation, one line per detector."""
    from bilora.data.perturbations import KINDS

    present = set(metrics["perturbation"])
    kinds = [k for k in KINDS if k in present and k != "none"]
    if not kinds:
        return []
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.2 * len(kinds), 3), squeeze=False)
    means = metrics.groupby(["detector", "perturbation", "level"], sort=False)["accuracy"].mean()
    clean = metrics[metrics["perturbation"] == "none"].groupby("detector")["accuracy"].mean()
    for ax, kind in zip(axes[0], kinds, strict=True):
        for det in metrics["detector"].unique():
            if (det, kind) not in means.droplevel("level").index:
                continue
            s = means.loc[det, kind]
            ax.plot(range(len(s)), s.to_numpy() * 100, marker="o", label=labels.get(det, det))
            ax.set_xticks(range(len(s)), s.index)
            if det in clean.index:
                ax.axhline(clean[det] * 100, ls=":", lw=0.8, color=ax.lines[-1].get_color())
        ax.set_title(kind)
        ax.set_xlabel("level")
        ax.set_ylim(40, 101)
    axes[0][0].set_ylabel("mean accuracy (%)")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=8,
               bbox_to_anchor=(0.5, -0.12), frameon=False)
    fig.suptitle((note + "\n" if note else "") + "dotted: accuracy on clean images", fontsize=8,
                 y=1.04)
    return _save(fig, Path(out_dir), "robustness")
