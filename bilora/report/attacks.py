"""The attack views: accuracy and AUC vs eps per detector and attack, evasion and framing
success, and the transfer matrix, from the attack jobs' per-image scores (no model).

Every number is a percentage of images with its interval and the number of images it rests
on: proportions with Wilson intervals, AUC with the Hanley-McNeil standard error. Images are
pooled over the attacked cells (training generators and seeds) and test sets of a detector,
each distinct image once per cell (a real shared by several test sets is not counted twice).
Evasion = the share of fakes called fake on the clean image that the attack turns to
``real``; framing = the same for reals turned to ``fake``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bilora.report.layout import Column, Est, Table

TABLES = ("attacks", "attack_transfer")
FIGURE = "attacks"
ATTACK_COLUMNS = ["detector", "attack", "eps", "post", "images",
                  *[f"{m}{s}" for m in ("accuracy", "auc") for s in ("", "_lo", "_hi")],
                  "evasion", "evasion_lo", "evasion_hi", "evasion_n",
                  "framing", "framing_lo", "framing_hi", "framing_n"]
TRANSFER_COLUMNS = ["source", "target", "attack", "eps", "images", "accuracy", "accuracy_lo",
                    "accuracy_hi"]
_CELL = re.compile(r"(?P<detector>[^/]+)/train=(?P<train>[^/]+)/seed=(?P<seed>\d+)/[^/]+/?$")


def output_names() -> tuple[list[str], list[str]]:
    """(table files, figure files) that :func:`render_attack_report` writes."""
    from bilora.report.figures import EXTS

    return ([f"{t}.{ext}" for t in TABLES for ext in ("csv", "md", "tex")],
            [f"{FIGURE}.{ext}" for ext in EXTS])


def _cell_of(path: str | os.PathLike) -> dict[str, Any]:
    m = _CELL.search(Path(path).as_posix())
    if not m:
        raise ValueError(f"{path}: not <detector>/train=<G>/seed=<S>/<file> (a cell's path)")
    return {"detector": m["detector"], "train": m["train"], "seed": int(m["seed"])}


def read_attacks(folders: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """Every attacked cell's scores, with its detector, training generator and seed."""
    from bilora.attacks.run import SCORES

    frames = [pd.read_parquet(Path(f) / SCORES).assign(**_cell_of(f))
              for f in folders]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_transfers(files: Sequence[str | os.PathLike]) -> pd.DataFrame:
    frames = []
    for f in files:
        cell = _cell_of(f)
        frames.append(pd.read_parquet(f).assign(train=cell["train"], seed=cell["seed"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def wilson(k: int, n: int, confidence: float) -> Est:
    """k of n in percent with its Wilson interval (missing when n is 0)."""
    from scipy.stats import binomtest

    if n == 0:
        return Est(float("nan"), missing="no images")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return Est(100 * k / n, 100 * ci.low, 100 * ci.high)


def auc_estimate(labels: np.ndarray, scores: np.ndarray, confidence: float) -> Est:
    """ROC AUC in percent with the Hanley-McNeil normal interval (missing with one class)."""
    from scipy.stats import norm
    from sklearn.metrics import roc_auc_score

    n1, n0 = int((labels == 1).sum()), int((labels == 0).sum())
    if n1 == 0 or n0 == 0:
        return Est(float("nan"), missing="one class")
    a = float(roc_auc_score(labels, scores))
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = np.sqrt(max(a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a), 0.0)
                 / (n1 * n0))
    z = float(norm.ppf(0.5 + confidence / 2))
    return Est(100 * a, 100 * max(a - z * se, 0.0), 100 * min(a + z * se, 1.0))


def _called_fake(p: pd.Series, threshold: float) -> np.ndarray:
    return (p.to_numpy(float) >= threshold)


def success(attacked: pd.DataFrame, clean: pd.DataFrame, label: int, threshold: float,
            confidence: float) -> tuple[Est, int]:
    """(share of the images of ``label`` right on the clean image and wrong after the attack,
    the number of images right on the clean image)."""
    keys = ["detector", "train", "seed", "sha1"]
    right = clean[(clean["label"] == label) &
                  (_called_fake(clean["p_fake"], threshold) == bool(label))][keys]
    merged = attacked[attacked["label"] == label].merge(right, on=keys)
    flipped = int((_called_fake(merged["p_fake"], threshold) != bool(label)).sum())
    return wilson(flipped, len(merged), confidence), len(merged)


def _cond_eps(frame: pd.DataFrame) -> list[tuple[str, float]]:
    order = {"none": 0, "fgsm": 1, "pgd": 2}
    pairs = frame[["attack", "eps"]].drop_duplicates().itertuples(index=False, name=None)
    return sorted(pairs, key=lambda p: (order.get(p[0], 9), p[1]))


def _eps_cell(attack: str, eps: float) -> str:
    from bilora.attacks.plan import eps_text

    return "-" if attack == "none" else eps_text(eps)


def attack_table(scores: pd.DataFrame, spec: dict[str, Any]) -> tuple[Table, pd.DataFrame]:
    """Accuracy, AUC, evasion and framing per detector x attack x eps x post-processing."""
    thr, conf = spec["threshold"], spec["confidence"]
    labels = spec["labels"]
    rows, data = [], []
    # an image in several test sets (a shared real set) counts once per cell
    scores = scores.drop_duplicates(["detector", "train", "seed", "sha1", "attack", "eps",
                                     "post"]) if len(scores) else scores
    dets = [d for d in spec["detectors"] if d in set(scores.get("detector", []))]
    for det in dets:
        mine = scores[scores["detector"] == det]
        clean = mine[(mine["attack"] == "none") & (mine["post"] == "none")]
        for post in mine["post"].drop_duplicates():
            for attack, eps in _cond_eps(mine):
                sel = mine[(mine["attack"] == attack) & (mine["eps"] == eps) &
                           (mine["post"] == post)]
                y = sel["label"].to_numpy(int)
                correct = int((_called_fake(sel["p_fake"], thr) == (y == 1)).sum())
                acc = wilson(correct, len(sel), conf)
                auc = auc_estimate(y, sel["p_fake"].to_numpy(float), conf)
                ev, n_ev = success(sel, clean, 1, thr, conf)
                fr, n_fr = success(sel, clean, 0, thr, conf)
                eps_cell = _eps_cell(attack, eps)
                rows.append([labels.get(det, det), attack, eps_cell, post, str(len(sel)), acc,
                             auc, ev, str(n_ev), fr, str(n_fr)])
                data.append({"detector": det, "attack": attack, "eps": eps, "post": post,
                             "images": len(sel), **_cols("accuracy", acc),
                             **_cols("auc", auc), **_cols("evasion", ev), "evasion_n": n_ev,
                             **_cols("framing", fr), "framing_n": n_fr})
    columns = [Column("detector", align="l"), Column("attack", align="l"), Column("eps"),
               Column("then"), Column("images"), Column("accuracy (%)"), Column("AUC (%)"),
               Column("evasion (%)", group="fakes"), Column("n", group="fakes",
                                                            name="fakes right when clean"),
               Column("framing (%)", group="reals"), Column("n", group="reals",
                                                            name="reals right when clean")]
    caption = [f"White-box attacks on each detector's own score (L-inf, eps in 255ths), "
               f"on a seeded subset of every test set, the same images for every detector; "
               f"the adversarial image is quantised to uint8 within eps and saved as PNG "
               f"before it is scored ('then': also JPEG-compressed). Images pooled over the "
               f"attacked cells and test sets; {conf:.0%} Wilson intervals (AUC: "
               f"Hanley-McNeil). Evasion: fakes called fake when clean, called real after "
               f"the attack; framing: reals called real when clean, called fake after."]
    frame = pd.DataFrame(data, columns=ATTACK_COLUMNS)  # its header even without rows
    table = Table("attacks", "Adversarial robustness", caption, columns, rows, frame, stubs=4)
    return table, frame


def _cols(prefix: str, e: Est) -> dict[str, float]:
    return {f"{prefix}": e.value, f"{prefix}_lo": e.lo, f"{prefix}_hi": e.hi}


def transfer_table(transfers: pd.DataFrame, spec: dict[str, Any]) -> Table:
    """Accuracy of each target on each source's adversarial images (no JPEG after)."""
    thr, conf, labels = spec["threshold"], spec["confidence"], spec["labels"]
    t = transfers[transfers["post"] == "none"] if len(transfers) else transfers
    if len(t):  # an image in several test sets counts once per cell
        t = t.drop_duplicates(["source", "target", "train", "seed", "sha1", "attack", "eps"])
    targets = [d for d in spec["detectors"] if d in set(t.get("target", []))]
    rows, data = [], []
    for source in [d for d in spec["detectors"] if d in set(t.get("source", []))]:
        mine = t[t["source"] == source]
        for attack, eps in _cond_eps(mine):
            row = [labels.get(source, source), attack, _eps_cell(attack, eps)]
            n_cell = []
            for target in targets:
                sel = mine[(mine["target"] == target) & (mine["attack"] == attack) &
                           (mine["eps"] == eps)]
                y = sel["label"].to_numpy(int)
                correct = int((_called_fake(sel["p_fake"], thr) == (y == 1)).sum())
                acc = wilson(correct, len(sel), conf)
                row.append(acc)
                n_cell.append(len(sel))
                data.append({"source": source, "target": target, "attack": attack, "eps": eps,
                             "images": len(sel), **_cols("accuracy", acc)})
            row.append(str(max(n_cell, default=0)))
            rows.append(row)
    columns = [Column("source", align="l"), Column("attack", align="l"), Column("eps"),
               *[Column(labels.get(d, d), group="scored by") for d in targets],
               Column("images")]
    caption = ["Transfer: accuracy (%) of each detector (columns) on the adversarial images "
               "made white-box on a source detector (rows), same training generator and seed; "
               "the source's own column is the white-box result; attack none = the same "
               f"images clean. {conf:.0%} Wilson intervals; 'images' is the number each cell "
               "rests on."]
    notes = [] if rows else ["No transferred images: no evaluation.attacks.transfer.sources "
                             "(or no cell shares a source's training generator and seed)."]
    return Table("attack_transfer", "Transfer of adversarial images", caption, columns, rows,
                 pd.DataFrame(data, columns=TRANSFER_COLUMNS), stubs=3, notes=notes)


def attack_figure(data: pd.DataFrame, spec: dict[str, Any], out_dir: str | os.PathLike
                  ) -> list[Path]:
    """Accuracy and AUC vs eps (rows), a column per attack, a line per detector with its
    intervals (eps 0: the clean images)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bilora.report.figures import _save

    d = data[data["post"] == "none"] if len(data) else data
    attacks = [a for a in ("fgsm", "pgd") if a in set(d.get("attack", []))] or ["none"]
    metrics = (("accuracy", "accuracy (%)"), ("auc", "AUC (%)"))
    fig, axes = plt.subplots(len(metrics), len(attacks), figsize=(3.6 * len(attacks), 5.6),
                             squeeze=False, sharex="col")
    for col, attack in enumerate(attacks):
        for row, (metric, name) in enumerate(metrics):
            ax = axes[row][col]
            for det in [x for x in spec["detectors"] if x in set(d.get("detector", []))]:
                sel = d[(d["detector"] == det) & d["attack"].isin(["none", attack])]
                sel = sel.sort_values("eps")
                y = sel[metric].to_numpy(float)
                err = np.abs(np.vstack([y - sel[f"{metric}_lo"].to_numpy(float),
                                        sel[f"{metric}_hi"].to_numpy(float) - y]))
                ax.errorbar(sel["eps"].to_numpy(float) * 255, y, yerr=err, marker="o", ms=3,
                            capsize=2, label=spec["labels"].get(det, det))
            ax.set_ylim(-2, 102)
            ax.axhline(50, color="grey", lw=0.5, ls=":")
            if row == 0:
                ax.set_title(attack.upper(), fontsize=9)
            if row == len(metrics) - 1:
                ax.set_xlabel("eps (/255)")
            if col == 0:
                ax.set_ylabel(name)
    axes[0][-1].legend(fontsize=6, loc="lower left")
    return _save(fig, out_dir, FIGURE)


def render_attack_report(spec: dict[str, Any], attack_folders: Sequence[str | os.PathLike],
                         transfer_files: Sequence[str | os.PathLike], tables_dir: str | os.PathLike,
                         figures_dir: str | os.PathLike) -> list[Path]:
    """Write the attack tables (csv, md, tex) and the figure (png, pdf); returns the paths."""
    scores = read_attacks(attack_folders)
    table, data = attack_table(scores, spec)
    paths = table.write(tables_dir)
    transfers = read_transfers(transfer_files)
    if len(transfers):  # each source's own white-box result: the matrix's diagonal
        own = scores[scores["detector"].isin(set(transfers["source"]))]
        transfers = pd.concat([transfers, own.assign(source=own["detector"],
                                                     target=own["detector"])],
                              ignore_index=True)
    paths += transfer_table(transfers, spec).write(tables_dir)
    paths += attack_figure(data, spec, figures_dir)
    return paths
