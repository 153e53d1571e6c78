"""A run directory: ``config.json``, ``history.json``, ``checkpoint.pt`` and figures.

:func:`load_run` gives back the trained model of a run written by :func:`pyro_aevb.fit` (with
``out_dir``) so that it can be evaluated or plotted later, in another process: a preset model
(the paper's VAEs) is rebuilt from the run's config; any other model is passed in and its
state loaded into it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..autoguide import build_guide
from ..models.presets import build_model
from ..poutine import ProgramParams, collect_params, owner_modules
from .checkpoint import (
    json_safe,
    load_checkpoint,
    missing_checkpoint_hint,
    previous_checkpoint_path,
    read_json,
)
from .payload import MalformedCheckpointError, check_module_states, check_training_payload
from .resume import config_differences

__all__ = ["CHECKPOINT_NAME", "HISTORY_NAME", "CONFIG_NAME", "RUN_FILES", "Run", "load_run"]

CHECKPOINT_NAME = "checkpoint.pt"
HISTORY_NAME = "history.json"
CONFIG_NAME = "config.json"
#: The files of a run the trainer writes: a folder holding any of them holds a run.
RUN_FILES = (
    CHECKPOINT_NAME,
    previous_checkpoint_path(CHECKPOINT_NAME).name,
    HISTORY_NAME,
    CONFIG_NAME,
)


@dataclass
class Run:
    """A loaded run: the model with its trained parameters, the config and the history.

    ``guide`` is the guide the run trained when it was not the model object's own (an
    amortized autoguide rebuilt from the config, or the one passed to :func:`load_run`),
    else ``None``. ``samples`` is the number of training samples behind the parameters
    loaded: the checkpoint's, which is later than the history's last evaluation when the
    run was interrupted or checkpointed between evaluations.
    """

    module: nn.Module | None
    config: dict[str, Any]
    history: list[dict[str, Any]]
    directory: Path
    guide: Callable | None = None
    samples: int | None = None

    @property
    def dataset(self) -> str | None:
        return self.config.get("dataset")

    @property
    def algorithm(self) -> str | None:
        return self.config.get("training", {}).get("algorithm")


def load_run(run_dir, model=None, guide=None, data: torch.Tensor | None = None) -> Run:
    """Load the last checkpoint of a run directory.

    Parameters
    ----------
    run_dir : path
        A directory written by :func:`pyro_aevb.fit` with ``out_dir``.
    model : nn.Module or callable, optional
        The model object (or Pyro model function) the run trained, built the same way; its
        state is loaded in place. Not needed for preset models (the paper's VAEs), which are
        rebuilt from the run's config.
    guide : callable, optional
        The guide, when ``model`` is a function or the run replaced the model object's own
        guide. Not needed for an amortized autoguide
        (:mod:`pyro_aevb.autoguide`), which is rebuilt from the run's config.
    data : torch.Tensor, optional
        A few rows of data, needed only when the run trained ``pyro.param`` entries outside
        any module: the programs are traced once on them to create those entries, whose
        values are then loaded.

    Returns
    -------
    Run
        ``module`` is the model object (in eval mode), or ``None`` for plain functions;
        ``guide`` the guide trained in place of the model object's own, if any.

    Raises
    ------
    CorruptCheckpointError
        The checkpoint does not match its SHA-256 seal (the message says whether the previous
        checkpoint beside it is intact).
    MalformedCheckpointError
        The checkpoint's payload lacks entries or its weights do not fit the model (checked
        on the meta device for a preset, so an absurd config allocates nothing).
    ValueError
        ``model`` (or an amortized autoguide passed as ``guide``) records a config (a preset
        model, :attr:`pyro_aevb.models.VAE.config`) that differs from the run's: its weights
        would be loaded into another model. Every differing setting is named, as on resume
        (the initialisation scale may differ: the checkpoint overwrites it). A model without a
        config of its own (a user's module or function) is checked by parameter shapes only.
    """
    run_dir = Path(run_dir)
    checkpoint = run_dir / CHECKPOINT_NAME
    if not checkpoint.is_file():
        hint = missing_checkpoint_hint(checkpoint, "")
        if hint:  # a damaged run: the previous checkpoint is there, or something else is
            raise FileNotFoundError(f"there is no checkpoint at {checkpoint}; {hint}")
        raise FileNotFoundError(
            f"{run_dir} is not a run directory: {CHECKPOINT_NAME} is missing (train one with "
            f"`pyro-aevb train --out {run_dir}` or pyro_aevb.fit(..., out_dir=...))"
        )
    payload = load_checkpoint(checkpoint)
    check_training_payload(payload, checkpoint)
    config = payload["config"]
    state = payload["program_state"]
    if model is None:
        if not config.get("model"):
            raise ValueError(
                f"run {run_dir} trained a {config.get('model_class')}, which is not a preset "
                f"model: build it the same way and pass it, load_run({str(run_dir)!r}, "
                f"model=...)"
            )
        model = _build_checked(config["model"], state, checkpoint)
    else:
        _check_configs(run_dir, config, model, guide)
    module = model if isinstance(model, nn.Module) else None
    has_programs = callable(getattr(model, "model", None))
    if guide is None and config.get("guide"):
        guide = build_guide(config["guide"], model.model if has_programs else model)
    if guide is None and has_programs:
        programs = [p for p in (model.model, getattr(model, "guide", None)) if callable(p)]
    else:
        programs = [p for p in (model.model if has_programs else model, guide) if p is not None]
    # the same modules, in the same order, as the trainer's TrainingProgram
    modules = owner_modules(*programs)
    if state.get("store"):
        if data is None:
            raise ValueError(
                f"run {run_dir} trained param-store entries {sorted(state['store'])}: pass "
                f"data= (a few rows) so that the programs can create them before loading"
            )
        params = collect_params(programs, data[:2], modules=modules)
    else:
        params = ProgramParams(modules, [])
    check_module_states(state, params.modules, checkpoint)
    params.load_state_dict(state)
    if module is not None:
        module.eval()
    if isinstance(guide, nn.Module):
        guide.eval()
    own = guide is None or getattr(guide, "__self__", None) is model
    _warn_if_run_files_differ(run_dir, {CONFIG_NAME: config, HISTORY_NAME: payload["history"]})
    return Run(
        module=module,
        config=config,
        history=payload["history"],
        directory=run_dir,
        guide=None if own else guide,
        samples=payload["progress"]["samples"],
    )


def _check_configs(run_dir: Path, config: dict[str, Any], model, guide) -> None:
    """Refuse a ``model`` (or ``guide``) whose recorded config differs from the run's, with
    the comparison :func:`fit` makes on resume; objects without a config are not compared."""
    owner = model if isinstance(model, nn.Module) else getattr(model, "__self__", None)
    given = {"model": getattr(owner, "config", None), "guide": getattr(guide, "config", None)}
    saved = {key: config.get(key) for key, value in given.items() if value is not None}
    differ = config_differences(saved, {key: given[key] for key in saved})
    if differ:
        raise ValueError(
            f"cannot load run {run_dir} into the model given: these settings differ from the "
            f"run's (checkpoint: the run's value; now: the one given): {'; '.join(differ)}. "
            f"Build it the way the run did "
            f"(or, for a preset, leave model= out: load_run rebuilds it from the run's config)"
        )


def _build_checked(config: dict[str, Any], state: dict[str, Any], checkpoint: Path) -> nn.Module:
    """The preset model of ``config``, after checking on the meta device (no memory) that its
    parameters have the shapes the checkpoint holds: a config that does not describe the
    saved weights (or asks for absurd sizes) is refused before anything is allocated."""
    # the model's own state comes first (an autoguide's, if any, follows; checked later)
    saved = state["modules"][:1]
    # a run trained in float64 (fit(dtype=...)): the preset is rebuilt in its dtype
    dtypes = {
        v.dtype
        for sd in saved
        for v in (sd.values() if isinstance(sd, dict) else ())
        if isinstance(v, torch.Tensor) and v.is_floating_point()
    }
    dtype = dtypes.pop() if dtypes in ({torch.float32}, {torch.float64}) else None
    try:
        with torch.device("meta"):
            skeleton = build_model(config).to(dtype)
    except (TypeError, ValueError, KeyError) as err:
        raise MalformedCheckpointError(
            f"checkpoint {checkpoint}: its model config cannot be built: {err}"
        ) from err
    check_module_states({"modules": saved}, [skeleton], checkpoint)
    return build_model(config).to(dtype)


def _warn_if_run_files_differ(run_dir: Path, saved: dict[str, Any]) -> None:
    """Warn when ``config.json``/``history.json`` are not the checkpoint's own: the trainer
    writes them right after each checkpoint, so a difference means a checkpoint copied from
    another run, a file edited by hand, or a crash between the writes. The checkpoint is what
    is loaded (it is sealed; the JSON files are for reading)."""
    for name, value in saved.items():
        path = run_dir / name
        try:
            on_disk = read_json(path)
        except (OSError, ValueError):  # missing or unreadable: nothing to compare
            continue
        expected = json.loads(json.dumps(json_safe(value)))
        if on_disk == expected:
            continue
        if isinstance(on_disk, dict) and isinstance(expected, dict):
            keys = sorted(k for k in on_disk.keys() | expected.keys()
                          if on_disk.get(k) != expected.get(k))  # fmt: skip
            what = f"in {', '.join(map(repr, keys))}"
        else:
            what = "in its records"
        warnings.warn(
            f"{path} differs from the checkpoint's own copy {what}: the checkpoint, which is "
            f"sealed, is what is loaded (a checkpoint copied from another run, a file edited "
            f"by hand, or a crash between the two writes; the file is rewritten at the run's "
            f"next save)",
            UserWarning,
            stacklevel=3,
        )
