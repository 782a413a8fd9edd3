"""The report step: every table and figure of ``report_outputs(spec)`` from the metrics."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bilora.errors import ConfigError
from bilora.report import data_card as card
from bilora.report import figures, tables
from bilora.report.calibration import calibration, calibration_figure
from bilora.report.context import (
    Context,
    Notice,
    read_parameters,
    read_preprocessing,
    read_warnings,
)
from bilora.report.estimates import Results
from bilora.report.outputs import report_outputs

log = logging.getLogger(__name__)
SPEC_KEYS = ("run", "train", "test", "labels", "note", "threshold", "confidence", "seeds",
             "variants", "real_sets", "published", "format_control", "protocol")


def check_spec(spec: dict[str, Any]) -> None:
    """One-line errors for a spec the report cannot use."""
    missing = [k for k in SPEC_KEYS if k not in spec]
    if missing:
        raise ConfigError(f"report spec lacks {', '.join(missing)}")
    if not spec["seeds"]:
        raise ConfigError("report spec: 'seeds' is empty")
    for vid, info in spec["variants"].items():
        if vid not in spec["labels"] or info.get("base") not in spec["labels"]:
            raise ConfigError(f"report spec: variant {vid!r} or its base "
                             f"{info.get('base')!r} has no label")
    pub = spec["published"]
    if pub is not None and not {"file", "map", "comparable"} <= set(pub):
        raise ConfigError("report spec: 'published' needs file, map and comparable")


def _gap_notices(results: Results, labels: dict[str, str]) -> list[Notice]:
    """One notice per detector with groups the report expected and did not find."""
    by_det: dict[str, set[tuple]] = {}
    for key in results.gaps:
        by_det.setdefault(key[0], set()).add(key)
    out = []
    present = results.detectors()
    for det, keys in by_det.items():
        if det not in present:
            msg = f"detector {det} ({labels.get(det, det)}) has no rows in the metrics: not run"
        else:
            k = sorted(keys)[0]
            msg = (f"detector {det}: at least {len(keys)} expected group(s) missing from the "
                   "metrics, "
                   f"e.g. train {k[1]}, seed {k[2]}, test {k[3]}, {k[4]} {k[5]}; means over "
                   "them are n/a")
        out.append(Notice("report", msg, [f"*_matrix_{det}", "detectors", "robustness_*",
                                          "paper_vs_reproduced", "ablation", "unlabelled",
                                          "backdoor"]))
    return out


def warnings_md(notices: Sequence[Notice], path: str | os.PathLike) -> Path:
    lines = ["# Warnings", ""]
    if not notices:
        lines.append("No warnings.")
    for w in notices:
        affects = f" (affects: {', '.join(w.affects)})" if w.affects else ""
        lines.append(f"- **{w.source or 'unknown'}**: {' '.join(w.message.split())}{affects}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(lines) + "\n")
    return p


def render_report(metrics_path: str | os.PathLike, bootstrap_path: str | os.PathLike,
                  spec: dict[str, Any], tables_dir: str | os.PathLike,
                  figures_dir: str | os.PathLike,
                  manifests: Sequence[str | os.PathLike] = (),
                  scores: Sequence[str | os.PathLike] = (),
                  warnings_path: str | os.PathLike | None = None) -> list[Path]:
    """Write every table and figure that ``report_outputs(spec)`` lists; returns the paths.

    ``manifests`` feed the data card and the real-image notes, ``scores`` only their
    metadata (parameter counts), ``warnings_path`` a JSON list of {source, message, affects}.
    """
    check_spec(spec)
    results = Results.load(metrics_path, bootstrap_path, spec["confidence"], spec["seeds"])
    parameters, notices = read_parameters(scores)
    preprocessing, more = read_preprocessing(scores)
    frame, present = card.read_manifests(manifests)
    ctx = Context(spec, results, parameters, read_warnings(warnings_path) + notices + more,
                  card.real_sets(spec, frame), frame, present, preprocessing)

    built = _build(ctx)
    gaps = _gap_notices(results, spec["labels"])
    if gaps:  # the captions must say so: build again with the notices in place
        log.warning("%d detector(s) with missing metrics groups; see warnings.md", len(gaps))
        ctx.warnings += gaps
        built = _build(ctx)
    paths = [p for t in built["tables"] for p in t.write(tables_dir)]
    paths.append(warnings_md(ctx.warnings, Path(tables_dir) / "warnings.md"))

    note = _wrap(str(spec["note"]))
    for det, label in spec["labels"].items():
        paths += figures.heatmap(built["heat"][det], det, f"{label}\n{note}", spec["train"],
                                 spec["test"], figures_dir)
    base = [d for d in spec["labels"] if d not in spec["variants"]]
    paths += figures.robustness(
        built["robustness"], {d: spec["labels"][d] for d in base},
        f"{note}\nmean accuracy over every train x test cell, error bars: "
        f"{ctx.percent()} intervals; dotted: clean images"
        + ("; ablation variants: see robustness_accuracy" if spec["variants"] else ""),
        figures_dir)
    if built["sweeps"]:
        paths += figures.ablation(built["sweeps"], spec["labels"],
                                  f"{note}\nerror bars: {ctx.percent()} intervals; "
                                  "labels: trainable parameters", figures_dir)
    paths += calibration_figure(ctx, f"{note}\nreliability (share of fakes vs mean P(fake) per "
                                "bin; dotted: calibrated) and scores per class, clean images",
                                figures_dir)
    _check(spec, paths, tables_dir, figures_dir)
    return paths


def _wrap(text: str, width: int = 100) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def _build(ctx: Context) -> dict[str, Any]:
    """Every table of the report (in memory), the heatmaps' cells, the sweeps."""
    spec = ctx.spec
    built: list[Any] = []
    heat = {}
    for det in spec["labels"]:
        for metric in ("accuracy", "f1"):
            t = tables.matrix(ctx, det, metric)
            built.append(t)
            if metric == "accuracy":
                heat[det] = t.data[t.data["kind"] == "test"]
    built.append(tables.detectors(ctx))
    rob = {m: tables.robustness(ctx, m) for m in ("accuracy", "auc")}
    built += [rob["accuracy"], rob["auc"], tables.robustness_by_train(ctx)]
    if spec["published"]:
        from bilora.report.paper import paper_vs_reproduced

        built.append(paper_vs_reproduced(ctx))
    sweeps = tables.ablation_sweeps(ctx) if spec["variants"] else []
    if sweeps:
        built.append(tables.ablation(ctx, sweeps))
    if spec.get("backdoor"):
        from bilora.report.backdoor import backdoor

        built.append(backdoor(ctx))
    built += [tables.unlabelled(ctx), calibration(ctx), tables.preprocessing(ctx),
              card.data_card(ctx, ctx.manifests, ctx.present),
              card.pairing(ctx, ctx.manifests)]
    return {"tables": built, "heat": heat, "robustness": rob["accuracy"].data,
            "sweeps": sweeps}


def _check(spec: dict[str, Any], paths: Sequence[Path], tables_dir: str | os.PathLike,
           figures_dir: str | os.PathLike) -> None:
    """The files written are exactly those ``report_outputs(spec)`` declares."""
    want_t, want_f = report_outputs(spec)
    want = {Path(tables_dir) / n for n in want_t} | {Path(figures_dir) / n for n in want_f}
    got = set(paths)
    if got != want:
        raise RuntimeError(f"report wrote {sorted(map(str, got - want))} beyond and missed "
                           f"{sorted(map(str, want - got))} of report_outputs(spec)")
