"""Ctrl-C and SIGTERM during training: the current step is finished, a checkpoint of that
point is written, every computed record survives, and the run resumes bit for bit."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from reliability_helpers import (
    FIT_KW,
    assert_same_state,
    binary_data,
    cli,
    state_of,
    tiny_vae,
    wait_for_line,
)

from pyro_aevb import TrainingInterrupted, fit
from pyro_aevb.train import Trainer
from pyro_aevb.train.checkpoint import load_checkpoint


@pytest.fixture(autouse=True)
def _main_thread():
    # signal handlers exist only in the main thread (a test runner running tests elsewhere
    # would get the signals' default behaviour)
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("needs the main thread for signal handlers")


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must reproduce."""
    out = tmp_path_factory.mktemp("straight")
    fit(tiny_vae(), binary_data(), num_samples=960, out_dir=out, **FIT_KW)
    return out


def signal_inside_step(trainer: Trainer, step: int, signum: int) -> None:
    """Deliver ``signum`` to this process in the middle of training step ``step``."""
    real = trainer.objective.train_step

    def train_step(xb, idx, optimizer):
        if trainer.step + 1 == step:
            os.kill(os.getpid(), signum)  # handled at once: between the two halves
        return real(xb, idx, optimizer)

    trainer.objective.train_step = train_step


@pytest.mark.parametrize("signum, step", [(signal.SIGINT, 7), (signal.SIGTERM, 13)])
def test_signal_in_a_step_saves_that_step_and_resumes_exactly(
    straight: Path, tmp_path: Path, signum: int, step: int
) -> None:
    out = tmp_path / "run"
    data = binary_data()
    trainer = Trainer(tiny_vae(), data, num_samples=960, out_dir=out, **FIT_KW)
    signal_inside_step(trainer, step, signum)
    previous = signal.getsignal(signum)
    with pytest.raises(TrainingInterrupted) as info:
        trainer.run()
    assert signal.getsignal(signum) is previous  # handlers restored
    err = info.value
    assert isinstance(err, KeyboardInterrupt) and err.signum == signum
    assert err.step == step and err.samples == 32 * step and err.checkpoint == out / "checkpoint.pt"
    assert load_checkpoint(out / "checkpoint.pt")["progress"]["samples"] == 32 * step
    assert f"at {32 * step:,} samples (step {step})" in str(err)
    fit(tiny_vae(5), data, num_samples=960, out_dir=out, resume=True, **FIT_KW)
    assert_same_state(state_of(out), state_of(straight))


def test_signal_during_an_evaluation_keeps_its_record(straight: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    data = binary_data()
    seen = []

    def callback(trainer, record):  # runs inside the evaluation at 480 samples
        seen.append(record["samples"])
        if record["samples"] == 480:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as info:
        fit(tiny_vae(), data, num_samples=960, out_dir=out, callback=callback, **FIT_KW)
    assert info.value.samples == 480
    history = json.loads((out / "history.json").read_text())
    assert [r["samples"] for r in history] == [160, 320, 480]  # the record of 480 survived
    fit(tiny_vae(), data, num_samples=960, out_dir=out, resume=True, **FIT_KW)
    assert_same_state(state_of(out), state_of(straight))


def test_ctrl_c_during_an_evaluations_save_keeps_the_previous_checkpoint(tmp_path: Path):
    """A second Ctrl-C while the evaluation saves: the state is on disk already, so it is not
    written again (which would make checkpoint.prev.pt a copy of checkpoint.pt)."""
    out = tmp_path / "run"

    def callback(trainer, record):
        if record["samples"] == 480:
            trainer.save()  # the evaluation's save is under way when the interrupt comes
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(tiny_vae(), binary_data(), num_samples=960, out_dir=out, callback=callback, **FIT_KW)
    assert load_checkpoint(out / "checkpoint.pt")["progress"]["samples"] == 480
    assert load_checkpoint(out / "checkpoint.prev.pt")["progress"]["samples"] == 320


def test_a_failed_evaluation_is_evaluated_again_on_resume(straight: Path, tmp_path: Path):
    out = tmp_path / "run"
    data = binary_data()

    def callback(trainer, record):
        if record["samples"] == 640:
            raise RuntimeError("the callback failed")

    with pytest.raises(RuntimeError, match="the callback failed"):
        fit(tiny_vae(), data, num_samples=960, out_dir=out, callback=callback, **FIT_KW)
    saved = load_checkpoint(out / "checkpoint.pt")
    assert saved["progress"]["samples"] == 640 and saved["history"][-1]["samples"] == 480
    resumed = fit(tiny_vae(), data, num_samples=960, out_dir=out, resume=True, **FIT_KW)
    assert [r["samples"] for r in resumed.history] == [160, 320, 480, 640, 800, 960]
    assert_same_state(state_of(out), state_of(straight))


def test_a_second_signal_stops_at_once_without_saving(tmp_path: Path) -> None:
    out = tmp_path / "run"
    trainer = Trainer(tiny_vae(), binary_data(), num_samples=960, out_dir=out, **FIT_KW)
    real = trainer.objective.train_step

    def train_step(xb, idx, optimizer):
        if trainer.step + 1 == 9:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real(xb, idx, optimizer)

    trainer.objective.train_step = train_step
    with pytest.raises(KeyboardInterrupt) as info:
        trainer.run()
    assert not isinstance(info.value, TrainingInterrupted)
    # inside a step: the checkpoint of the last evaluation stays
    assert load_checkpoint(out / "checkpoint.pt")["progress"]["samples"] == 160


def test_wall_time_checkpoints(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "run"
    clock = {"now": 1000.0}
    monkeypatch.setattr(time, "monotonic", lambda: clock["now"])
    trainer = Trainer(
        tiny_vae(),
        binary_data(),
        num_samples=960,
        out_dir=out,
        checkpoint_every_seconds=60,
        **{**FIT_KW, "eval_every": 10_000},
    )
    real = trainer.objective.train_step
    saved_at = []

    def train_step(xb, idx, optimizer):
        clock["now"] += 25.0  # every step takes 25 s of wall time
        return real(xb, idx, optimizer)

    trainer.objective.train_step = train_step
    real_save = trainer.save
    trainer.save = lambda: saved_at.append(trainer.samples) or real_save()
    trainer.run()
    # after 3 steps (75 s >= 60 s), then every 3 steps; the final evaluation saves too
    assert saved_at == [96, 192, 288, 384, 480, 576, 672, 768, 864, 960]


def test_no_time_checkpoints_when_disabled_and_sample_checkpoints(tmp_path: Path) -> None:
    out = tmp_path / "run"
    trainer = Trainer(
        tiny_vae(),
        binary_data(),
        num_samples=640,
        out_dir=out,
        checkpoint_every=200,
        checkpoint_every_seconds=None,
        **{**FIT_KW, "eval_every": 10_000},
    )
    saved_at = []
    real_save = trainer.save
    trainer.save = lambda: saved_at.append(trainer.samples) or real_save()
    trainer.run()
    assert saved_at == [224, 416, 608, 640]


def test_cli_ctrl_c_saves_and_exits_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = cli(
        "train", "--dataset", "embedded-mnist", "--out", str(out), "--latent-dim", "2",
        "--hidden", "16", "--num-samples", "1e8", "--no-progress", "--no-figures",
        "--eval-size", "100",
    )  # fmt: skip
    try:
        wait_for_line(proc.stderr, "training VAE", timeout=120)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("pyro-aevb: training interrupted by SIGINT at ")
    assert f"continue with: pyro-aevb train --out {out} --resume" in last
    samples = int(last.split(" at ")[1].split(" samples")[0].replace(",", ""))
    assert load_checkpoint(out / "checkpoint.pt")["progress"]["samples"] == samples > 0
    assert torch.isfinite(torch.tensor(json.loads((out / "history.json").read_text())[0]["loss"]))
