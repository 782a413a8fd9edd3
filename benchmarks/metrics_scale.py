"""Benchmark: the metrics step (with intervals) on paper-sized synthetic score files.

Writes 21 score files (3 detectors x 7 training generators) of 12 test sets x 23
conditions x 20,000 images (10k fake + a 10k real set shared by every test set), about
116 million rows at ``--scale 1`` (the matrix, generator names, conditions and counts are
read from ``workflow/config/paper.yaml``), with the score files' dtypes (dictionary-encoded
strings, int8 labels, float32 scores; one detector gives hard 0/1 scores, one has 0.1 %
unlabelled images). Then runs ``run_metrics`` in a child process, samples its resident
memory every 0.05 s, and prints rows, files, seconds to write, seconds (wall and CPU) for
the metrics, peak RSS, groups, resamples and the sizes of its outputs. A second child
times what a report does with them: ``load_draws`` and ``mean_interval`` of auc and accuracy
for the mean over each cell's test sets (per detector, train, condition), over each
detector's train x test matrix (per detector, condition: 7 cells on the same images) and
over every cell (per condition: 21 cells). Usage:

    python benchmarks/metrics_scale.py [--scale 1.0] [--resamples 1000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bilora import config as C  # noqa: E402 - after the checkout is on the path

PAPER = C.load(ROOT / "workflow" / "config" / "paper.yaml")  # the matrix is the paper's
DETECTORS = list(C.detectors(PAPER))
TRAIN = list(PAPER["generators"]["train"])
TEST = list(PAPER["generators"]["test"])
CONDITIONS = C.conditions(PAPER)
TEST_FAKES = PAPER["data"]["sample"]["test_fakes_per_generator"]


def dictionary(indices: np.ndarray, values: list[str]) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(indices), pa.array(values, pa.string()))


def write_files(folder: Path, scale: float, seed: int = 0) -> tuple[list[Path], int]:
    """The 21 synthetic score files; returns (paths, rows)."""
    n_fake = max(2, round(TEST_FAKES * scale))
    n_real = n_fake
    rng = np.random.default_rng(seed)
    n_images = len(TEST) * n_fake + n_real  # the real set is shared by every test set
    images = [f"data/ricker/test/{g}/1_fake/{i:05d}.png" for g in TEST for i in range(n_fake)]
    images += [f"data/ricker/test/Real/0_real/{i:05d}.png" for i in range(n_real)]
    sha1 = [os.urandom(20).hex() for _ in range(n_images)]
    # rows of one condition: for each test set its fakes, then the shared reals
    per_test = n_fake + n_real
    t_idx = np.repeat(np.arange(len(TEST), dtype=np.int8), per_test)
    img = np.concatenate([np.r_[np.arange(t * n_fake, (t + 1) * n_fake),
                                len(TEST) * n_fake + np.arange(n_real)]
                          for t in range(len(TEST))]).astype(np.int32)
    label1 = np.tile(np.r_[np.ones(n_fake, np.int8), np.zeros(n_real, np.int8)], len(TEST))
    n_cond, rows1 = len(CONDITIONS), len(img)
    perts = sorted({k for k, _ in CONDITIONS})
    levels = sorted({v for _, v in CONDITIONS})
    p_idx = np.repeat([perts.index(k) for k, _ in CONDITIONS], rows1).astype(np.int8)
    l_idx = np.repeat([levels.index(v) for _, v in CONDITIONS], rows1).astype(np.int8)
    columns = {"image": dictionary(np.tile(img, n_cond), images),
               "sha1": dictionary(np.tile(img, n_cond), sha1),
               "generator": dictionary(np.tile(t_idx, n_cond), TEST),
               "label": pa.array(np.tile(label1, n_cond)),
               "perturbation": dictionary(p_idx, perts),
               "level": dictionary(l_idx, levels)}
    cond = np.repeat(np.arange(n_cond), rows1)
    paths = []
    for det in DETECTORS:
        for train in TRAIN:
            # one score per (condition, image): the shared reals score alike in every set
            mu = np.where(np.arange(n_images) < len(TEST) * n_fake, 2.0, -2.0)
            logit = rng.normal(mu, 2.5, (n_cond, n_images)).astype(np.float32)
            p = (1 / (1 + np.exp(-logit)))[cond, np.tile(img, n_cond)]
            if det == "resnet50":  # a hard token readout: scores exactly 0 or 1
                p = (p >= 0.5).astype(np.float32)
            if det == "bilora":
                p[rng.random(len(p)) < 0.001] = np.nan  # unmapped tokens
            table = pa.table({**columns, "p_fake": pa.array(p.astype(np.float32))})
            table = table.replace_schema_metadata({"detector": det, "train": train,
                                                   "seed": "0", "detector_label": det})
            paths.append(folder / "scores" / det / f"{train}.parquet")
            paths[-1].parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, paths[-1])
    return paths, len(DETECTORS) * len(TRAIN) * n_cond * rows1


def run_child(folder: Path, resamples: int) -> int:
    """In the child: the metrics step alone; prints one JSON line."""
    sys.path.insert(0, str(ROOT))
    from bilora.metrics import run_metrics

    paths = sorted((folder / "scores").rglob("*.parquet"))
    t, cpu = time.perf_counter(), time.process_time()
    table = run_metrics(paths, folder / "metrics.parquet", resamples=resamples)
    print(json.dumps({"seconds": time.perf_counter() - t, "cpu": time.process_time() - cpu,
                      "groups": len(table)}))
    return 0


def run_means(folder: Path) -> int:
    """In the child: what a report does with the outputs; prints one JSON line."""
    sys.path.insert(0, str(ROOT))
    import pandas as pd

    from bilora.metrics import load_draws, mean_interval

    t = time.perf_counter()
    table = pd.read_parquet(folder / "metrics.parquet")
    draws = load_draws(folder / "bootstrap.npz")
    out = {"load_seconds": time.perf_counter() - t}
    for name, by in (("cell", ["detector", "train", "seed", "perturbation", "level"]),
                     ("matrix", ["detector", "perturbation", "level"]),
                     ("all", ["perturbation", "level"])):
        rows = np.stack([np.asarray(r) for r in table.groupby(by, sort=False).indices.values()])
        for metric in ("auc", "accuracy"):
            t = time.perf_counter()
            mean_interval(draws, rows, table, metric)
            out[f"{name}_{metric}"] = [len(rows), rows.shape[1], time.perf_counter() - t]
    print(json.dumps(out))
    return 0


def watch(args: list[str]) -> tuple[dict, int]:
    """Run ``args`` in a child, sampling its RSS; (its last JSON line, peak RSS bytes)."""
    proc = psutil.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    out = proc.stdout.read()
    if proc.returncode:
        print(out)
        raise SystemExit(proc.returncode)
    return json.loads(out.strip().splitlines()[-1]), peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the paper size")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--keep", help="write into this folder and keep it")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--means", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return run_child(Path(args.child), args.resamples)
    if args.means:
        return run_means(Path(args.means))

    folder = Path(args.keep or tempfile.mkdtemp(prefix="metrics_scale_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        paths, rows = write_files(folder, args.scale)
        write_s = time.perf_counter() - t
        size = sum(p.stat().st_size for p in paths)
        child, peak = watch([__file__, "--child", str(folder),
                             "--resamples", str(args.resamples)])
        means, means_peak = watch([__file__, "--means", str(folder)])
        print(f"rows              {rows:,}")
        print(f"files             {len(paths)} ({size / 2**20:,.0f} MiB)")
        print(f"write seconds     {write_s:.1f}")
        print(f"metrics seconds   {child['seconds']:.1f} (CPU {child['cpu']:.1f}; load "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
        print(f"peak RSS          {peak / 2**30:.2f} GiB")
        print(f"groups            {child['groups']:,}")
        print(f"resamples         {args.resamples}")
        for name in ("metrics.parquet", "metrics.csv", "bootstrap.npz"):
            print(f"{name:<18}{(folder / name).stat().st_size / 2**20:,.1f} MiB")
        print(f"report: load      {means['load_seconds']:.1f} s, peak RSS "
              f"{means_peak / 2**30:.2f} GiB")
        for key in ("cell_auc", "cell_accuracy", "matrix_auc", "matrix_accuracy", "all_auc",
                    "all_accuracy"):
            n, k, sec = means[key]
            print(f"report: {key:<16}{n} means of {k} groups in {sec:.2f} s")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
