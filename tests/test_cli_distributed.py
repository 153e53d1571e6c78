"""The command line on 2 ranks (``--nproc 2``, which relaunches through torchrun) gives the
one-process results: the same training history and the same per-datapoint estimates."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_aevb.cli import main

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [
    "train",
    "--dataset",
    "embedded-mnist",
    "--latent-dim",
    "2",
    "--hidden",
    "16",
    "--num-samples",
    "1000",
    "--eval-size",
    "100",
    "--no-progress",
    "--no-figures",
]
EVALUATE = ["--method", "iwae", "--n", "10", "--block-size", "4", "--option", "num_particles=20"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    # a fresh interpreter in the repository root, as a user runs it (cwd first on sys.path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pyro_aevb.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_train_on_two_ranks_matches_one_process(tmp_path):
    two = _cli(*TRAIN, "--out", str(tmp_path / "two"), "--nproc", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "data-parallel     2 ranks (gloo)" in two.stdout
    assert main([*TRAIN, "--out", str(tmp_path / "one")]) == 0

    history = {k: json.loads((tmp_path / k / "history.json").read_text()) for k in ("one", "two")}
    assert [h["samples"] for h in history["one"]] == [h["samples"] for h in history["two"]]
    for h1, h2 in zip(history["one"], history["two"], strict=True):
        assert h2["test_bound"] == pytest.approx(h1["test_bound"], rel=1e-5)
        assert h2["loss"] == pytest.approx(h1["loss"], rel=1e-5)
    assert history["two"][-1]["test_bound"] > history["two"][0]["test_bound"] + 10
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["data_parallel"] == {"world_size": 2, "shards": 2, "backend": "gloo"}


@pytest.mark.slow
def test_evaluate_on_two_ranks_matches_one_process(tmp_path):
    run = str(tmp_path / "run")
    assert main([*TRAIN, "--num-samples", "300", "--out", run]) == 0
    out2, out1 = tmp_path / "iwae2.json", tmp_path / "iwae1.json"
    ev = _cli("evaluate", run, *EVALUATE, "--nproc", "2", "--out", str(out2))
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert main(["evaluate", run, *EVALUATE, "--out", str(out1)]) == 0
    one, two = json.loads(out1.read_text()), json.loads(out2.read_text())
    assert len(two["estimate"]) == 10 and two["settings"]["num_blocks"] == 3
    assert two["estimate"] == pytest.approx(one["estimate"], rel=1e-6)
    assert two["mean"] == pytest.approx(one["mean"], rel=1e-6)
    assert two["elbo_mean"] == pytest.approx(one["elbo_mean"], rel=1e-6)


def test_nproc_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*TRAIN, "--nproc", "0"])
    assert exit_.value.code == 2
    assert "argument --nproc: expected an integer >= 1, got '0'" in capsys.readouterr().err
