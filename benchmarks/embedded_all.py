"""Benchmark: the embedded `snakemake --cores N all` from clean results.

Runs the workflow in a fresh temporary folder (so no earlier results or data are
reused), samples the resident memory of the whole process tree every 0.2 s, and
prints wall time, peak total RSS (all concurrent jobs together) and per-rule job
time. Usage:

    python benchmarks/embedded_all.py [--cores 2] [--keep DIR] [--configfile OVERLAY]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def rule_times(log: str) -> dict[str, list[float]]:
    """Seconds per finished job, by rule, from Snakemake's log timestamps."""
    from datetime import datetime

    ts, started, rule_of, out = None, {}, {}, defaultdict(list)
    rule = None
    for line in log.splitlines():
        if m := re.match(r"\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]", line):
            ts = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        elif m := re.match(r"(?:local)?rule (\w+):", line):
            rule = m.group(1)
        elif (m := re.match(r"\s+jobid: (\d+)", line)) and rule:
            started[m.group(1)], rule_of[m.group(1)] = ts, rule
        elif (m := re.match(r"Finished jobid: (\d+)", line)) and m.group(1) in started:
            out[rule_of[m.group(1)]].append((ts - started[m.group(1)]).total_seconds())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--keep", help="run in this folder and keep it")
    ap.add_argument("--configfile", help="an overlay on the embedded default (e.g. to time "
                    "another path side by side)")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bilora-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(work), "--cores", str(args.cores), "all"]
    if args.configfile:
        cmd += ["--configfile", str(Path(args.configfile).resolve())]
    t0 = time.perf_counter()
    with open(work / "snakemake.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        ps, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            peak = max(peak, tree_rss(ps))
            time.sleep(0.2)
    wall = time.perf_counter() - t0
    text = (work / "snakemake.log").read_text()
    print(f"command: {' '.join(cmd[1:])}")
    print(f"exit status: {proc.returncode}")
    print(f"wall time: {wall:.1f} s ({wall / 60:.2f} min) on {args.cores} cores "
          f"({os.cpu_count()} CPUs seen)")
    print(f"peak RSS of the process tree: {peak / 2**30:.2f} GiB")
    for rule, secs in sorted(rule_times(text).items(), key=lambda kv: -sum(kv[1])):
        print(f"  {rule:24s} {len(secs):3d} jobs  {sum(secs):7.1f} s job time  "
              f"(max {max(secs):.0f} s)")
    print(f"log and results: {work}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
