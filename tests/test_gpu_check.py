"""benchmarks/gpu_check.py: its CPU smoke run checks the harness's paths and writes the JSON
the lead reads from the GPU run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEED = ("preprocess", "scorer", "generate_b1", "train_uncached", "cache_build",
         "train_cached", "group_shared", "group_separate")


def test_gpu_check_quick_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"),
                          "--device", "cpu", "--layers", "2", "--batch", "2", "--quick",
                          "--out", str(out)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads(out.read_text())
    assert {"device", "dtype", "depth", "model", "checks", "passed", "speed", "ratios",
            "memory", "matrix", "gpu_hours", "elapsed_s"} <= set(data)
    assert data["passed"] and data["device"] == "cpu" and data["dtype"] == "float32"
    checks = data["checks"]
    assert checks["image_effect"]["ok"] and checks["p_fake_ok"]["ok"]
    assert all(t["ok"] and t["agree"] == t["images"] == 2 for t in checks["tokens"])
    assert checks["cached_loss"]["ok"] and checks["adapters_shared_vs_separate"]["ok"]
    assert set(data["speed"]) == set(SPEED)
    assert all(v["images_per_s"] > 0 for v in data["speed"].values())
    assert data["memory"]["predicted"]["uncached"] > data["memory"]["predicted"]["cached"]
    assert data["model"]["lora_dtypes"] == ["torch.float32"]
    hours = data["gpu_hours"]
    assert hours["total_cached_group"] == hours["train_cached"] + hours["score_group"]
    assert "PASS: correctness" in run.stdout and "GPU-hours" in run.stdout
