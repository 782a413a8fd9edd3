"""Tables (csv, Markdown, LaTeX) and figures (png, pdf) from the metrics step's output.

Two entry points: ``report_outputs(spec)`` (the file names, a pure function of the spec;
light, the workflow imports it) and ``render_report(...)`` (writes them). Reports never
import a model class: they read metrics, manifests and score-file metadata.
"""

from __future__ import annotations

from typing import Any

from bilora.report.outputs import report_outputs

__all__ = ["render_report", "report_outputs"]


def render_report(*args: Any, **kwargs: Any) -> Any:
    """See :func:`bilora.report.render.render_report` (imported on first use)."""
    from bilora.report.render import render_report as render

    return render(*args, **kwargs)
