"""Helpers of the fault-injection suite (``tests/reliability``): tiny runs, bit-identical
state comparison, child processes (the CLI, a light lock holder), trial counts."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from pyro_aevb import mlp_vae

ROOT = Path(__file__).resolve().parents[1]
SCALE_ENV = "PYRO_AEVB_RELIABILITY_SCALE"


def scale() -> float:
    """``PYRO_AEVB_RELIABILITY_SCALE`` (default 1): scales every long trial count."""
    return float(os.environ.get(SCALE_ENV, "1"))


def trials(full: int, minimum: int = 1) -> int:
    """The number of trials of a class: ``full`` at scale 1."""
    return max(minimum, round(full * scale()))


# --------------------------------------------------------------------------- tiny runs


def binary_data(n: int = 320, d: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g) < 0.3).float()


def tiny_vae(seed: int = 0, d: int = 12, latent: int = 2, hidden=(8,), **kwargs):
    torch.manual_seed(seed)
    return mlp_vae(d, latent, hidden, init_std=0.1, **kwargs)


FIT_KW = dict(batch_size=32, lr=0.05, seed=3, eval_every=160, eval_size=100, progress=False)


def state_of(directory: Path) -> dict:
    """Everything a resumed run must reproduce: parameters, optimizer state, RNG, progress
    and the history's numbers (not its wall times)."""
    from pyro_aevb.train.checkpoint import load_checkpoint

    payload = load_checkpoint(directory / "checkpoint.pt")
    history = [
        {k: v for k, v in r.items() if k not in ("wall_seconds", "train_seconds")}
        for r in payload["history"]
    ]
    progress = {k: v for k, v in payload["progress"].items() if k != "train_seconds"}
    return {
        "program_state": payload["program_state"],
        "optimizer_state": payload["optimizer_state"],
        "rng": payload["rng"],
        "progress": progress,
        "history": history,
    }


def assert_same_state(a: dict, b: dict) -> None:
    """Bit-identical (tensors with torch.equal, numbers with ==)."""

    def same(x, y, where):
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor) and torch.equal(x, y), where
        elif isinstance(x, dict):
            assert isinstance(y, dict) and sorted(x, key=str) == sorted(y, key=str), where
            for k in x:
                same(x[k], y[k], f"{where}.{k}")
        elif isinstance(x, list | tuple):
            assert len(x) == len(y), where
            for i, (u, v) in enumerate(zip(x, y)):
                same(u, v, f"{where}[{i}]")
        else:
            assert x == y or (x != x and y != y), f"{where}: {x!r} != {y!r}"

    same(a, b, "state")


# --------------------------------------------------------------------------- subprocesses


def python_env() -> dict:
    """The environment for a child Python that imports this checkout's pyro_aevb."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    env.pop(SCALE_ENV, None)
    return env


def cli(*args: str, **kwargs) -> subprocess.Popen:
    """Start ``python -m pyro_aevb.cli ARGS`` (one torch thread), pipes for its output."""
    return subprocess.Popen(
        [sys.executable, "-m", "pyro_aevb.cli", "--threads", "1", *args],
        cwd=ROOT,
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


LOCK_HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("lock", sys.argv[1])
lock = importlib.util.module_from_spec(spec); spec.loader.exec_module(lock)
held = lock.RunLock(sys.argv[2]).acquire()
print("locked", flush=True)
time.sleep(float(sys.argv[3]))
"""


def hold_lock(directory: Path, seconds: float = 60.0) -> subprocess.Popen:
    """A light child process (no torch) that holds ``directory``'s run lock."""
    module = ROOT / "pyro_aevb" / "train" / "lock.py"
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(module), str(directory), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def wait_for_line(stream, needle: str, timeout: float) -> list[str]:
    """Read ``stream`` line by line until one contains ``needle``; the lines read."""
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not seen in {timeout} s; got {''.join(lines)!r}")


# --------------------------------------------------------------------------- divergence


def strict_json(path: Path):
    """Parse as standard JSON: NaN and Infinity are errors."""

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


def assert_nothing_diverged_kept(out: Path) -> None:
    if not (out / "checkpoint.pt").exists():
        assert not (out / "history.json").exists()
        return
    from pyro_aevb.train.checkpoint import load_checkpoint

    payload = load_checkpoint(out / "checkpoint.pt")
    for state in payload["program_state"]["modules"]:
        assert all(torch.isfinite(v).all() for v in state.values())
    for record in strict_json(out / "history.json"):
        for key in ("loss", "train_bound", "test_bound"):
            assert record.get(key) is None or math.isfinite(record[key])
    assert strict_json(out / "history.json") == json.loads(json.dumps(payload["history"]))
