"""Published figures (a yaml like ``workflow/published/bilora.yaml``) beside the run's.

Each entry names a detector, a training generator and a test set (or the sets of a mean)
by the paper's names; ``spec["published"]["map"]`` maps paper names to this run's
generator ids. A percent figure is compared with the reproduced mean and its interval
(inside: the published value lies in the interval); a parameter count with the count in
the score files' metadata (equal, or within half of the entry's ``precision`` when the
paper rounds). An entry the run cannot match is shown as "not run". With
``spec["published"]["imported"]`` (a detector of released checkpoints, e.g. the authors'
adapters) each entry is also compared with that detector: published, imported and
retrained side by side.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from bilora.errors import DataError
from bilora.report.context import Context
from bilora.report.estimates import est_columns
from bilora.report.layout import Column, Est, Table

PERCENT = ("accuracy", "f1", "auc_hard", "auc", "tpr", "tnr")
COUNTS = ("trainable_parameters", "total_parameters")
SHARES = ("trainable_share",)
METRICS = {"accuracy": "accuracy", "f1": "F1", "auc_hard": "AUC (hard)", "auc": "AUC",
           "tpr": "TPR", "tnr": "TNR", "trainable_parameters": "trainable",
           "total_parameters": "parameters", "trainable_share": "trainable %"}
REQUIRED = ("id", "detector", "train", "test", "metric", "value", "source", "definition")


def load_published(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The entries of a published-figures yaml, checked; errors name the file and entry."""
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        doc = yaml.load(Path(path).read_text(), Loader=loader)  # noqa: S506 - a safe loader
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: cannot read the published figures: {exc}") from None
    entries = (doc or {}).get("entries") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected a mapping with a list 'entries'")
    ids = set()
    for i, e in enumerate(entries):
        missing = [k for k in REQUIRED if not isinstance(e, dict) or k not in e]
        if missing:
            raise DataError(f"{path}: entry {i} lacks {', '.join(missing)}")
        if e["metric"] not in PERCENT + COUNTS + SHARES:
            raise DataError(f"{path}: entry {e['id']}: unknown metric {e['metric']!r}; "
                             f"known: {', '.join(PERCENT + COUNTS + SHARES)}")
        if e["id"] in ids:
            raise DataError(f"{path}: entry id {e['id']!r} appears twice")
        ids.add(e["id"])
    return entries


def _count_text(metric: str, v: float, published: bool = False) -> str:
    if metric in COUNTS:
        return f"{v:,.0f}"
    return f"{v:.4f}" if metric in SHARES and not published else f"{v:g}"


def compare(ctx: Context, entry: dict[str, Any], pmap: dict[str, str]) -> dict[str, Any]:
    """One entry against the run: the reproduced estimate, difference, inside, status."""
    det, metric, value = entry["detector"], entry["metric"], float(entry["value"])
    sets = list(entry.get("sets") or [entry["test"]])
    train = pmap.get(entry["train"])
    ids = [pmap.get(s) for s in sets]
    out: dict[str, Any] = {"train": train, "tests": ids, "est": Est(math.nan, missing="not run"),
                           "difference": math.nan, "inside": None, "status": "not run"}
    if det not in ctx.labels:
        out["why"] = f"no detector {det} in this run"
        return out
    if metric in PERCENT:
        lost = [s for s, i in zip(sets, ids, strict=True) if i is None or i not in ctx.test]
        if train is None or train not in ctx.train:
            out["why"] = f"training generator {entry['train']} not in this run"
        elif lost:
            out["why"] = f"test set(s) {', '.join(lost)} not in this run"
        else:
            e = ctx.results.mean(metric, det, [train], ids, missing="not run")
            out["est"] = e
            if e.ok:
                out.update(difference=e.value - value, status="ok",
                           inside=(e.lo <= value <= e.hi) if e.has_interval else None)
            else:
                out["why"] = "no metrics for these cells"
        return out
    par = ctx.parameters.get(det)
    if not par:
        out["why"] = f"no parameter counts in the score files of {det}"
        return out
    repro = {"trainable_parameters": par["trainable"], "total_parameters": par["total"],
             "trainable_share": 100 * par["trainable"] / par["total"] if par["total"] else
             math.nan}[metric]
    tol = float(entry.get("precision", 0)) / 2
    out.update(est=Est(float(repro)), difference=repro - value, status="ok",
               inside=abs(repro - value) <= tol + 1e-12 * max(1.0, abs(value)))
    return out


def _shown(metric: str, est: Est) -> Est | str:
    """A table cell of an estimate: the estimate (percent), a count, or why it is missing."""
    if not est.ok:
        return est.missing
    return est if metric in PERCENT else _count_text(metric, est.value)


def paper_vs_reproduced(ctx: Context) -> Table:
    """Every published figure beside the reproduced one (or "not run")."""
    pub = ctx.spec["published"]
    pmap, comparable = dict(pub["map"]), bool(pub["comparable"])
    imported = pub.get("imported")
    entries = load_published(pub["file"])
    repro = "reproduced" if comparable else "stand-in (NOT comparable)"
    if imported:
        repro = "retrained" if comparable else "retrained stand-in (NOT comparable)"
    label = ctx.labels.get(imported, imported) if imported else ""
    extra = [Column(label)] if imported else []
    columns = [Column("figure", align="l"), Column("train", align="l"),
               Column("test", align="l"), Column("metric", align="l"),
               Column("published", align="r"), *extra, Column(repro),
               Column("difference", align="r"),
               Column("in interval", name=f"published in {ctx.percent()} interval"),
               Column("why not run", align="l"), Column("source", align="l"),
               Column("definition", align="l")]
    rows, data = [], []
    for e in entries:
        c = compare(ctx, e, pmap)
        metric = e["metric"]
        pct = metric in PERCENT
        shown_train = e["train"] if c["train"] in (None, e["train"]) else \
            f"{e['train']} ({c['train']})"
        test = e["test"]
        if "sets" not in e and c["tests"][0] not in (None, test):
            test = f"{test} ({c['tests'][0]})"
        est: Est = c["est"]
        cell = _shown(metric, est)
        more: dict[str, Any] = {}
        if imported:
            ci = compare(ctx, {**e, "detector": imported}, pmap)
            more = {**est_columns("imported_", ci["est"]), "imported_status": ci["status"]}
        diff = "" if math.isnan(c["difference"]) else (
            f"{c['difference']:+.2f}" if pct else f"{c['difference']:+.4f}" if metric in SHARES
            else f"{c['difference']:+,.0f}")
        inside = {True: "yes", False: "no", None: ""}[c["inside"]]
        rows.append([e["id"], shown_train, test, METRICS.get(metric, metric),
                     _count_text(metric, float(e["value"]), published=True),
                     *([_shown(metric, ci["est"])] if imported else []), cell, diff,
                     inside, c.get("why", ""), e["source"], e["definition"]])
        data.append({"id": e["id"], "detector": e["detector"],
                     "label": ctx.labels.get(e["detector"], ""),
                     "train_paper": e["train"], "train": c["train"], "test_paper": e["test"],
                     "tests": ";".join(str(i) for i in c["tests"]), "metric": metric,
                     "published": float(e["value"]), "precision": e.get("precision"),
                     **est_columns("", est), "difference": c["difference"],
                     "inside": c["inside"], "status": c["status"], "why": c.get("why", ""),
                     "source": e["source"],
                     "definition": e["definition"], "comparable": comparable, **more})
    mapping = ", ".join(f"{k} → {v}" for k, v in pmap.items())
    if comparable:
        title = "Published figures beside the reproduced ones."
        head = ("Reproduced: this run's mean over seeds with its interval; difference = "
                "reproduced - published (percentage points for percentages).")
    else:
        title = ("Published figures beside procedural stand-ins: the stand-ins are NOT "
                 "comparable with the paper.")
        head = ("The right-hand numbers are procedural stand-ins with the paper's shape, not "
                "the paper's data or models: they are NOT comparable with the published "
                "figures, and the table shows only that the comparison runs.")
    caption = [head, f"Paper names mapped to this run's generators: {mapping or 'none'}.",
               "in interval: for a percentage, whether the published value lies inside the "
               f"{ctx.percent()} interval of the reproduced one; for a parameter count, whether "
               "the two are equal (within half the rounding step where the paper rounds). "
               "not run: the run has no such detector or generator. Why, sources and "
               "definitions: csv and Markdown versions.",
               *ctx.caption("paper_vs_reproduced")]
    if imported:
        caption.insert(1, f"{label}: the released weights of detector {imported}, "
                          f"scored by this run; {repro}: trained by this run; difference and "
                          "interval are the retrained one's.")
    table = Table("paper_vs_reproduced", title, caption, columns, rows, pd.DataFrame(data))
    # why, source, definition: csv and Markdown only
    table.latex_columns = list(range(8 + len(extra)))
    return table
