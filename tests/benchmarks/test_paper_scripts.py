"""The paper-reproduction scripts run end to end in a tiny quick mode."""

import json
import math
from pathlib import Path

import pytest
from bench_scripts import load_script

from pyro_aevb.data import data_dir_from_env

BENCH = Path(__file__).parents[2] / "benchmarks"

pytestmark = pytest.mark.skipif(
    data_dir_from_env() is None, reason="set PYRO_AEVB_DATA to the data directory"
)


def test_figure2_quick(tmp_path):
    fig2 = load_script("figure2")
    results = fig2.main(
        [
            "--datasets",
            "mnist",
            "frey-face",
            "--latents",
            "2",
            "--budget",
            "2000",
            "--select-samples",
            "500",
            "--lrs",
            "0.02",
            "0.1",
            "--hidden",
            "16",
            "--num-train",
            "400",
            "--eval-size",
            "100",
            "--jobs",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert {(r["dataset"], r["algorithm"]) for r in results} == {
        (d, a) for d in ("mnist", "frey-face") for a in ("aevb", "wake-sleep")
    }
    saved = json.loads((tmp_path / "figure2.json").read_text())
    assert saved["command"] and len(saved["results"]) == 4
    for r in saved["results"]:
        assert r["history"][-1]["samples"] == 2000 and r["lr"] in (0.02, 0.1)
        assert set(r["early_score"]) == {"0.02", "0.1"}
    assert (tmp_path / "figure2.png").read_bytes()[:4] == b"\x89PNG"


def test_figure3_quick(tmp_path):
    fig3 = load_script("figure3")
    results = fig3.main(
        [
            "--num-train",
            "200",
            "--budget",
            "1000",
            "--mcem-budget",
            "300",
            "--select-samples",
            "200",
            "--lrs",
            "0.02",
            "--hidden",
            "16",
            "--eval-points",
            "20",
            "--posterior-samples",
            "40",
            "--num-warmup",
            "40",
            "--ais-check-points",
            "3",
            "--jobs",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert [r["algorithm"] for r in results] == ["aevb", "wake-sleep", "mcem"]
    for r in results:
        check = r["final_ais_check"]
        assert check["points"] == 3
        assert math.isfinite(check["ais"]) and math.isfinite(check["appendix_d"])
    for r in results:
        last = r["history"][-1]
        assert last["test_log_marginal"] < 0 and last["train_log_marginal"] < 0
        assert r["train_seconds_per_sample"] > 0
    mcem = results[-1]
    assert mcem["train_seconds_per_sample"] > results[0]["train_seconds_per_sample"]
    assert (tmp_path / "figure3.png").is_file()


def test_figures45_quick(tmp_path):
    fig45 = load_script("figures45")
    summary = fig45.main(
        [
            "--budget",
            "500",
            "--sample-latents",
            "2",
            "3",
            "--hidden",
            "16",
            "--figure2-dir",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path),
        ]
    )
    for name in ("figure4_mnist.png", "figure4_frey_face.png", "figure5.png", "figures45.json"):
        assert (tmp_path / name).is_file()
    assert set(summary["figure5"]["samples_from"]) == {2, 3}


def test_saved_results_name_no_directory_of_this_machine():
    runs = load_script("paper_runs")
    root = BENCH.resolve().parent
    saved = runs.portable_paths({"out": str(root / "a" / "b"), "runs": [str(root / "c"), "/x"]})
    assert saved == {"out": "a/b", "runs": ["c", "/x"]}
