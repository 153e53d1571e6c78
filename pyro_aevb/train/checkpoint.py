"""Checkpoints and run files: atomic writes, and loading without unpickling arbitrary objects.

A checkpoint is a ``torch.save`` file of a plain dictionary holding only tensors, numbers,
strings, lists and dicts (model ``state_dict``, ``torch.optim`` state, RNG states, progress,
history), so :func:`load_checkpoint` reads it with ``torch.load(weights_only=True)``: a
checkpoint from an untrusted source cannot execute code. Every file is written to a temporary
name in the same directory and moved into place with :func:`os.replace`, so a crash while
saving never leaves a truncated file where the last good one was.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "write_json_atomic",
    "read_json",
]

CHECKPOINT_FORMAT = "pyro-aevb-checkpoint"
CHECKPOINT_VERSION = 1


def _atomic_write(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Atomically write ``payload`` (plain data and tensors only) as a checkpoint file."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    return _atomic_write(Path(path), lambda f: torch.save(payload, f))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, refusing anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, or one holding arbitrary pickled objects
        raise ValueError(
            f"checkpoint {str(path)!r} could not be read safely (weights_only=True): {err}"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r} is not a pyro-aevb checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"checkpoint {str(path)!r} has version {payload.get('version')!r}; this "
            f"pyro-aevb reads version {CHECKPOINT_VERSION}"
        )
    return payload


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    data = (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()
    return _atomic_write(Path(path), lambda f: f.write(data))


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)
