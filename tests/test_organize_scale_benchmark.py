"""benchmarks/organize_scale.py: a small run prints figures that parse and are sane (no
timing thresholds: the 200k run's figures are in benchmarks/results/organize_scale.txt)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = 2000


def test_a_small_run_prints_sane_figures_and_cleans_up(tmp_path):
    out_txt = tmp_path / "organize_scale.txt"
    work = tmp_path / "work"
    work.mkdir()
    run = subprocess.run([sys.executable, "benchmarks/organize_scale.py", "--files", str(FILES),
                          "--dir", str(work), "--out", str(out_txt), "--workers", "2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    text = run.stdout
    assert out_txt.read_text() == text  # the figures file is what was printed
    assert list(work.iterdir()) == []  # the synthetic tree is removed
    assert re.search(rf"^organize_scale: {FILES} files, [\d.]+ MiB", text, re.M)
    rates = dict(re.findall(r"^(cat|sha1sum|organize|organize -j2)\s+[\d.]+ s\s+(\d+) files/s",
                            text, re.M))
    assert set(rates) == {"cat", "sha1sum", "organize", "organize -j2"}
    assert all(int(v) > 0 for v in rates.values())
    rows, files = map(int, re.search(r"^manifest rows: (\d+) of (\d+) files", text, re.M).groups())
    assert rows == files == FILES
    rss, at = re.search(r"^peak RSS organize: ([\d.]+) MiB at (\d+) files", text, re.M).groups()
    assert 0 < float(rss) < 1024 and int(at) == FILES
    verdicts = re.findall(r"^(PASS|MISS)  (.*)$", text, re.M)
    assert len(verdicts) == 3
    assert [label.split(" ")[0] for _, label in verdicts] == ["organize", "organize", "peak"]
    ratio = float(re.search(r"throughput ([\d.]+) >= 0.7 \(files/s, one process\)", text)[1])
    assert ratio > 0
    minutes = re.search(r"adding the measured decode .*: (\d+) min;", text)
    assert minutes and int(minutes[1]) > 0
    assert "2631167 files" in text and "assumed mean" in text  # GenImage: fakes + reals
