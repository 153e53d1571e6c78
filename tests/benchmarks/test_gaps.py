"""The inference-gap benchmark runs end to end in its quick mode, shares trained runs with the
encoder benchmark, and its table is consistent: the two gaps add up to log p(x) - L[q]."""

import json

import pytest
from bench_scripts import load_script

from pyro_aevb.data import data_dir_from_env

pytestmark = pytest.mark.skipif(
    data_dir_from_env() is None, reason="set PYRO_AEVB_DATA to the data directory"
)


def test_gaps_quick_reuses_the_encoder_runs(tmp_path):
    runs = tmp_path / "runs"
    encoders = load_script("encoders")
    encoders.main(["--quick", "--datasets", "mnist", "--run-dir", str(runs),
                   "--out", str(tmp_path / "enc.json")])  # fmt: skip
    trained = sorted(p.name for p in runs.iterdir())
    gaps = load_script("gaps")
    out = tmp_path / "gaps.json"
    results = gaps.main(["--quick", "--datasets", "mnist", "--run-dir", str(runs),
                         "--out", str(out), "--figure"])  # fmt: skip
    assert sorted(p.name for p in runs.iterdir()) == trained  # nothing trained again
    assert [r["guide"] for r in results] == ["diag", "full", "iaf"]
    for r in json.loads(out.read_text())["results"]:
        p = r["per_datapoint"]
        assert len(p["elbo"]) == 6
        t = r["table"]
        total = t["log p(x)"][0] - t["L[q]"][0]
        # float32 values near -500: rounding at 1e-4
        assert abs(t["approximation gap"][0] + t["amortization gap"][0] - total) < 1e-4
        # refinement starts at the encoder and climbs: it does not end below it on average
        assert t["amortization gap"][0] > -3 * t["amortization gap"][1]
    assert out.with_suffix(".png").is_file()
    assert "| mnist | IAF |" in out.with_suffix(".md").read_text()
