"""benchmarks/vlm_bases.py: a quick run prints one row per registered base with a shipped
architecture, whose FLOPs, parameters and paper projection are the harness's own sizing."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from bilora.api.bases import BASES, base_class
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import vlm_bases as bench  # noqa: E402


def test_importing_the_benchmark_leaves_the_environment_alone():
    """This test module imports it: an offline switch set on import would reach every later
    test of the session (it once made the hub-download tests fail)."""
    code = ("import os, sys; sys.path.insert(0, 'benchmarks'); before = dict(os.environ); "
            "import vlm_bases; sys.exit(dict(os.environ) != before)")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env).returncode == 0


def test_quick_run_prints_a_row_per_base_with_its_own_sizing():
    out = subprocess.run([sys.executable, "benchmarks/vlm_bases.py", "--quick", "--rounds", "2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "QUICK" in out.stdout
    num = r"([0-9]+\.[0-9]+)"
    shipped = [n for n in BASES.names() if base_class(n).shipped]
    assert len(shipped) >= 2
    for name in shipped:
        base = base_class(name)
        sec, hub = bench.section(name)
        row = re.search(rf"^{re.escape(base.display)} +{re.escape(hub)} +"
                        + " +".join([num] * 7) + "$", out.stdout, re.M)
        assert row, (name, out.stdout)
        gflop, params, scorer, cache, cache_ms, shared, hours = map(float, row.groups())
        flops, n_params, _ = base.cost(sec["base_model"])
        assert gflop == pytest.approx(flops / 1e9, abs=0.05)
        assert params == pytest.approx(n_params / 1e6, abs=0.05)
        assert hours == pytest.approx(bench.paper_hours(flops, 0.4), abs=0.05)
        # timings of a smoke run: positive and finite (measured quick: cache 1.25-1.38,
        # shared 1.42-1.85); the real figures are the README's
        assert scorer > 0 and cache > 0.3 and shared > 0.3 and cache_ms >= 0
