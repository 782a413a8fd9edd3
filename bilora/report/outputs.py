"""The report's file names: a pure function of the report spec (Snakemake declares them).

Light on purpose (no pandas, no matplotlib): the workflow imports it when the DAG is built.
"""

from __future__ import annotations

from typing import Any

TABLE_EXTS = ("csv", "md", "tex")
FIGURE_EXTS = ("png", "pdf")


def detectors(spec: dict[str, Any]) -> list[str]:
    """Every detector of the report, in table order: the keys of ``spec["labels"]``."""
    return list(spec["labels"])


def table_files(spec: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """Table name -> the extensions it is written in, in report order."""
    out: dict[str, tuple[str, ...]] = {}
    for det in detectors(spec):
        out[f"accuracy_matrix_{det}"] = TABLE_EXTS
        out[f"f1_matrix_{det}"] = TABLE_EXTS
    out["detectors"] = TABLE_EXTS
    out["robustness_accuracy"] = TABLE_EXTS
    out["robustness_auc"] = TABLE_EXTS
    out["robustness_by_train"] = ("csv",)
    if spec.get("published"):
        out["paper_vs_reproduced"] = TABLE_EXTS
    if spec.get("variants"):
        out["ablation"] = TABLE_EXTS
    if spec.get("backdoor"):
        out["backdoor"] = TABLE_EXTS
    out["unlabelled"] = ("csv", "md")
    out["calibration"] = ("csv", "md")
    out["preprocessing"] = ("csv", "md")
    out["data_card"] = ("csv", "md")
    out["pairing"] = ("csv", "md")
    out["warnings"] = ("md",)
    return out


def figure_names(spec: dict[str, Any]) -> list[str]:
    """Figure names (without extension), in report order."""
    names = [f"heatmap_{det}" for det in detectors(spec)] + ["robustness"]
    if spec.get("variants"):
        names.append("ablation")
    names.append("calibration")
    return names


def report_outputs(spec: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(table file names, figure file names) that ``render_report(spec, ...)`` writes."""
    tables = [f"{name}.{ext}" for name, exts in table_files(spec).items() for ext in exts]
    figures = [f"{name}.{ext}" for name in figure_names(spec) for ext in FIGURE_EXTS]
    return tables, figures
