"""Divergence on every path: the same NonFiniteLossError on the fast path and on stock Pyro
(whose argument validation fails before a loss exists), no checkpoint or history record of a
diverged state, standard JSON, and advice that can be followed (resume with a smaller lr)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from reliability_helpers import (
    FIT_KW,
    assert_nothing_diverged_kept,
    binary_data,
    strict_json,
    tiny_vae,
)

from pyro_aevb import NonFiniteLossError, fit
from pyro_aevb.cli import main
from pyro_aevb.train.checkpoint import load_checkpoint, write_json_atomic


@pytest.mark.parametrize("fast", ["auto", "off"])
@pytest.mark.parametrize("lr", [1e2, 1e30])
def test_huge_lr_is_a_non_finite_loss_error_on_both_paths(tmp_path: Path, fast, lr) -> None:
    out = tmp_path / "run"
    data = binary_data()
    kwargs = {**FIT_KW, "eval_every": 32, "lr": lr, "optimizer": "adam"}
    with pytest.raises(NonFiniteLossError) as info:
        fit(tiny_vae(), data[:256], data[256:], num_samples=2000, out_dir=out, fast=fast, **kwargs)
    message = str(info.value)
    assert message.startswith("training diverged: ")
    assert f"Try a smaller lr (now {lr}" in message
    assert "found invalid values" not in message and "tensor(" not in message  # no dump
    assert_nothing_diverged_kept(out)


def test_diverged_record_is_not_kept_and_a_smaller_lr_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    data = binary_data()
    fit(tiny_vae(), data, num_samples=320, out_dir=out, **FIT_KW)
    # the run goes on with a far too large step size and diverges
    with pytest.raises(NonFiniteLossError, match="last good checkpoint") as info:
        _diverge(out, data)
    assert "a resumed run may lower it" in str(info.value)
    assert_nothing_diverged_kept(out)
    before = load_checkpoint(out / "checkpoint.pt")["progress"]["samples"]
    # the advice can be followed: resume with a smaller lr, recorded in history and config
    with pytest.raises(ValueError, match="may lower its step size .*, not raise it"):
        fit(tiny_vae(), data, num_samples=640, out_dir=out, resume=True, **{**FIT_KW, "lr": 0.5})
    result = fit(
        tiny_vae(), data, num_samples=640, out_dir=out, resume=True, **{**FIT_KW, "lr": 0.01}
    )
    assert [r["lr"] for r in result.history] == [0.05, 0.05, 0.01, 0.01]
    config = strict_json(out / "config.json")
    assert config["training"]["lr"] == 0.01
    assert config["lr_changes"] == [{"samples": before, "from": 0.05, "to": 0.01}]
    # resuming again without lr keeps the lowered one
    again = fit(tiny_vae(), data, num_samples=960, out_dir=out, resume=True, **_no_lr(FIT_KW))
    assert again.history[-1]["lr"] == 0.01 and again.config["lr_changes"] == config["lr_changes"]


def _no_lr(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k != "lr"}


def _diverge(out: Path, data: torch.Tensor) -> None:
    """Continue the run in ``out`` with its parameters blown up: the next bound is -inf/NaN."""
    from pyro_aevb.train import Trainer

    trainer = Trainer(tiny_vae(), data, num_samples=3200, out_dir=out, resume=True, **FIT_KW)
    real = trainer.objective.train_step

    def train_step(xb, idx, optimizer):
        loss = real(xb, idx, optimizer)
        if trainer.step == 12:
            with torch.no_grad():  # finite but absurd: the bound is no longer finite
                for p in trainer.objective.params:
                    p.mul_(1e18)
        return loss

    trainer.objective.train_step = train_step
    trainer.run()


def test_json_files_are_standard(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "a.json", {"x": [1.0, float("nan"), float("-inf")], "y": 2})
    assert strict_json(tmp_path / "a.json") == {"x": [1.0, None, None], "y": 2}


def test_cli_divergence_with_fast_off_is_one_line(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = ["train", "--dataset", "embedded-mnist", "--out", str(out), "--latent-dim", "2"]
    args += ["--hidden", "16", "--num-samples", "2000", "--no-progress", "--no-figures"]
    args += ["--fast", "off", "--lr", "1e30", "--eval-size", "100"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "pyro-aevb: error: training diverged" in err and "Traceback" not in err
    assert "Expected parameter" not in err or "found invalid values" not in err
