"""Means of metrics over groups, with intervals and seed spread, from the metrics step.

Every number in the report is an :class:`~bilora.report.layout.Est` made here: the mean
of a metric over a set of groups (detector x train x seed x test x perturbation x level)
with its interval from :func:`bilora.metrics.mean_interval` (count metrics from the
bootstrap draws, AUC by DeLong), and, with several seeds, the standard deviation of the
per-seed means. A mean is given only when every group it is defined over exists;
otherwise it is missing ("n/a") and the gap is recorded in ``Results.gaps``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from itertools import product

import numpy as np
import pandas as pd

from bilora.errors import DataError
from bilora.metrics import INTERVAL_METRICS, KEYS, load_draws, mean_interval
from bilora.report.layout import Est

CLEAN = "none"


class Results:
    """The metrics table and its bootstrap draws, indexed by group key."""

    def __init__(self, table: pd.DataFrame, draws: dict[str, np.ndarray],
                 confidence: float, seeds: Sequence[int]) -> None:
        if len(table) != len(draws["tp"]) or len(table) != len(draws["tn"]):
            raise DataError(f"the bootstrap draws ({len(draws['tp'])} rows) do not match the "
                            f"metrics table ({len(table)} rows): rerun the metrics step")
        self.table = table.reset_index(drop=True)
        self.table["seed"] = self.table["seed"].astype(int)
        for c in ("detector", "train", "test", "perturbation", "level"):
            self.table[c] = self.table[c].astype(str)
        self.draws, self.confidence = draws, confidence
        self.seeds = [int(s) for s in seeds]
        self.index = {key: i for i, key in enumerate(
            self.table[KEYS].itertuples(index=False, name=None))}
        self.gaps: set[tuple] = set()
        cond = self.table[["perturbation", "level"]].drop_duplicates()
        self.conditions = list(cond.itertuples(index=False, name=None))
        clean = [c for c in self.conditions if c[0] == CLEAN]
        self.clean = clean[0] if clean else (CLEAN, "-")

    @classmethod
    def load(cls, metrics_path: str | os.PathLike, bootstrap_path: str | os.PathLike,
             confidence: float, seeds: Sequence[int]) -> Results:
        return cls(pd.read_parquet(metrics_path), load_draws(bootstrap_path), confidence, seeds)

    def detectors(self) -> set[str]:
        return set(self.table["detector"])

    def positions(self, detector: str, trains: Iterable[str], tests: Iterable[str],
                  condition: tuple[str, str] | None = None) -> dict[int, list[int]]:
        """Seed -> positions of the groups of (detector, trains x tests, condition)."""
        pert, level = condition or self.clean
        trains, tests = list(trains), list(tests)
        out: dict[int, list[int]] = {}
        for seed in self.seeds:
            rows = []
            for tr, te in product(trains, tests):
                key = (detector, tr, seed, te, pert, level)
                if key in self.index:
                    rows.append(self.index[key])
                else:
                    self.gaps.add(key)
                    return {}
            out[seed] = rows
        return out

    def estimate(self, metric: str, by_seed: dict[int, list[int]],
                 missing: str = "n/a") -> Est:
        """Mean of ``metric`` (in %) over the groups of ``by_seed``, interval, seed spread."""
        rows = np.array([r for rs in by_seed.values() for r in rs], dtype=np.int64)
        if len(rows) == 0:
            return Est(float("nan"), missing=missing)
        values = self.table[metric].to_numpy(float)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            if metric in INTERVAL_METRICS:
                point, lo, hi = mean_interval(self.draws, rows, self.table, metric,
                                              self.confidence)
            else:
                point, lo, hi = float(np.nanmean(values[rows])), float("nan"), float("nan")
            per_seed = [np.nanmean(values[r]) for r in by_seed.values() if len(r)]
            sd = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else float("nan")
        return Est(100 * point, 100 * lo, 100 * hi, 100 * sd, seeds=len(per_seed),
                   missing=missing)

    def mean(self, metric: str, detector: str, trains: Iterable[str], tests: Iterable[str],
             condition: tuple[str, str] | None = None, missing: str = "n/a") -> Est:
        return self.estimate(metric, self.positions(detector, trains, tests, condition),
                             missing)

    def cells(self, detector: str, trains: Sequence[str], tests: Sequence[str],
              which: str) -> dict[int, list[int]]:
        """Seed -> positions of the clean cells of one kind: ``all``, ``seen``, ``unseen``."""
        out: dict[int, list[int]] = {}
        for tr in trains:
            sel = [t for t in tests if (which == "all" or (t == tr) == (which == "seen"))]
            if not sel:
                continue
            part = self.positions(detector, [tr], sel)
            if not part:
                return {}
            for seed, rows in part.items():
                out.setdefault(seed, []).extend(rows)
        return out


def est_columns(prefix: str, e: Est) -> dict[str, float]:
    """csv columns of one estimate: ``<prefix>value``, ``lo``, ``hi``, ``seed_sd``, ``seeds``."""
    return {f"{prefix}value": e.value, f"{prefix}lo": e.lo, f"{prefix}hi": e.hi,
            f"{prefix}seed_sd": e.sd, f"{prefix}seeds": e.seeds}
