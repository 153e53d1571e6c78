"""The long randomized fault injection (``make reliability``), counted per fault class.

Every trial asserts the property of its class; the counts of what happened go to
``benchmarks/results/reliability.json`` (see ``conftest.py``), which the README's
"Reliability" section quotes. ``PYRO_AEVB_RELIABILITY_SCALE`` scales the trial counts (the
numbers below are the full run's).
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from reliability_helpers import (
    FIT_KW,
    assert_nothing_diverged_kept,
    assert_same_state,
    binary_data,
    cli,
    python_env,
    state_of,
    tiny_vae,
    trials,
    wait_for_line,
)
from reliability_properties import (
    BAD_DATA_STRATEGY,
    FIT_STRATEGY,
    LOG_MARGINAL_STRATEGY,
    MODEL_STRATEGY,
    check_bad_data,
    check_fit_arguments,
    check_log_marginal_options,
    check_model_arguments,
    examples,
)

from pyro_aevb import NonFiniteLossError, fit, load_run
from pyro_aevb.cli import main
from pyro_aevb.train import Trainer
from pyro_aevb.train.checkpoint import CorruptCheckpointError, load_checkpoint
from pyro_aevb.train.integrity import seal

pytestmark = pytest.mark.reliability

# One CLI run, killed or interrupted at random times, then resumed.
TRAIN = ["train", "--dataset", "embedded-mnist", "--latent-dim", "2", "--hidden", "16"]
TRAIN += ["--eval-size", "100", "--no-progress", "--no-figures", "--checkpoint-every", "2000"]
BUDGET = ["--num-samples", "150000"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted CLI run (one torch thread, as the children)."""
    out = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    try:
        assert main(["--threads", "1", *TRAIN, *BUDGET, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return state_of(out)


def resume_in_process(out: Path, fresh: bool) -> None:
    threads = torch.get_num_threads()
    try:
        resume = [] if fresh else ["--resume"]
        assert main(["--threads", "1", *TRAIN, *BUDGET, "--out", str(out), *resume]) == 0
    finally:
        torch.set_num_threads(threads)


def interrupted_run(out: Path, signum: int, delay: float) -> subprocess.CompletedProcess:
    proc = cli(*TRAIN, *BUDGET, "--out", str(out))
    try:
        wait_for_line(proc.stderr, "training VAE", timeout=300)
        time.sleep(delay)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_random_kills_and_interrupts_resume_bit_identically(
    tmp_path: Path, reference: dict, tally, signum: int
) -> None:
    name = signal.Signals(signum).name
    fault = f"{name} at a random time during training, then resume"
    rng = random.Random(int(signum))
    n = trials({signal.SIGKILL: 30, signal.SIGINT: 20, signal.SIGTERM: 10}[signum], 2)
    for trial in range(n):
        out = tmp_path / f"run{trial}"
        done = interrupted_run(out, signum, rng.uniform(0.0, 2.5))
        checkpoint = out / "checkpoint.pt"
        if done.returncode == 0:
            tally.add(fault, "finished before the signal (resume is a no-op)")
        elif done.returncode == -signum and signum != signal.SIGKILL:
            # landed after the command's work, while the interpreter exits (the command's
            # handler is gone): ended by the signal, but the finished run is all saved
            assert "test bound" in done.stdout, done.stdout
            assert load_checkpoint(checkpoint)["progress"]["samples"] >= 150_000
            tally.add(fault, "after the command finished, during exit: the finished run saved")
        elif signum == signal.SIGKILL:
            assert done.returncode == -signal.SIGKILL
            outcome = "saved state resumed bit-identically"
            if not checkpoint.exists():
                outcome = "killed before the first checkpoint; a fresh run took over the lock"
            tally.add(fault, outcome)
        else:
            assert done.returncode == 128 + signum, done.stderr
            assert "Traceback" not in done.stderr
            last = done.stderr.strip().splitlines()[-1]
            if last == f"pyro-aevb: interrupted by {name}":
                # landed outside a training step, after the last one (the final evaluation,
                # the figures): the finished run was saved, the command stopped in one line
                assert "test bound" in done.stdout
                assert load_checkpoint(checkpoint)["progress"]["samples"] >= 150_000
                tally.add(fault, "after the last step: one-line exit, the finished run saved")
            else:
                assert last.startswith(f"pyro-aevb: training interrupted by {name} at ")
                samples = int(last.split(" at ")[1].split(" samples")[0].replace(",", ""))
                assert load_checkpoint(checkpoint)["progress"]["samples"] == samples
                tally.add(
                    fault, "saved at the interrupted step, one-line exit, resumed bit-identically"
                )
        resume_in_process(out, fresh=not checkpoint.exists())
        assert_same_state(state_of(out), reference)


def test_random_bit_flips_never_load(tmp_path: Path, tally) -> None:
    out = tmp_path / "run"
    fit(tiny_vae(), binary_data(), num_samples=320, out_dir=out, **FIT_KW)
    original = (out / "checkpoint.pt").read_bytes()
    target = tmp_path / "flipped.pt"
    rng = np.random.default_rng(7)
    for _ in range(trials(2000, 20)):
        data = bytearray(original)
        flips = 1 if rng.random() < 0.75 else int(rng.integers(2, 64))
        for bit in rng.choice(len(data) * 8, size=flips, replace=False):
            data[bit // 8] ^= 1 << (bit % 8)
        target.write_bytes(bytes(data))
        with pytest.raises(CorruptCheckpointError) as info:
            load_checkpoint(target)
        assert str(target) in str(info.value)
        tally.add(
            "bit flips in checkpoint.pt (1 to 63 bits)",
            "refused before unpickling, file named",
        )


def test_random_truncations_never_load(tmp_path: Path, tally) -> None:
    out = tmp_path / "run"
    fit(tiny_vae(), binary_data(), num_samples=320, out_dir=out, **FIT_KW)
    original = (out / "checkpoint.pt").read_bytes()
    target = tmp_path / "cut.pt"
    rng = np.random.default_rng(8)
    for _ in range(trials(200, 10)):
        kind = rng.integers(3)
        if kind == 0:
            data = original[: rng.integers(len(original))]
        elif kind == 1:  # a block cut out
            start = int(rng.integers(len(original) - 1))
            data = original[:start] + original[start + int(rng.integers(1, 4096)) :]
        else:  # garbage appended
            data = original + rng.bytes(int(rng.integers(1, 256)))
        target.write_bytes(data)
        with pytest.raises(CorruptCheckpointError):
            load_checkpoint(target)
        tally.add("truncated, cut or extended checkpoint.pt", "refused before unpickling")


class Payloads:
    """Code-executing pickles: each would create the canary file if it ran."""

    canary = Path("/tmp/pyro-aevb-reliability-canary")

    @classmethod
    def all(cls) -> dict:
        c = str(cls.canary)

        def reducer(fn, *args):
            class R:
                def __reduce__(self):
                    return (fn, args)

            return R()

        return {
            "os.system": reducer(os.system, f"touch {c}"),
            "subprocess.call": reducer(subprocess.call, ["touch", c]),
            "builtins.exec": reducer(exec, f"open({c!r}, 'w').close()"),
            "builtins.eval": reducer(eval, f"open({c!r}, 'w')"),
            "builtins.open": reducer(open, c, "w"),
            "pathlib.Path.touch": reducer(Path(c).touch),
            "importlib": reducer(__import__, "this"),
            "object array": np.array([reducer(os.system, f"touch {c}")], dtype=object),
            "nested in a tensor dict": {"w": torch.ones(2), "x": [reducer(os.system, "true")]},
            "class instance": reducer(type, "Evil", (), {}),
        }


def _entry_points(out: Path) -> dict:
    data = binary_data()
    return {
        "load_checkpoint": lambda: load_checkpoint(out / "checkpoint.pt"),
        "load_run": lambda: load_run(out),
        "fit(resume=True)": lambda: fit(
            tiny_vae(), data, num_samples=640, out_dir=out, resume=True, **FIT_KW
        ),
        "Trainer(resume=True)": lambda: Trainer(
            tiny_vae(), data, num_samples=640, out_dir=out, resume=True, **FIT_KW
        ),
        "pyro-aevb evaluate": lambda: main(["evaluate", str(out)]),
        "pyro-aevb figures": lambda: main(["figures", str(out)]),
        "pyro-aevb train --resume": lambda: main(["train", "--out", str(out), "--resume"]),
    }


def test_hostile_pickles_through_every_entry_point(tmp_path: Path, tally, capsys) -> None:
    Payloads.canary.unlink(missing_ok=True)
    rounds = trials(3, 1)
    for name, evil in Payloads.all().items():
        for where in ("config", "program_state", "history"):
            out = tmp_path / f"{name}-{where}".replace(" ", "_")
            out.mkdir()
            payload = {"format": "pyro-aevb-checkpoint", "version": 1, where: evil}
            buffer = io.BytesIO()
            torch.save(payload, buffer)
            (out / "checkpoint.pt").write_bytes(seal(buffer.getvalue()))  # a valid seal
            for entry, call in _entry_points(out).items():
                for _ in range(rounds if entry.startswith("pyro-aevb") else 1):
                    try:
                        code = call()
                    except ValueError as err:
                        assert "could not be read safely" in str(err), err
                    else:
                        assert code == 2 and "could not be read safely" in capsys.readouterr().err
                    assert not Payloads.canary.exists(), f"{name} ran through {entry}"
                    tally.add(
                        "code-executing pickles (validly sealed) through 7 entry points",
                        "refused by weights_only loading, no code ran",
                    )


def test_concurrent_runs_into_one_directory(tmp_path: Path, tally) -> None:
    for trial in range(trials(10, 2)):
        for resume in (False, True):
            out = tmp_path / f"run{trial}"
            if resume and not (out / "checkpoint.pt").exists():
                continue
            extra = ["--resume"] if resume else []
            budget = ["--num-samples", str(10**7)]
            procs = [cli(*TRAIN, *budget, "--out", str(out), *extra) for _ in range(2)]
            codes, errs = [], []
            deadline = time.monotonic() + 300
            # the loser exits with status 2 at once; then the winner is stopped with Ctrl-C
            while time.monotonic() < deadline and not any(p.poll() is not None for p in procs):
                time.sleep(0.1)
            for p in procs:
                if p.poll() is None:
                    time.sleep(1.0)
                    p.send_signal(signal.SIGINT)
            for p in procs:
                _, err = p.communicate(timeout=300)
                codes.append(p.returncode)
                errs.append(err)
            assert sorted(codes) == [2, 130], (codes, errs)
            loser = errs[codes.index(2)]
            assert "is in use by another training run" in loser or "holds an earlier run" in loser
            tally.add(
                "two trainings started together into one --out"
                + (" (both --resume)" if resume else ""),
                "exactly one ran, the other refused with a one-line error",
            )


LRS = [10.0**k for k in (2, 3, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)]


@pytest.mark.parametrize("fast", ["auto", "off"])
def test_divergence_over_step_sizes(tmp_path: Path, tally, fast: str) -> None:
    data = binary_data()
    for i, lr in enumerate(LRS[: trials(len(LRS), 4)]):
        out = tmp_path / f"run{i}"
        kwargs = {**FIT_KW, "eval_every": 32, "lr": lr, "optimizer": ("adam", "adagrad")[i % 2]}
        with pytest.raises(NonFiniteLossError) as info:
            fit(tiny_vae(i), data, num_samples=5000, out_dir=out, fast=fast, **kwargs)
        assert str(info.value).startswith("training diverged: ")
        assert "found invalid values" not in str(info.value)
        assert_nothing_diverged_kept(out)
        path = "fast path" if fast == "auto" else "stock Pyro (--fast off)"
        tally.add(
            f"divergence (lr 1e2 to 1e30), {path}",
            "NonFiniteLossError; no diverged checkpoint or record; standard JSON",
        )


def _run_property(tally, fault: str, check, strategy: dict, n: int) -> None:
    @examples(trials(n, 10))
    @given(**strategy)
    def prop(**kwargs):
        tally.add(fault, check(**kwargs))

    prop()


def test_property_based_bad_input(tmp_path_factory, tally) -> None:
    def fit_check(name, value):
        return check_fit_arguments(tmp_path_factory.mktemp("fit"), name, value)

    fault = "hostile argument values (hypothesis)"
    _run_property(tally, f"{fault}: fit", fit_check, FIT_STRATEGY, 150)
    _run_property(
        tally, f"{fault}: log_marginal", check_log_marginal_options, LOG_MARGINAL_STRATEGY, 150
    )
    _run_property(tally, f"{fault}: VAE presets", check_model_arguments, MODEL_STRATEGY, 100)
    _run_property(
        tally,
        "malformed data at 4 entry points (hypothesis)",
        check_bad_data,
        BAD_DATA_STRATEGY,
        60,
    )


def test_child_python_sees_this_checkout() -> None:
    # The children import pyro_aevb from this working tree, not an installed copy.
    out = subprocess.run(
        [sys.executable, "-c", "import pyro_aevb, json; print(json.dumps(pyro_aevb.__file__))"],
        env=python_env(),
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout).startswith(str(Path(__file__).resolve().parents[2]))
