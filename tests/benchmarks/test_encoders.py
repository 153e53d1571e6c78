"""The autoguide benchmarks (encoder families; Pyro's example VAE with an autoguide) run end
to end in their quick modes."""

import json
import math

import pytest
from bench_scripts import load_script

from pyro_aevb.data import data_dir_from_env

pytestmark = pytest.mark.skipif(
    data_dir_from_env() is None, reason="set PYRO_AEVB_DATA to the data directory"
)


def test_encoders_quick(tmp_path):
    encoders = load_script("encoders")
    out = tmp_path / "encoders.json"
    results = encoders.main(["--quick", "--out", str(out)])
    assert [(r["dataset"], r["guide"]) for r in results] == [
        (d, g) for d in ("mnist", "fashion-mnist") for g in ("diag", "full", "iaf")
    ]
    saved = json.loads(out.read_text())
    assert saved["command"] and saved["settings"]["quick"] and len(saved["results"]) == 6
    for r in saved["results"]:
        elbo, iwae = r["per_datapoint"]["elbo"], r["per_datapoint"]["iwae"]
        assert len(elbo) == len(iwae) == 8 and r["iwae_k"] == 20
        # from the same weights, log mean_k w >= mean_k log w (Jensen) for every datapoint
        assert all(b >= a - 1e-4 for a, b in zip(elbo, iwae))
        assert r["samples_per_second"] > 0 and r["history"][-1]["samples"] >= 1000
        assert r["guide_config"]["hidden_dims"] == [32]
        assert ("elbo_minus_diag" in r) == (r["guide"] != "diag")
    table = out.with_suffix(".md").read_text()
    assert table.count("\n") == 8 and "| fashion-mnist | IAF |" in table


def test_pyro_example_autoguide_quick(tmp_path):
    script = load_script("autoguide_pyro_example")
    out = tmp_path / "example.json"
    summary = script.main(["--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert [r["guide"] for r in saved["results"]] == ["hand-written", "AmortizedNormal(vae.model)"]
    assert saved["results"][1]["guide_config"]["guide"] == "normal"
    assert all(len(r["per_datapoint"]) == 50 for r in saved["results"])
    assert math.isfinite(summary["autoguide_minus_hand_written"]) and summary["stderr"] > 0
