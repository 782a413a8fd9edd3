"""benchmarks/field_scale.py: a quick run prints every target and writes the JSON figures."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_run_prints_every_target_and_writes_the_figures(tmp_path):
    out_json = tmp_path / "field.json"
    out = subprocess.run([sys.executable, "benchmarks/field_scale.py", "--quick", "--out",
                          str(out_json)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    verdicts = re.findall(r"^(PASS|MISS)  (.*)$", out.stdout, re.M)
    assert len(verdicts) == 4
    labels = " ".join(label for _, label in verdicts)
    assert labels.count("<= 1.2") == 2 and labels.count(">= 5x") == 2
    assert "TINY widths" in out.stdout
    for label in ("one uncached epoch", "cache build", "100 cached epochs",
                  "7 separate passes", "NPR, training step", "LoRA on CLIP, scorer",
                  "training h", "Bi-LoRA", "measured H200"):
        assert label in out.stdout, label
    figures = json.loads(out_json.read_text())
    assert {"univfd_cache", "group", "images_per_s", "images_per_s_full", "flops_per_image",
            "matrix", "gpu_hours", "gpu_hours_total", "verdicts"} <= set(figures)
    assert figures["univfd_cache"]["epochs"] == 100
    assert {"ratio", "ratio_full", "target"} <= set(figures["univfd_cache"])
    assert {"ratio", "ratio_full", "target"} <= set(figures["group"])
    assert figures["group"]["agree"] < 1e-5  # one shared pass scores as 7 separate ones
    assert figures["matrix"]["cells"] == 8
    assert set(figures["gpu_hours"]) == {"UnivFD", "NPR", "LoRA on CLIP", "ResNet50",
                                         "Xception", "Bi-LoRA"}
    for row in figures["gpu_hours"].values():
        assert row["total"] == row["train"] + row["score"] > 0
