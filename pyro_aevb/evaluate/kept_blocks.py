"""Finished blocks of a blocked evaluation kept in a file, so that an interrupted one continues.

:func:`~pyro_aevb.evaluate.log_marginal` with ``block_size`` and ``keep_blocks=path`` writes
the results of the blocks finished so far to ``path`` after each block (sealed and atomic, as
a training checkpoint: :func:`~pyro_aevb.train.checkpoint.save_checkpoint`). Called again
with the same evaluation, it estimates only the blocks missing from the file; as every block
is seeded on its own (:func:`~pyro_aevb.evaluate.sharded.block_seed`), the result equals an
uninterrupted run's. "The same evaluation" is recorded as a key: the method and its options,
the seed, the block size, the plate, digests of ``x``, of the global values and of the
parameters and buffers of the programs' modules and of Pyro's param store. A file with
another key is refused, not overwritten (:class:`KeptBlocksMismatch`).

Only results of tensors and plain data can be kept: the Pyro samplers' ArviZ
``InferenceData`` cannot (the evaluation then runs without keeping, with a warning).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import pyro
import torch

from ..poutine import PerDatapointProgram
from ..poutine.params import owner_modules
from ..train.checkpoint import load_checkpoint, save_checkpoint
from ..train.integrity import tensor_digest
from .result import LogMarginalResult

__all__ = ["KeptBlocksMismatch", "evaluation_key", "read_kept_blocks", "write_kept_blocks"]

KIND = "pyro-aevb-kept-blocks"
_FIELDS = ("estimate", "stderr", "method", "settings", "diagnostics", "seconds", "upper")


class KeptBlocksMismatch(ValueError):
    """The file of kept blocks is another evaluation's."""


def _plain(value):
    """``value`` with tensors replaced by their digests, for the key."""
    if isinstance(value, torch.Tensor):
        return {"tensor": tensor_digest([value])}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def _state(model, guide) -> str:
    """A digest of the state the programs read: their modules' parameters and buffers, the
    tensor and number attributes of a plain object whose method is a program, and Pyro's
    param store."""
    programs = []
    for fn in (model, guide):
        if isinstance(fn, PerDatapointProgram):
            programs.extend([fn.model, fn.guide])
        elif fn is not None:
            programs.append(fn)
    programs = [p for p in programs if p is not None]
    tensors, numbers = [], []
    for m in owner_modules(*programs):
        tensors.extend(t for t in m.state_dict().values() if isinstance(t, torch.Tensor))
    for fn in programs:
        owner = getattr(fn, "__self__", None)
        if owner is not None and not isinstance(owner, torch.nn.Module):
            for name, value in sorted(getattr(owner, "__dict__", {}).items()):
                if isinstance(value, torch.Tensor):
                    tensors.append(value)
                elif isinstance(value, bool | int | float | str):
                    numbers.append((name, value))
    tensors.extend(t for _, t in sorted(pyro.get_param_store().named_parameters()))
    return tensor_digest(tensors) + hashlib.sha256(repr(numbers).encode()).hexdigest()[:16]


def evaluation_key(
    model, guide, x: torch.Tensor, *, method: str, options: dict, seed: int, block_size: int,
    plate_name: str, global_values, device,
) -> dict:  # fmt: skip
    """What makes two blocked evaluations the same (see the module docstring)."""
    return {
        "method": method,
        "options": json.dumps(_plain(options), sort_keys=True),
        "seed": int(seed),
        "block_size": int(block_size),
        "num_rows": int(x.shape[0]),
        "plate_name": plate_name,
        "x": tensor_digest([x]),
        "global_values": json.dumps(_plain(global_values), sort_keys=True),
        "parameters": _state(model, guide),
        "device": str(device),
    }


def _storable(value) -> bool:
    if (
        isinstance(value, torch.Tensor)
        or value is None
        or isinstance(value, bool | int | float | str)
    ):
        return True
    if isinstance(value, dict):
        return all(isinstance(k, str | int) and _storable(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_storable(v) for v in value)
    return False


def read_kept_blocks(path: str | os.PathLike, key: dict) -> dict[int, tuple]:
    """``{block: (LogMarginalResult, flagged rows)}`` kept in ``path`` for the evaluation
    ``key`` (none if there is no file). Raises :class:`KeptBlocksMismatch` for another
    evaluation's file, and the checkpoint errors for a damaged one."""
    path = Path(path)
    if not path.exists():
        return {}
    payload = load_checkpoint(path)
    if payload.get("kind") != KIND:
        raise KeptBlocksMismatch(f"{path} is not a file of kept evaluation blocks")
    saved = payload.get("key")
    if saved != key:
        differ = sorted(k for k in key if not isinstance(saved, dict) or saved.get(k) != key[k])
        raise KeptBlocksMismatch(
            f"{path} holds the finished blocks of another evaluation (it differs in: "
            f"{', '.join(differ)}); remove it to start this one afresh"
        )
    out = {}
    for k, (fields, flagged) in payload["blocks"].items():
        result = LogMarginalResult(**fields)
        out[int(k)] = (result, flagged)
    return out


def write_kept_blocks(path: str | os.PathLike, key: dict, blocks: dict[int, tuple]) -> bool:
    """Write ``blocks`` (as :func:`read_kept_blocks` returns them) for the evaluation ``key``;
    ``False`` (and a warning) when their results hold objects that cannot be kept."""
    stored = {}
    for k, (result, flagged) in blocks.items():
        fields = {name: getattr(result, name) for name in _FIELDS}
        fields["upper_stderr"] = result.upper_stderr
        if not (_storable(fields) and _storable(flagged)):
            warnings.warn(
                f"the evaluation's blocks are not kept in {path}: their results hold objects "
                f"other than tensors and plain data (the Pyro samplers' InferenceData); an "
                f"interrupted evaluation starts again",
                UserWarning,
                stacklevel=3,
            )
            return False
        stored[int(k)] = (fields, flagged)
    save_checkpoint(path, {"kind": KIND, "key": key, "blocks": stored}, keep_previous=False)
    return True
