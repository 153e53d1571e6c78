"""The scaling benchmark runs end to end in its quick mode (2 gloo ranks on this machine)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_scaling_quick(tmp_path):
    out = tmp_path / "scaling.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's package, not an installed one
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--quick", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    rates = results["train_samples_per_s"]
    assert set(rates) == {"1 process x 1 thread", "1 process x 2 threads", "2 ranks x 1 thread"}
    for row in rates.values():
        assert math.isfinite(row["median"]) and row["median"] > 0 and len(row["runs"]) == 1
    efficiency = rates["2 ranks x 1 thread"]["median"] / (
        2 * rates["1 process x 1 thread"]["median"]
    )
    assert results["scaling_efficiency_2_ranks"] == pytest.approx(efficiency)
    assert all(r > 0 for r in results["ais_datapoints_per_s"].values())
    # sharded AIS on 2 ranks gives the one-process per-datapoint estimates
    assert results["ais_same_estimates"] is True
    assert len(results["gpu"]) == 6
    if not torch.cuda.is_available():
        assert all(r["note"] == "not measured (no GPU)" for r in results["gpu"])
    assert "train 2 ranks x 1 thread" in out.with_suffix(".txt").read_text()
