"""Run directories: one live job per directory (a stale lock after kill -9 is taken over),
and a resume that compares every setting that changes the run, and the data."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from reliability_helpers import FIT_KW, binary_data, hold_lock, tiny_vae

from pyro_aevb import fit
from pyro_aevb.cli import main
from pyro_aevb.train import RunLockedError, Trainer
from pyro_aevb.train.lock import LOCK_NAME, RunLock


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    fit(tiny_vae(), binary_data(), num_samples=320, out_dir=out, **FIT_KW)
    return out


def copy_run(run_dir: Path, out: Path) -> Path:
    out.mkdir()
    for p in run_dir.iterdir():
        if p.is_file():
            (out / p.name).write_bytes(p.read_bytes())
    return out


# --------------------------------------------------------------------------- the lock


def test_a_second_run_into_a_live_directory_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = Trainer(tiny_vae(), binary_data(), num_samples=320, out_dir=out, **FIT_KW)
    for resume in (False, True):
        with pytest.raises(RunLockedError, match=f"process {os.getpid()} on "):
            fit(tiny_vae(), binary_data(), num_samples=320, out_dir=out, resume=resume, **FIT_KW)
    first.run()  # the first one is unaffected, and releases the lock when done
    fit(tiny_vae(), binary_data(), num_samples=640, out_dir=out, resume=True, **FIT_KW)


def test_another_process_holding_the_lock_and_a_stale_lock(tmp_path: Path, caplog) -> None:
    out = tmp_path / "run"
    holder = hold_lock(out)
    try:
        with pytest.raises(RunLockedError) as info:
            fit(tiny_vae(), binary_data(), num_samples=320, out_dir=out, **FIT_KW)
        assert f"in use by another training run (process {holder.pid} on " in str(info.value)
        assert not (out / "checkpoint.pt").exists()
        holder.send_signal(signal.SIGKILL)  # kill -9: no chance to clean up
        holder.wait()
    finally:
        holder.kill()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid  # left behind
    fit(tiny_vae(), binary_data(), num_samples=320, out_dir=out, **FIT_KW)
    assert f"taking over the lock left by process {holder.pid}" in caplog.text
    assert (out / LOCK_NAME).read_text() == ""  # released normally


def test_a_refused_trainer_leaves_the_lock_free(tmp_path: Path, run_dir: Path) -> None:
    out = copy_run(run_dir, tmp_path / "run")
    with pytest.raises(FileExistsError, match="resume=True"):
        Trainer(tiny_vae(), binary_data(), num_samples=320, out_dir=out, **FIT_KW)
    with RunLock(out) as lock:
        assert lock.held and lock.took_over is None


# --------------------------------------------------------------------------- resume


CHANGES = {
    "latent size": (lambda: {"model": tiny_vae(latent=3)}, ["model.latent_dim"]),
    "hidden size": (lambda: {"model": tiny_vae(hidden=(9,))}, ["model.hidden_dims"]),
    "no weight prior": (
        lambda: {"model": tiny_vae(weight_prior_std=None)},
        ["model.weight_prior_std"],
    ),
    "batch and seed": (
        lambda: {"batch_size": 16, "seed": 4},
        ["training.batch_size", "training.seed"],
    ),
    "estimator": (lambda: {"estimator": "A"}, ["training.objective.estimator"]),
    "optimizer": (lambda: {"optimizer": "adam"}, ["training.optimizer"]),
    "same-size data": (lambda: {"train": binary_data(seed=1)}, ["data.train"]),
    "data shape": (
        lambda: {"train": binary_data()[:, :11], "model": tiny_vae(d=11)},
        ["data.train", "event_shape", "model.data_dim"],
    ),
}


@pytest.mark.parametrize("case", sorted(CHANGES))
def test_resume_names_every_setting_that_differs(tmp_path, run_dir, case) -> None:
    make, names = CHANGES[case]
    change = make()
    out = copy_run(run_dir, tmp_path / "run")
    kwargs = {**FIT_KW, **{k: v for k, v in change.items() if k not in ("model", "train")}}
    model = change.get("model", tiny_vae())
    data = change.get("train", binary_data())
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="cannot resume the run in") as info:
        fit(model, data, num_samples=640, out_dir=out, resume=True, **kwargs)
    message = str(info.value)
    for name in names:
        assert f"{name} (checkpoint: " in message
    assert message.count("(checkpoint: ") == len(names)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_same_size_other_data_message(tmp_path: Path, run_dir: Path) -> None:
    out = copy_run(run_dir, tmp_path / "run")
    other = binary_data(seed=1)
    with pytest.raises(ValueError, match=r"data.train \(checkpoint: 320x12 float32, sha256 "):
        fit(tiny_vae(), other, num_samples=640, out_dir=out, resume=True, **FIT_KW)
    # the test data are fingerprinted too
    with pytest.raises(ValueError, match="data.test"):
        fit(tiny_vae(), binary_data(), other, num_samples=640, out_dir=out, resume=True, **FIT_KW)


def test_cli_resume_with_other_model_options_is_refused(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = ["train", "--dataset", "embedded-mnist", "--out", str(out), "--no-progress"]
    args += ["--no-figures", "--eval-size", "100", "--num-samples", "300"]
    assert main([*args, "--latent-dim", "2", "--hidden", "16", "--no-weight-prior"]) == 0
    capsys.readouterr()
    resume = [*args[:-1], "600", "--resume"]
    for extra, says in (
        (["--latent-dim", "3"], "--latent-dim 3 (the run's: 2)"),
        (["--hidden", "17"], "--hidden 17 (the run's hidden layers: 16)"),
        (["--latent-dim", "5", "--hidden", "8"], "--latent-dim 5 (the run's: 2); --hidden 8"),
    ):
        assert main([*resume, *extra]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err
    # the run's own options (or none) continue it; its data set is the default on resume
    assert main([*resume, "--latent-dim", "2", "--no-weight-prior"]) == 0
    assert json.loads((out / "history.json").read_text())[-1]["samples"] == 600
    resume_no_dataset = [a for a in resume if a not in ("--dataset", "embedded-mnist")]
    assert main([*resume_no_dataset[:-2], "700", "--resume"]) == 0


def test_cli_weight_prior_change_on_resume_is_refused(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = ["train", "--dataset", "embedded-mnist", "--out", str(out), "--no-progress"]
    args += ["--no-figures", "--eval-size", "100", "--latent-dim", "2", "--hidden", "16"]
    assert main([*args, "--num-samples", "200"]) == 0
    capsys.readouterr()
    assert main([*args, "--num-samples", "400", "--resume", "--no-weight-prior"]) == 2
    assert "--no-weight-prior (the run has the N(0, 1.0^2) prior)" in capsys.readouterr().err
