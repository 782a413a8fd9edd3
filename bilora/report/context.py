"""What every table of one report shares: the spec, the results, parameter counts,
warnings, and the caption lines that explain the numbers."""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bilora.errors import DataError
from bilora.report.estimates import Results

PROTOCOLS = {
    "ricker": "Degradations as Ricker et al.'s code applies them (protocol 'ricker': blur "
              "with sigma 4 at every kernel size, JPEG on swapped colour channels, noise "
              "truncated).",
    "corrected": "Ricker et al.'s degradations as they are meant (protocol 'corrected': "
                 "OpenCV's sigma for each blur kernel, JPEG on RGB, noise rounded).",
}
PERTURBATIONS = {  # perturbation id -> (short header, what the level is)
    "none": ("clean", ""),
    "noise": ("noise", "Gaussian noise std on the 0-255 scale"),
    "blur": ("blur", "Gaussian blur kernel size"),
    "jpeg": ("JPEG", "JPEG quality"),
    "crop": ("crop", "centre crop, fraction cut, resized back"),
    "downscale": ("down", "downscale to this many pixels and back"),
    "mixed": ("mixed", "crop, blur, noise and JPEG each with probability 1/2"),
    "trigger": ("trigger", "the backdoor trigger stamped on every image (poisoning)"),
}


@dataclass
class Notice:
    source: str
    message: str
    affects: list[str] = field(default_factory=list)

    def short(self, n: int = 100) -> str:
        m = " ".join(self.message.split())
        return m if len(m) <= n else m[: n - 1].rstrip() + "…"


def read_warnings(path: str | os.PathLike | None) -> list[Notice]:
    """Warnings of the run from ``path`` (a JSON list of {source, message, affects})."""
    if path is None:
        return []
    try:
        items = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the warnings list: {exc}") from None
    if not isinstance(items, list):
        raise DataError(f"{path}: the warnings must be a JSON list")
    out = []
    for i, w in enumerate(items):
        if not isinstance(w, dict) or "message" not in w:
            raise DataError(f"{path}: warning {i} lacks 'message'")
        affects = w.get("affects") or []
        out.append(Notice(str(w.get("source", "")), str(w["message"]),
                           [affects] if isinstance(affects, str) else list(affects)))
    return out


def _score_metadata(score_paths: Sequence[str | os.PathLike], key: str
                    ) -> Iterator[tuple[str | os.PathLike, str, bytes]]:
    """(path, detector, the value of ``key``) of every score file whose metadata has both."""
    import pyarrow.parquet as pq

    for p in score_paths:
        meta = pq.read_schema(p).metadata or {}
        det, raw = meta.get(b"detector"), meta.get(key.encode())
        if det is not None and raw is not None:
            yield p, det.decode(), raw


def read_preprocessing(score_paths: Sequence[str | os.PathLike]
                       ) -> tuple[dict[str, dict[str, Any]], list[Notice]]:
    """Detector -> its preprocessing (fit, size, normalisation) from the score files'
    metadata; files scored before it was recorded give none."""
    seen: dict[str, dict[str, dict[str, Any]]] = {}
    for p, det, raw in _score_metadata(score_paths, "preprocessing"):
        try:
            value = json.loads(raw)
        except ValueError:
            raise DataError(f"{p}: metadata 'preprocessing' is not JSON") from None
        if not isinstance(value, dict):
            raise DataError(f"{p}: metadata 'preprocessing' is not a JSON object")
        seen.setdefault(det, {})[json.dumps(value, sort_keys=True)] = value
    out, warns = {}, []
    for det, values in seen.items():
        out[det] = values[sorted(values)[0]]
        if len(values) > 1:
            warns.append(Notice("report", f"detector {det}: its score files record "
                                f"{len(values)} different preprocessings; the first is shown",
                                ["preprocessing"]))
    return out, warns


def read_parameters(score_paths: Sequence[str | os.PathLike]
                    ) -> tuple[dict[str, dict[str, int]], list[Notice]]:
    """Detector -> {total, trainable} from the score files' metadata (nothing else read)."""
    seen: dict[str, set[tuple[int, int]]] = {}
    for p, det, raw in _score_metadata(score_paths, "parameters"):
        try:
            counts = json.loads(raw)
            pair = (int(counts["total"]), int(counts["trainable"]))
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{p}: metadata 'parameters' is not "
                             "JSON {{total, trainable}}") from None
        seen.setdefault(det, set()).add(pair)
    out, warns = {}, []
    for det, pairs in seen.items():
        total, trainable = sorted(pairs)[0]
        out[det] = {"total": total, "trainable": trainable}
        if len(pairs) > 1:
            warns.append(Notice("report", f"detector {det}: its score files give different "
                                 f"parameter counts {sorted(pairs)}; the smallest is shown",
                                 ["ablation", "paper_vs_reproduced"]))
    return out, warns


@dataclass
class Context:
    """One report's inputs, as the tables read them."""

    spec: dict[str, Any]
    results: Results
    parameters: dict[str, dict[str, int]] = field(default_factory=dict)
    warnings: list[Notice] = field(default_factory=list)
    real_sets: dict[str, tuple[str, int | None, frozenset[str] | None]] = field(
        default_factory=dict)
    manifests: Any = None  # the manifests' rows (bilora.report.data_card.read_manifests)
    present: dict[str, set[str]] = field(default_factory=dict)  # dataset -> its columns
    preprocessing: dict[str, dict[str, Any]] = field(default_factory=dict)  # detector -> it

    @property
    def labels(self) -> dict[str, str]:
        return self.spec["labels"]

    @property
    def train(self) -> list[str]:
        return list(self.spec["train"])

    @property
    def test(self) -> list[str]:
        return list(self.spec["test"])

    @property
    def datasets(self) -> dict[str, list[str]]:
        """Dataset -> its test generators, in test order (the spec's ``datasets`` map; a
        spec without it is one unnamed group)."""
        of = self.spec.get("datasets") or {}
        out: dict[str, list[str]] = {}
        for t in self.test:
            out.setdefault(of.get(t, ""), []).append(t)
        return out

    @property
    def cross_dataset(self) -> bool:
        """Whether the test generators come from more than one dataset."""
        return len(self.datasets) > 1

    def dataset_of(self, generator: str) -> str:
        return (self.spec.get("datasets") or {}).get(generator, "")

    @property
    def train_sets(self) -> list[str]:
        """The test sets of the training generators, in test order."""
        return [t for t in self.test if t in self.train]

    def percent(self) -> str:
        return f"{100 * self.spec['confidence']:g} %"

    def caption(self, name: str, intervals: bool = True) -> list[str]:
        """Caption lines every table carries (after its own): convention, note, warnings."""
        lines = []
        if intervals:
            lines.append(
                f"Cells: value [lo, hi] in percent, one decimal; [lo, hi] is the "
                f"{self.percent()} interval (bootstrap stratified by class: the fakes and the "
                "reals of each test set resampled apart, the real set shared by the test "
                "sets drawn once; AUC: DeLong's interval); a mean over several models "
                "(training seeds, training generators, detectors) scored on the same test "
                "images has a conservative interval: their errors are taken as perfectly "
                "correlated (for AUC, the fakes' part only), so it may be wider than needed "
                "but not narrower. A column without brackets has no interval. In LaTeX the "
                "bracketed part is printed under its value.")
            seeds = self.spec["seeds"]
            if len(seeds) > 1:
                lines.append(
                    f"{len(seeds)} training seeds ({', '.join(map(str, seeds))}): a cell is the "
                    "mean over seeds with the interval of that mean, followed by ±s, the "
                    "seed-to-seed standard deviation.")
            else:
                lines.append(f"One training seed ({seeds[0]}).")
            lines.append(f"An image counts as fake when P(fake) ≥ {self.spec['threshold']:g}; "
                         "an image without an answer counts as wrong.")
        lines += self.common(name)
        return lines

    def common(self, name: str) -> list[str]:
        lines = []
        if self.spec.get("note"):
            lines.append(str(self.spec["note"]).strip())
        fc = self.spec.get("format_control")
        if fc:
            lines.append(f"Every image was re-encoded as JPEG quality {fc['jpeg_quality']} "
                         "before use (data.format_control).")
        for w in self.warnings:
            if any(fnmatch.fnmatchcase(name, pat) for pat in w.affects):
                lines.append(f"See warnings.md: {w.short()}")
        return lines

    def real_set_note(self, columns: Sequence[str]) -> str:
        """Which real images each test column is scored against, columns grouped by set."""
        groups: dict[tuple, list[str]] = {}
        for col in columns:
            desc, unique, sha = self.real_sets.get(col, ("not stated", None, None))
            groups.setdefault((desc, sha), []).append(col)
        parts = []
        for (desc, _), cols in groups.items():
            unique = self.real_sets.get(cols[0], ("", None, None))[1]
            count = f" ({unique:,} unique images)" if unique is not None else ""
            parts.append(f"{desc}{count}: {', '.join(cols)}")
        return "Real images per column: " + "; ".join(parts) + "."
