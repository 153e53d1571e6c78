"""benchmarks/iwae.py (VAE against IWAE at equal budget) runs end to end in its quick mode."""

import json
import math

import pytest
from bench_scripts import load_script

from pyro_aevb.data import data_dir_from_env

pytestmark = pytest.mark.skipif(
    data_dir_from_env() is None, reason="set PYRO_AEVB_DATA to the data directory"
)


def test_iwae_benchmark_quick(tmp_path, capsys):
    bench = load_script("iwae")
    configs = ["vae", "iwae5-dreg", "iwae50"]
    argv = ["--quick", "--budget", "500", "--configs", *configs, "--eval-points", "10"]
    results = bench.main([*argv, "--out", str(tmp_path)])
    assert [(r["dataset"], r["config"]) for r in results] == [
        (d, c) for d in ("mnist", "fashion-mnist") for c in configs
    ]
    for r in results:
        # equal budget: every configuration saw the same number of training samples
        assert r["samples"] == 500 and r["history"][-1]["samples"] == 500
        assert r["particle_evaluations"] == 500 * r["k"]
        assert r["path"] == ("fast" if r["objective"] == "aevb" else "direct")
        test = r["test"]
        assert len(test["estimate"]) == 10 and test["log_likelihood"] < 0
        # the importance-sampled log p(x) is above the ELBO up to Monte Carlo error
        noise = math.hypot(test["log_likelihood_mc_stderr"], test["elbo_mc_stderr"])
        assert test["log_likelihood"] > test["elbo"] - 4 * noise
        assert 0 <= r["active_units"] <= 2 and r["train_seconds"] > 0
        if r["config"] != "vae":
            assert math.isfinite(r["test_minus_vae"]["stderr"])
    saved = json.loads((tmp_path / "iwae.json").read_text())
    assert saved["command"] and saved["settings"]["budget"] == 500
    assert saved["settings"]["eval_particles"] == 100 and len(saved["results"]) == 6
    assert "| K | VAE | IWAE | IWAE + DReG |" in capsys.readouterr().out
    # run again (as after running in parts): nothing is retrained or re-evaluated
    again = bench.main([*argv, "--datasets", "mnist", "--out", str(tmp_path)])
    for a, b in zip(again, results[:3], strict=True):
        assert a["test"] == b["test"] and a["eval_seconds"] == b["eval_seconds"]
        assert a["history"] == b["history"]
