"""The result tables: matrices per detector, detectors side by side, robustness,
unlabelled answers, ablation. Each builder returns a :class:`~bilora.report.layout.Table`.

Means of a matrix row are labelled by what they average:

- ``mean (unseen)``: every test generator except the training one;
- ``mean (all)``: every test generator, the seen one included;
- ``mean (unseen, train sets)`` and ``mean (all, train sets)``: the same over the test
  sets of the *training* generators only. The paper's headline (93.41 %) is the
  latter over its seven sets, the seen one included; over the six unseen it is 92.45 %.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from bilora.report.context import PERTURBATIONS, PROTOCOLS, Context
from bilora.report.estimates import est_columns
from bilora.report.layout import Column, Table

UNSEEN, ALL = "mean (unseen)", "mean (all)"
UNSEEN_T, ALL_T = "mean (unseen, train sets)", "mean (all, train sets)"
MEANS = (UNSEEN, ALL, UNSEEN_T, ALL_T)
METRIC_NAMES = {"accuracy": "accuracy", "f1": "F1", "auc": "AUC", "auc_hard": "AUC (hard)",
                "ap": "AP", "pd@5%": "PD@5%", "pd@1%": "PD@1%", "tpr": "TPR", "tnr": "TNR"}
MEAN_DEFINITIONS = (
    "mean (unseen): every test generator but the row's own; mean (all): every test "
    "generator, the row's own included.")
TRAIN_SET_DEFINITIONS = (
    " mean (unseen, train sets), mean (all, train sets): the same over the training "
    "generators' test sets only (the paper's headline 93.41 % is a 'mean (all, train sets)' "
    "over its seven sets; over the six unseen it is 92.45 %).")


def mean_columns(ctx: Context) -> dict[str, Any]:
    """Mean label -> function(train generator) -> the test sets it averages."""
    tests, tsets = ctx.test, ctx.train_sets
    out: dict[str, Any] = {UNSEEN: lambda g: [t for t in tests if t != g],
                           ALL: lambda g: list(tests)}
    if tsets != tests:
        out[UNSEEN_T] = lambda g: [t for t in tsets if t != g]
        out[ALL_T] = lambda g: list(tsets)
    if ctx.cross_dataset:
        for ds, sets in ctx.datasets.items():
            out[dataset_mean(ds)] = lambda g, sets=sets: [t for t in sets if t != g]
    return out


def dataset_mean(dataset: str) -> str:
    """The label of a matrix row's mean over one dataset's unseen test generators."""
    return f"mean (unseen, {dataset})"


def _means_caption(ctx: Context) -> str:
    text = MEAN_DEFINITIONS + (TRAIN_SET_DEFINITIONS if ctx.train_sets != ctx.test else "")
    if ctx.cross_dataset:
        text += (" mean (unseen, <dataset>): over that dataset's test generators, the row's "
                 "own left out. Test columns are grouped by the dataset that holds them: " +
                 "; ".join(f"{ds}: {', '.join(sets)}" for ds, sets in ctx.datasets.items())
                 + ".")
    return text


def _test_group(ctx: Context, test: str) -> str:
    return f"test generator ({ctx.dataset_of(test)})" if ctx.cross_dataset else "test generator"


# -- 1. train x test matrices ---------------------------------------------------------

def matrix(ctx: Context, detector: str, metric: str) -> Table:
    """Train x test matrix of one detector and metric on clean images, with labelled means."""
    res, label = ctx.results, ctx.labels[detector]
    miss = "n/a" if detector in res.detectors() else "not run"
    means = mean_columns(ctx)
    columns = [Column("train \\ test", align="l")]
    columns += [Column(t, group=_test_group(ctx, t), name=t) for t in ctx.test]
    columns += [Column(m[len("mean ("):-1], group="mean", name=m) for m in means]
    rows, data = [], []
    for g in ctx.train:
        row: list[Any] = [g]
        for t in ctx.test:
            e = res.mean(metric, detector, [g], [t], missing="not run")
            row.append(e)
            data.append({"column": t, "kind": "test", "sets": t, "e": e,
                         "dataset": ctx.dataset_of(t)})
        for m, sets_of in means.items():
            sets = sets_of(g)
            e = res.mean(metric, detector, [g], sets, missing=miss)
            row.append(e)
            data.append({"column": m, "kind": "mean", "sets": ";".join(sets), "e": e,
                         "dataset": ""})
        rows.append(row)
        for d in data[-(len(ctx.test) + len(means)):]:
            d["train"] = g
    frame = pd.DataFrame([{"detector": detector, "label": label, "metric": metric,
                           "train": d["train"], "column": d["column"], "kind": d["kind"],
                           "dataset": d["dataset"], "sets": d["sets"],
                           **est_columns("", d["e"])} for d in data])
    name = f"{metric}_matrix_{detector}"
    title = (f"{label}: {METRIC_NAMES[metric]} (%) by training generator (rows) and test "
             "generator (columns), clean images.")
    return Table(name, title, [_means_caption(ctx), *ctx.caption(name)], columns, rows, frame,
                 notes=[ctx.real_set_note(ctx.test)])


# -- 2. detectors side by side --------------------------------------------------------

def detectors(ctx: Context) -> Table:
    """Detectors side by side on clean images: accuracy means and means over all cells."""
    res = ctx.results
    acc = [("unseen", "unseen", ctx.test), ("all", "all", ctx.test), ("seen", "seen", ctx.test)]
    if ctx.train_sets != ctx.test:
        acc += [("unseen, train sets", "unseen", ctx.train_sets),
                ("all, train sets", "all", ctx.train_sets)]
    if ctx.cross_dataset:
        acc += [(f"unseen, {ds}", "unseen", sets) for ds, sets in ctx.datasets.items()]
    others = ["f1", "auc", "auc_hard", "ap", "pd@5%", "pd@1%", "tpr", "tnr"]
    columns = [Column("detector", align="l")]
    columns += [Column(h, group="accuracy, mean over cells", name=f"accuracy mean ({h})")
                for h, _, _ in acc]
    columns += [Column(METRIC_NAMES[m], group="mean over all cells",
                       name=f"{METRIC_NAMES[m]} mean (all)") for m in others]
    rows, data = [], []
    for det, label in ctx.labels.items():
        row: list[Any] = [label]
        miss = "n/a" if det in res.detectors() else "not run"
        for head, which, tests in acc:
            e = res.estimate("accuracy", res.cells(det, ctx.train, tests, which), miss)
            row.append(e)
            data.append({"metric": "accuracy", "cells": head, "e": e})
        for m in others:
            e = res.estimate(m, res.cells(det, ctx.train, ctx.test, "all"), miss)
            row.append(e)
            data.append({"metric": m, "cells": "all", "e": e})
        rows.append(row)
        for d in data[-(len(acc) + len(others)):]:
            d["detector"], d["label"] = det, label
    frame = pd.DataFrame([{"detector": d["detector"], "label": d["label"], "metric": d["metric"],
                           "cells": d["cells"], **est_columns("", d["e"])} for d in data])
    seen_def = "seen: the cells whose test generator is the training one"
    per_dataset = "; 'unseen, <dataset>' to that dataset's" if ctx.cross_dataset else ""
    caption = [
        f"Means over the train x test cells of each detector (rows {', '.join(ctx.train)}; "
        f"columns {', '.join(ctx.test)}): unseen excludes, all includes the training "
        f"generator's own test set; {seen_def}; 'train sets' restricts the columns to the "
        "training generators' test sets" + per_dataset + ". AUC: from scores; AUC (hard): "
        "from the 0/1 "
        "predictions, the paper's AUC (= balanced accuracy). AP, PD@5%, PD@1% (probability "
        "of detection at 5 % / 1 % false positives, largest TPR with FPR within the target) "
        "have no interval.", *ctx.caption("detectors")]
    return Table("detectors", "Detectors side by side, clean images (%).", caption, columns,
                 rows, frame)


# -- 3. robustness ----------------------------------------------------------------------

def _level(level: str) -> str:
    try:
        x = float(level)
    except ValueError:
        return level
    return f"{x:g}"


def robustness_columns(ctx: Context) -> list[tuple[str, str]]:
    """(perturbation, level) of the run in report order: clean first, then by kind."""
    conds = ctx.results.conditions
    kinds = list(PERTURBATIONS) + sorted({p for p, _ in conds} - set(PERTURBATIONS))
    return [c for k in kinds for c in conds if c[0] == k]


def robustness(ctx: Context, metric: str) -> Table:
    """Wide robustness table: rows detectors, columns perturbation x level."""
    res = ctx.results
    conds = robustness_columns(ctx)
    columns = [Column("detector", align="l")]
    for pert, level in conds:
        head, _ = PERTURBATIONS.get(pert, (pert, ""))
        if pert == "none":
            columns.append(Column("clean"))
        else:
            columns.append(Column(_level(level), group=head))
    rows, data = [], []
    for det, label in ctx.labels.items():
        row: list[Any] = [label]
        for cond in conds:
            e = res.mean(metric, det, ctx.train, ctx.test, cond, missing="not run")
            row.append(e)
            data.append({"detector": det, "label": label, "metric": metric,
                         "perturbation": cond[0], "level": cond[1], **est_columns("", e)})
        rows.append(row)
    levels = "; ".join(f"{PERTURBATIONS[k][0]}: {PERTURBATIONS[k][1]}"
                       for k in dict.fromkeys(p for p, _ in conds) if k in PERTURBATIONS
                       and k != "none")
    name = f"robustness_{metric}"
    caption = [
        f"Mean over every training generator x test generator cell ({len(ctx.train)} x "
        f"{len(ctx.test)}), seen cells included, test images degraded before the detector's "
        f"own resizing. Levels: {levels or 'no perturbation in this run'}; random: a level "
        "drawn per image.",
        PROTOCOLS.get(ctx.spec["protocol"], f"Protocol {ctx.spec['protocol']}."),
        *ctx.caption(name)]
    return Table(name, f"Robustness: {METRIC_NAMES[metric]} (%) per perturbation and level.",
                 caption, columns, rows, pd.DataFrame(data))


def robustness_by_train(ctx: Context) -> Table:
    """Long form: detector x training generator x perturbation x level (means over tests)."""
    res, data = ctx.results, []
    for det, label in ctx.labels.items():
        for g in ctx.train:
            for cond in robustness_columns(ctx):
                row = {"detector": det, "label": label, "train": g, "perturbation": cond[0],
                       "level": cond[1]}
                for m in ("accuracy", "auc"):
                    row.update(est_columns(f"{m}_", res.mean(m, det, [g], ctx.test, cond)))
                data.append(row)
    return Table("robustness_by_train", "", [], [], [], pd.DataFrame(data), formats=("csv",))


# -- 6. unlabelled answers ------------------------------------------------------------

def clean_groups(ctx: Context) -> pd.DataFrame:
    """The metrics groups of clean images of the report's test sets."""
    t = ctx.results.table
    return t[(t["perturbation"] == ctx.results.clean[0]) & (t["level"] == ctx.results.clean[1])
             & t["test"].isin(ctx.test)]


def trained_models(ctx: Context):
    """(detector, label, training generator, seed, its clean groups) of every trained model
    the report expects, in report order (no groups: not run)."""
    clean = clean_groups(ctx)
    for det, label in ctx.labels.items():
        for g in ctx.train:
            for seed in ctx.spec["seeds"]:
                yield det, label, g, seed, clean[(clean["detector"] == det)
                                                 & (clean["train"] == g)
                                                 & (clean["seed"] == int(seed))]


def unlabelled(ctx: Context) -> Table:
    """Images without a label from the detector, per cell, clean images (zeros kept)."""
    rows, data = [], []
    for det, label, g, seed, c in trained_models(ctx):
        if len(c):
            count, n = int(c["unlabelled"].sum()), int(c["n"].sum())
            share = 100 * count / n if n else math.nan
            rows.append([label, g, str(seed), f"{count:,}", f"{n:,}", f"{share:.2f}"])
        else:
            count, n, share = None, None, math.nan
            rows.append([label, g, str(seed), "not run", "", ""])
        data.append({"detector": det, "label": label, "train": g, "seed": seed,
                     "unlabelled": count, "images": n, "share_pct": share})
    frame = pd.DataFrame(data).astype({"unlabelled": "Int64", "images": "Int64"})
    columns = [Column("detector", align="l"), Column("train", align="l"),
               Column("seed", align="l"), Column("unlabelled", align="r"),
               Column("images", align="r"), Column("share (%)", align="r")]
    caption = ["Images whose answer was neither caption word (readout 'generate'; NaN "
               "score), which count as wrong, per trained model on clean images of every "
               "test set. Images are counted per test set: a real image shared by k test "
               "sets counts k times. Detectors that always answer (scores from logits) show "
               "0.", *ctx.common("unlabelled")]
    return Table("unlabelled", "Unlabelled answers per trained model, clean images.", caption,
                 columns, rows, frame, formats=("csv", "md"))


# -- 7. preprocessing ---------------------------------------------------------------

def _numbers(values: Any) -> str:
    return ", ".join(f"{v:g}" for v in values) if isinstance(values, list | tuple) else str(values)


def normalisation_text(pre: dict[str, Any]) -> str:
    """``mean a, b, c / std d, e, f`` of a preprocessing record, ``none stated`` without."""
    if pre.get("mean") is None and pre.get("std") is None:
        return "none stated"
    return f"mean {_numbers(pre.get('mean'))} / std {_numbers(pre.get('std'))}"


def preprocessing(ctx: Context) -> Table:
    """Each detector's input preprocessing (fit, size, normalisation) from its scores'
    provenance; n/a for scores written before it was recorded."""
    rows, data = [], []
    for det, label in ctx.labels.items():
        pre = ctx.preprocessing.get(det)
        if pre is None:
            rows.append([label, "n/a", "n/a", "n/a"])
            data.append({"detector": det, "label": label, "fit": None, "size": None,
                         "normalisation": None, "preprocessing": None})
            continue
        norm = normalisation_text(pre)
        rows.append([label, str(pre.get("fit", "n/a")), str(pre.get("size", "n/a")), norm])
        data.append({"detector": det, "label": label, "fit": pre.get("fit"),
                     "size": pre.get("size"), "normalisation": norm,
                     "preprocessing": json.dumps(pre, sort_keys=True)})
    columns = [Column("detector", align="l"), Column("fit", align="l"),
               Column("size", align="r"), Column("normalisation", align="l")]
    caption = ["How each detector's images reach it, from its score files' provenance: fit "
               "'resize' scales an image to size x size (bicubic), 'crop' takes the centre "
               "crop without resizing (zero-padded when smaller); the normalisation is on "
               "pixels scaled to [0, 1]. The csv's 'preprocessing' column has the whole record "
               "(a VLM processor's own resizing too). n/a: scores written before the "
               "preprocessing was recorded, or none.", *ctx.common("preprocessing")]
    return Table("preprocessing", "Preprocessing per detector.", caption, columns, rows,
                 pd.DataFrame(data, columns=["detector", "label", "fit", "size",
                                             "normalisation", "preprocessing"]),
                 formats=("csv", "md"))


# -- 5. ablation ----------------------------------------------------------------------

def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def value_text(v: Any) -> str:
    if isinstance(v, list):
        return "+".join(map(str, v))
    return str(v).lower() if isinstance(v, bool) else str(v)


def ablation_sweeps(ctx: Context) -> list[dict[str, Any]]:
    """One sweep per (base detector, key): its points (value, detector id, estimate)."""
    res, sweeps = ctx.results, {}
    for vid, info in ctx.spec["variants"].items():
        base, key = info["base"], info["key"]
        sweeps.setdefault((base, key), {"base": base, "key": key, "points": []})
        sweeps[(base, key)]["points"].append({"value": info["value"], "detector": vid})
        if "base_value" in info:
            sweeps[(base, key)]["base_value"] = info["base_value"]
    out = []
    for (base, _key), s in sweeps.items():
        known = "base_value" in s
        pts = [{"value": s.get("base_value"), "detector": base, "is_base": True,
                "known": known}] + [{**p, "is_base": False, "known": True} for p in s["points"]]
        if all(p["known"] and _is_number(p["value"]) for p in pts):
            pts.sort(key=lambda p: p["value"])
        for p in pts:
            p["est"] = res.estimate("accuracy", res.cells(p["detector"], ctx.train, ctx.test,
                                                           "unseen"), missing="not run")
            p["parameters"] = ctx.parameters.get(p["detector"])
        s["points"] = pts
        out.append(s)
    return out


def ablation(ctx: Context, sweeps: list[dict[str, Any]]) -> Table:
    """One row per swept value (the base detector's own included)."""
    columns = [Column("detector", align="l"), Column("key", align="l"),
               Column("value", align="l"), Column("mean (unseen) accuracy"),
               Column("trainable", align="r"), Column("total", align="r")]
    rows, data = [], []
    for s in sweeps:
        for p in s["points"]:
            value = value_text(p["value"]) if p["known"] else "(base)"
            if p["is_base"]:
                value += " (base)" if p["known"] else ""
            par = p["parameters"] or {}
            rows.append([ctx.labels.get(s["base"], s["base"]), s["key"], value, p["est"],
                         f"{par['trainable']:,}" if par else "n/a",
                         f"{par['total']:,}" if par else "n/a"])
            data.append({"base": s["base"], "key": s["key"],
                         "value": value_text(p["value"]) if p["known"] else None,
                         "is_base": p["is_base"], "detector": p["detector"],
                         "label": ctx.labels.get(p["detector"], p["detector"]),
                         **est_columns("accuracy_unseen_", p["est"]),
                         "trainable": par.get("trainable"), "total": par.get("total")})
    frame = pd.DataFrame(data).astype({"trainable": "Int64", "total": "Int64"})
    unknown = any(not p["known"] for s in sweeps for p in s["points"])
    caption = ["Ablation: one setting changed at a time; mean (unseen) accuracy over every "
               "train x test cell whose test generator is not the training one, clean images. "
               "Parameter counts from the score files' metadata."
               + (" (base): the base detector, whose own value the report was not given."
                  if unknown else ""), *ctx.caption("ablation")]
    return Table("ablation", "Ablation: mean (unseen) accuracy (%) and trainable parameters.",
                 caption, columns, rows, frame)


def numeric(values: list[Any]) -> bool:
    return all(_is_number(v) and not (isinstance(v, float) and np.isnan(v)) for v in values)
