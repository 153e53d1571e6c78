"""The structure of a training checkpoint's payload, checked before any of it is used.

A sealed checkpoint that loads with ``weights_only=True`` can still be malformed (written by
hand or by other code): a key missing, a number where a tensor belongs, a permutation with
indices out of range. :func:`check_training_payload` checks every entry the trainer and
:func:`~pyro_aevb.train.runs.load_run` read, so such a file is a ``ValueError`` that names the
file and the entry instead of a ``KeyError`` or a crash many steps later.

The payload (see :meth:`pyro_aevb.train.Trainer.state`)::

    config           dict       the run's config (model, training settings, data fingerprints)
    program_state    dict       {"modules": [state_dict, ...], "store": {name: tensor},
                                 "buffers": {name: tensor} (if the programs run modules
                                 through pyro.module that have buffers)}
    optimizer_state  dict       torch.optim state_dict: {"state": {...}, "param_groups": [...]}
    rng              dict       {"torch": uint8 tensor, "data": uint8 tensor}
    progress         dict       step, samples, epoch, pos, loss_count (ints >= 0),
                                train_seconds, loss_sum (finite numbers),
                                perm (int64 tensor of shape (N,) or (0,))
    history          list       evaluation records (dicts with an int "samples")
    objective_state  dict       the objective's own state (optional)
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import torch

from ..autoguide import AmortizedGuide

__all__ = [
    "MalformedCheckpointError",
    "check_training_payload",
    "check_restorable",
    "check_generator_state",
    "check_permutation",
    "check_module_states",
    "check_optimizer_state",
]


class MalformedCheckpointError(ValueError):
    """A checkpoint whose payload does not have the structure the trainer writes."""


def _fail(path, what: str) -> MalformedCheckpointError:
    return MalformedCheckpointError(
        f"checkpoint {path} is malformed: {what}. It was not written by pyro-aevb's trainer as "
        f"it is now; nothing was loaded from it"
    )


def _is_int(value, minimum: int = 0) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= minimum


def _positive_int(value) -> bool:
    return _is_int(value) and value >= 1


def _is_finite(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


# torch.nn.Module saves get_extra_state() under this key suffix (a private torch constant)
_EXTRA_STATE_KEY_SUFFIX = "_extra_state"


def _is_extra_state(key: str) -> bool:
    # a module's get_extra_state() (e.g. an autoguide's row shape) is saved under this key
    return key.endswith(_EXTRA_STATE_KEY_SUFFIX)


def _tensor_dict(value, extra_state: bool = False) -> bool:
    """A dict of tensors by name (``extra_state``: a module's extra state may be anything)."""
    return isinstance(value, dict) and all(
        isinstance(k, str) and (isinstance(v, torch.Tensor) or (extra_state and _is_extra_state(k)))
        for k, v in value.items()
    )


def check_training_payload(payload: dict[str, Any], path: str | Path) -> None:
    """Check what :func:`~pyro_aevb.train.runs.load_run` and the command line read:
    ``config`` (with its ``training`` settings), ``program_state``, ``history`` and the
    samples trained (``progress``). Raises :class:`MalformedCheckpointError`."""
    for key, kind in (("config", dict), ("program_state", dict), ("history", list)):
        if not isinstance(payload.get(key), kind):
            raise _fail(path, f"'{key}' must be a {kind.__name__}, got {type(payload.get(key))}")
    state = payload["program_state"]
    modules = state.get("modules")
    if not isinstance(modules, list) or not all(_tensor_dict(m, True) for m in modules):
        raise _fail(path, "program_state['modules'] must be a list of state dicts of tensors")
    if not _tensor_dict(state.get("store", {})):
        raise _fail(path, "program_state['store'] must map parameter names to tensors")
    if not _tensor_dict(state.get("buffers", {})):
        raise _fail(path, "program_state['buffers'] must map buffer names to tensors")
    tensors = [
        (f"module {i} {k}", v)
        for i, m in enumerate(modules)
        for k, v in m.items()
        if isinstance(v, torch.Tensor)
    ]
    tensors += [(f"param '{k}'", v) for k, v in state.get("store", {}).items()]
    tensors += [(f"buffer '{k}'", v) for k, v in state.get("buffers", {}).items()]
    for name, value in tensors:
        # the trainer never saves a diverged state
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise _fail(path, f"{name} holds non-finite values")
    for i, record in enumerate(payload["history"]):
        if not isinstance(record, dict) or not _is_int(record.get("samples")):
            raise _fail(path, f"history record {i} must be a dict with an int 'samples'")
    model = payload["config"].get("model")
    if model is not None and not isinstance(model, dict):
        raise _fail(path, f"config['model'] must be a dict or None, got {type(model)}")
    if not isinstance(payload["config"].get("training"), dict):
        got = type(payload["config"].get("training"))
        raise _fail(path, f"config['training'] must be a dict (the run's settings), got {got}")
    progress = payload.get("progress")
    if not isinstance(progress, dict):
        raise _fail(path, "'progress' must be a dict")
    if not _is_int(progress.get("samples")):
        got = progress.get("samples")
        raise _fail(path, f"progress['samples'] must be an int >= 0, got {got!r}")


def check_restorable(payload: dict[str, Any], path: str | Path) -> None:
    """Check everything a resumed :class:`~pyro_aevb.train.Trainer` reads, on top of
    :func:`check_training_payload`. Raises :class:`MalformedCheckpointError`."""
    check_training_payload(payload, path)
    opt = payload.get("optimizer_state")
    if (
        not isinstance(opt, dict)
        or not isinstance(opt.get("state"), dict)
        or not isinstance(opt.get("param_groups"), list)
        or not all(isinstance(g, dict) for g in opt["param_groups"])
    ):
        raise _fail(path, "'optimizer_state' must be a torch.optim state_dict")
    rng = payload.get("rng")
    if not isinstance(rng, dict):
        raise _fail(path, "'rng' must be a dict")
    for key in ("torch", "data"):
        value = rng.get(key)
        if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or value.dim() != 1:
            raise _fail(path, f"rng['{key}'] must be a 1-D uint8 tensor (a generator state)")
    progress = payload["progress"]  # a dict (check_training_payload)
    for key in ("step", "samples", "epoch", "pos", "loss_count"):
        if not _is_int(progress.get(key)):
            raise _fail(path, f"progress['{key}'] must be an int >= 0, got {progress.get(key)!r}")
    for key in ("train_seconds", "loss_sum"):
        if not _is_finite(progress.get(key)):
            raise _fail(path, f"progress['{key}'] must be a finite number")
    perm = progress.get("perm")
    if not isinstance(perm, torch.Tensor) or perm.dtype != torch.int64 or perm.dim() != 1:
        raise _fail(path, "progress['perm'] must be a 1-D int64 tensor")
    if progress["pos"] > perm.numel():
        raise _fail(path, f"progress['pos'] ({progress['pos']}) is past the permutation's end")
    objective_state = payload.get("objective_state", {})
    if not isinstance(objective_state, dict):
        raise _fail(path, "'objective_state' must be a dict")
    for i, record in enumerate(payload["history"]):
        if record["samples"] > progress["samples"]:
            raise _fail(
                path,
                f"history record {i} is at {record['samples']} samples, past the "
                f"{progress['samples']} the checkpoint has trained",
            )
    parallel = payload["config"].get("data_parallel")
    if parallel is not None and (
        not isinstance(parallel, dict) or not _positive_int(parallel.get("shards", 1))
    ):
        raise _fail(path, f"config['data_parallel'] must hold an int shards >= 1, got {parallel!r}")


def check_generator_state(saved: torch.Tensor, current: torch.Tensor, name: str, path) -> None:
    """A saved generator state must have the size of this torch's generator state."""
    if saved.numel() != current.numel():
        raise _fail(
            path,
            f"rng['{name}'] holds {saved.numel()} bytes, but a generator state here has "
            f"{current.numel()}",
        )


def check_permutation(perm: torch.Tensor, num_train: int, path) -> None:
    """The epoch's permutation: empty (before the first epoch) or of ``range(num_train)``."""
    if perm.numel() == 0:
        return
    if perm.numel() != num_train or not torch.equal(perm.sort().values, torch.arange(num_train)):
        raise _fail(path, f"progress['perm'] is not a permutation of the {num_train} rows")


def check_module_states(state: dict, modules, path) -> None:
    """Every module's saved state has its keys, shapes and dtypes (checked before loading, so
    a refused checkpoint leaves the modules as they were)."""
    saved = state["modules"]
    if len(saved) != len(modules):
        raise _fail(
            path,
            f"it holds the state of {len(saved)} module(s), the programs have {len(modules)}",
        )
    for module, sd in zip(modules, saved, strict=True):
        if isinstance(module, AmortizedGuide):
            try:
                module.build_for_state(sd)
            except (ValueError, TypeError, RuntimeError) as err:
                raise _fail(path, f"its {type(module).__name__} cannot be rebuilt: {err}") from err
        own = module.state_dict()
        name = type(module).__name__
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        if missing or unexpected:
            raise _fail(
                path,
                f"the state of {name} lacks {missing} and has unexpected {unexpected}",
            )
        for key, value in own.items():
            if _is_extra_state(key):
                continue
            if tuple(sd[key].shape) != tuple(value.shape) or sd[key].dtype != value.dtype:
                raise _fail(
                    path,
                    f"{name}.{key} has shape {tuple(sd[key].shape)} ({sd[key].dtype}), the "
                    f"model's has {tuple(value.shape)} ({value.dtype})",
                )


def check_optimizer_state(state: dict, params: list[torch.Tensor], path) -> None:
    """The optimizer state covers these parameters, with per-parameter tensors of their
    shapes (torch checks the groups' sizes but not the tensors)."""
    indices = [i for g in state["param_groups"] for i in g.get("params", [])]
    if len(indices) != len(params):
        raise _fail(
            path, f"the optimizer state is for {len(indices)} parameters, the run has {len(params)}"
        )
    by_index = dict(zip(indices, params, strict=True))
    for index, entry in state["state"].items():
        param = by_index.get(index)
        if param is None or not isinstance(entry, dict):
            raise _fail(path, f"the optimizer state has an entry for unknown parameter {index!r}")
        for key, value in entry.items():
            if not isinstance(value, torch.Tensor):
                continue
            if value.dim() > 0 and tuple(value.shape) != tuple(param.shape):
                raise _fail(
                    path,
                    f"the optimizer's '{key}' for parameter {index} has shape "
                    f"{tuple(value.shape)}, the parameter {tuple(param.shape)}",
                )
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise _fail(path, f"the optimizer's '{key}' for parameter {index} is not finite")
