"""Warnings that bear on a run's results, gathered in one place.

Digest mismatches, rejected images, capped or short training and test sets, and
training that fell back from the frozen-feature cache are written where they happen
(digest files, ``rejects.csv``, the manifests' sampling records, the saved models'
provenance). :func:`collect` gathers them into ``results/<run>/warnings.json``, which the
report turns into ``warnings.md`` and caption lines of the affected tables, and which the
Snakefile prints at the end of a successful run. Torch-free.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

ALL_TABLES = "*"


def _digest(path: Path) -> list[dict[str, Any]]:
    text = path.read_text().strip()
    if "MISMATCH" not in text:
        return []
    digest, _, expected = text.partition("MISMATCH")
    dataset, split = path.parent.parent.name, path.stem
    return [{"source": f"data.datasets.{dataset}: {split} digest",
             "message": f"the {split}/ folder's digest {digest.strip()} differs from the "
                        f"published one ({expected.replace('expected', '').strip()}): the "
                        "images are not byte-identical to the authors' (see the README's "
                        "integrity checks)",
             "affects": [ALL_TABLES]}]


def _rejects(manifest: Path, limit: float) -> list[dict[str, Any]]:
    rejects = manifest.parent / "rejects.csv"
    if not rejects.exists():
        return []
    n = len(pd.read_csv(rejects))
    if not n:
        return []
    kept = pq.read_metadata(manifest).num_rows  # the footer only
    share = n / (n + kept)
    return [{"source": f"data.datasets.{manifest.parent.name}: rejected images",
             "message": f"{n} images failed to decode and were left out ({share:.2%}; the "
                        f"limit data.max_rejected_fraction is {limit:.2%}); reasons in "
                        f"{rejects}",
             "affects": [ALL_TABLES]}]


def _sampling(manifest: Path) -> list[dict[str, Any]]:
    from bilora.data.manifest import sampling_notes

    out = []
    for n in sampling_notes(manifest):
        if n["available"] < n["cap"]:
            kind = "real" if n["label"] == 0 else "fake"
            out.append({"source": f"data.datasets.{manifest.parent.name}: {n['generator']}",
                        "message": f"only {n['available']} {n['split']} {kind} images of "
                                   f"{n['generator']}, fewer than the {n['cap']} of "
                                   "data.sample; all are used",
                        "affects": [ALL_TABLES]})
    return out


def _model(folder: Path) -> list[dict[str, Any]]:
    from bilora.model_files import read_detector_meta

    meta = read_detector_meta(folder)
    note = meta["provenance"].get("feature_cache", "")
    if not note.startswith("fallback:"):
        return []
    cell = folder.parent
    return [{"source": f"{cell}: training",
             "message": f"trained from images, without the frozen-feature cache "
                        f"({note.removeprefix('fallback:').strip()}): same results, slower",
             "affects": []}]


def collect(manifests: Sequence[str | os.PathLike], digests: Sequence[str | os.PathLike],
            models: Sequence[str | os.PathLike], max_rejected_fraction: float
            ) -> list[dict[str, Any]]:
    """Every warning of a run, in a stable order: data first, then training."""
    out: list[dict[str, Any]] = []
    for d in digests:
        out += _digest(Path(d))
    for m in manifests:
        out += _rejects(Path(m), max_rejected_fraction) + _sampling(Path(m))
    for f in models:
        out += _model(Path(f))
    return out


def console_lines(path: str | os.PathLike) -> list[str]:
    """The warnings of ``path`` (warnings.json) as lines for the end of a Snakemake run."""
    path = Path(path)
    if not path.exists():
        return []
    found = json.loads(path.read_text())
    if not found:
        return []
    lines = [f"bilora: {len(found)} warning(s) bear on these results (also in the report's "
             f"warnings.md):"]
    lines += [f"  - {w['source']}: {w['message']}" for w in found]
    return lines
