r"""Minibatch AEVB training (Algorithm 1) with evaluation, history and exact resume.

Each step draws a minibatch of ``M`` rows without replacement (a fresh permutation per epoch),
evaluates the minibatch objective of eq. 8 with the chosen estimator and takes one optimizer
step::

    loss = -(N/M) sum_{i in batch} L(theta, phi; x_i) - log p(theta, phi)
    (theta, phi) <- Adagrad/Adam step on grad(loss)

The loss divided by N is reported as the per-datapoint objective. At scheduled points the
per-datapoint bound ``L_i`` is evaluated on fixed train and test subsets (under a forked RNG,
with the modules in eval mode and their buffers restored after, as a validation pass runs, so
evaluation never changes the training draws or state) and appended to the history, which is saved
as ``history.json``; checkpoints (``checkpoint.pt``) hold everything needed to continue the
same run exactly: parameters, optimizer state, both RNG states, the epoch's permutation and
the position in it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..autoguide import AmortizedGuide
from ..device import (
    device_rng_state,
    fork_rng,
    module_device,
    module_dtype,
    place_modules,
    resolve_device,
    resolve_dtype,
    set_device_rng_state,
)
from ..infer.objectives import ALGORITHMS, FAST_MODES, BoundObjective, MonteCarloEM, Objective
from ..mcmc.hmc import NonFinitePotentialError
from ..models.vae import VAE
from ..nn.mlp import MLP
from ..poutine import TrainingProgram
from ..poutine.params import buffers_kept, eval_mode
from ..poutine.plates import RowsOutsidePlateError, SubsampledPlateError
from ..validation import (
    check_choice,
    check_data,
    check_positive_float,
    check_positive_int,
    check_seed,
    data_to_dtype,
)
from ..version import __version__
from .checkpoint import (
    load_checkpoint,
    missing_checkpoint_hint,
    remove_stale_temps,
    save_checkpoint,
    write_json_atomic,
)
from .distributed import check_same_settings, data_parallel
from .divergence import (
    NonFiniteGradient,
    NonFiniteLossError,
    all_finite,
    constraint_violation,
    install_gradient_check,
    non_finite_entries,
)
from .fingerprint import data_fingerprint
from .integrity import tensor_digest
from .interrupt import DeferredInterrupts, TrainingInterrupted
from .lock import RunLock
from .optim import make_optimizer
from .payload import (
    MalformedCheckpointError,
    check_generator_state,
    check_module_states,
    check_optimizer_state,
    check_permutation,
    check_restorable,
)
from .resume import config_differences, resumed_lr
from .runs import CHECKPOINT_NAME, CONFIG_NAME, HISTORY_NAME, RUN_FILES

__all__ = [
    "fit",
    "Trainer",
    "FitResult",
    "NonFiniteLossError",
    "TrainingInterrupted",
    "eval_schedule",
    "resolve_programs",
    "resolve_objective",
]

logger = logging.getLogger("pyro_aevb")

# Evaluation never touches the training RNG; it uses its own fixed stream.
_EVAL_SEED_OFFSET = 1_000_003

#: The step size when none is given (and a resumed run keeps its own).
DEFAULT_LR = 0.02
#: Wall-time checkpoint interval by default, in seconds (with out_dir).
DEFAULT_CHECKPOINT_SECONDS = 300.0


@dataclass
class FitResult:
    """What :func:`fit` returns.

    ``module`` is the model object trained (``None`` for plain model/guide functions);
    ``path`` and ``path_reason`` say which implementation ran and why (e.g. ``"fast"`` for the
    paper's VAE, ``"pyro"`` for any other model). ``history`` is a list of evaluation
    records (dicts with ``step``, ``samples``, ``epoch``, ``train_seconds``,
    ``wall_seconds``, ``loss`` (mean per-datapoint objective since the previous record),
    ``train_bound``/``test_bound`` (mean per-datapoint bound) and their standard errors).
    """

    module: nn.Module | None
    history: list[dict[str, Any]]
    path: str
    steps: int
    samples: int
    out_dir: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    path_reason: str = ""

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def eval_schedule(total: int, every: int | str, per_decade: tuple[int, ...] = (1, 2, 5)):
    """Sample counts at which to evaluate: ``every`` samples, or ``"log"``: 1, 2, 5 x 10^k.

    Always ends with ``total``. Returns a sorted list of ints in ``(0, total]``.
    """
    if every == "log":
        points = {m * 10**k for k in range(2, 12) for m in per_decade}
    else:
        every = check_positive_int(every, "eval_every")
        points = set(range(every, total + 1, every))
    return sorted(p for p in points if p < total) + [total]


def _mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    n = values.numel()
    std = float(values.std()) if n > 1 else float("nan")
    return float(values.mean()), std / math.sqrt(n)


def resolve_programs(model, guide=None) -> tuple[Callable, Callable | None, nn.Module | None]:
    """``(model_fn, guide_fn, module)`` from what the user passed to :func:`fit`.

    ``model`` is either a model object with Pyro ``model`` and ``guide`` methods (a
    :class:`~pyro_aevb.models.VAE`, Pyro's example VAE, ...), or a Pyro model callable with
    ``guide`` given separately (``guide`` may be ``None`` only for objectives without one).
    """
    if guide is None and callable(getattr(model, "model", None)):
        module = model if isinstance(model, nn.Module) else None
        guide_fn = getattr(model, "guide", None)
        return model.model, guide_fn if callable(guide_fn) else None, module
    if guide is not None and callable(getattr(model, "model", None)):
        # a model object whose own guide is replaced, e.g. by an amortized autoguide
        if not callable(guide):
            raise TypeError(f"guide must be a callable Pyro guide, got {type(guide).__name__}")
        return model.model, guide, model if isinstance(model, nn.Module) else None
    if not callable(model) or (isinstance(model, nn.Module) and guide is None):
        raise TypeError(
            "model must be a model object with Pyro programs module.model(x) and "
            "module.guide(x) (e.g. pyro_aevb.VAE, Pyro's example VAE), or a Pyro model "
            f"function with guide=; got {type(model).__name__}"
        )
    if guide is not None and not callable(guide):
        raise TypeError(f"guide must be a callable Pyro guide, got {type(guide).__name__}")
    return model, guide, model if isinstance(model, nn.Module) else None


def resolve_objective(
    objective: Objective | str | None,
    algorithm: str | None,
    estimator: str | None,
    num_particles: int | None,
) -> Objective:
    """The :class:`~pyro_aevb.infer.objectives.Objective` to train with: ``objective`` if
    given (then ``algorithm``/``estimator``/``num_particles`` must not be), else the one
    named by ``algorithm`` (default ``"aevb"``) with ``estimator`` (default ``"B"``) and
    ``num_particles`` (default 1)."""
    if isinstance(objective, str):
        algorithm, objective = objective, None
    if objective is not None:
        if not isinstance(objective, Objective):
            raise TypeError(
                f"objective must be a pyro_aevb objective (ELBO, WakeSleep, MonteCarloEM, ...) "
                f"or its name, got {type(objective).__name__}"
            )
        given = [
            n
            for n, v in (
                ("algorithm", algorithm),
                ("estimator", estimator),
                ("num_particles", num_particles),
            )
            if v is not None
        ]
        if given:
            raise ValueError(f"pass {given} inside the objective ({objective!r}), not beside it")
        return objective
    algorithm = check_choice(algorithm or "aevb", "algorithm", tuple(ALGORITHMS))
    if algorithm in ("mcem", "sa-vae"):
        if estimator is not None or num_particles is not None:
            raise ValueError(
                f"set the options of algorithm '{algorithm}' with its objective, e.g. "
                f"objective=MonteCarloEM(...) or objective=SemiAmortized(...)"
            )
        return ALGORITHMS[algorithm]()
    if algorithm == "iwae":
        if estimator is not None:
            raise ValueError(
                "the IWAE objective has no estimator (its log weights are estimator A's terms); "
                "give num_particles=K, or objective=IWAE(K, dreg=True)"
            )
        return ALGORITHMS[algorithm](*(() if num_particles is None else (num_particles,)))
    return ALGORITHMS[algorithm](estimator or "B", 1 if num_particles is None else num_particles)


class Trainer:
    """Trains a model/guide pair with an objective (AEVB by default).

    See :func:`fit` for the arguments; :meth:`run` trains to the budget and returns a
    :class:`FitResult`.
    """

    def __init__(
        self,
        model,
        train,
        test=None,
        *,
        guide: Callable | None = None,
        objective: Objective | str | None = None,
        estimator: str | None = None,
        num_particles: int | None = None,
        algorithm: str | None = None,
        plate_name: str = "data",
        modules: Sequence[nn.Module] = (),
        optimizer: str = "adagrad",
        lr: float | None = None,
        batch_size: int = 100,
        num_samples: int | None = None,
        epochs: float | None = None,
        seed: int = 0,
        eval_every: int | str = "log",
        eval_size: int | None = 1000,
        checkpoint_every: int | None = None,
        checkpoint_every_seconds: float | None = DEFAULT_CHECKPOINT_SECONDS,
        out_dir: str | Path | None = None,
        resume: bool = False,
        fast: str = "auto",
        progress: bool = True,
        dataset_name: str | None = None,
        callback=None,
        device=None,
        dtype=None,
        distributed: bool | None = None,
        shards: int | None = None,
    ):
        model_fn, guide_fn, module = resolve_programs(model, guide)
        self.module = module
        if isinstance(modules, nn.Module) or not all(isinstance(m, nn.Module) for m in modules):
            raise TypeError(
                f"modules must be a sequence of torch.nn.Module objects, got {modules!r}"
            )
        if out_dir is not None and not isinstance(out_dir, (str, os.PathLike)):
            raise TypeError(f"out_dir must be a path (str or os.PathLike), got {out_dir!r}")
        # the programs' modules (and the data, below) go to the device and dtype asked for
        owners = place_modules(
            [module, *modules, model_fn, guide_fn], resolve_device(device), resolve_dtype(dtype)
        )
        self.device = module_device(owners) or resolve_device(device) or torch.device("cpu")
        objective = resolve_objective(objective, algorithm, estimator, num_particles)
        if guide is not None and isinstance(objective, MonteCarloEM):
            raise ValueError(
                "guide= is given, but Monte Carlo EM uses no guide (its E-step samples each "
                "datapoint's posterior by HMC): leave guide out, or train the guide with the "
                "ELBO"
            )
        check_choice(fast, "fast", FAST_MODES)
        if not isinstance(plate_name, str) or not plate_name:
            raise TypeError(f"plate_name must be a non-empty str, got {plate_name!r}")
        train, test, dataset_name = _unpack_data(train, test, dataset_name)
        params = list(module.parameters()) if module is not None else []
        # the data in the modules' dtype (also those of bound-method and pyro.module programs)
        dtype = params[0].dtype if params else module_dtype(owners) or resolve_dtype(dtype)
        unit = bool(getattr(getattr(module, "likelihood", None), "unit_interval", False))
        event_shape = getattr(module, "event_shape", None)
        self.train = check_data(train, "train", event_shape, unit_interval=unit)
        self.train = data_to_dtype(self.train, dtype, "train").to(self.device)
        self.test = None
        if test is not None:
            self.test = check_data(test, "test", tuple(self.train.shape[1:]), unit_interval=unit)
            self.test = data_to_dtype(self.test, self.train.dtype, "test").to(self.device)
        self.num_train = self.train.shape[0]
        self.batch_size = min(check_positive_int(batch_size, "batch_size"), self.num_train)
        if batch_size > self.num_train:
            warnings.warn(
                f"batch_size={batch_size} is larger than the {self.num_train} training rows: "
                f"each step uses all of them (batch_size={self.num_train})",
                UserWarning,
                stacklevel=3,
            )
        if (num_samples is None) == (epochs is None):
            raise ValueError("give exactly one training budget: num_samples or epochs")
        if num_samples is not None:
            self.total = check_positive_int(num_samples, "num_samples")
        else:
            self.total = max(1, round(check_positive_float(epochs, "epochs") * self.num_train))
        self.schedule = eval_schedule(self.total, eval_every)
        self.checkpoint_every = (
            None
            if checkpoint_every is None
            else check_positive_int(checkpoint_every, "checkpoint_every")
        )
        self.checkpoint_every_seconds = (
            None
            if checkpoint_every_seconds is None
            else check_positive_float(checkpoint_every_seconds, "checkpoint_every_seconds")
        )
        self.eval_size = None if eval_size is None else check_positive_int(eval_size, "eval_size")
        self.progress = progress
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable(trainer, record), got {callback!r}")
        self.callback = callback
        self.out_dir = None if out_dir is None else Path(out_dir)
        # The wall-time default is on for every run; only a value the user chose is worth a
        # warning when there is nowhere to write.
        ignored = [f"checkpoint_every={checkpoint_every}"] if checkpoint_every is not None else []
        if checkpoint_every_seconds not in (None, DEFAULT_CHECKPOINT_SECONDS):
            ignored.append(f"checkpoint_every_seconds={checkpoint_every_seconds}")
        if self.out_dir is None and ignored:
            warnings.warn(
                f"{' and '.join(ignored)} {'has' if len(ignored) == 1 else 'have'} no effect "
                f"without out_dir: no checkpoint is written",
                UserWarning,
                stacklevel=3,
            )
        self.seed = check_seed(seed)

        # The programs, the objective bound to them, and a first look at a minibatch: the
        # minibatch contract and the parameters are checked before any step, under a seeded
        # forked RNG (so lazily created pyro.params get a seed-determined initial value and
        # the training draws are not shifted).
        self.program = TrainingProgram(
            model_fn, guide_fn, num_data=self.num_train, plate_name=plate_name, modules=modules
        )
        self.objective: BoundObjective = objective.bind(self.program, fast)
        self.objective.plan(math.ceil(self.total / self.batch_size))
        first = self.train[: self.batch_size]
        with fork_rng():
            torch.manual_seed(self.seed)
            self.objective.setup(first)
            # everything the programs touch is checkpointed, trained or not
            self.state_params = self.program.collect_params(first)
            #: Why the history holds no train/test bound (None: it does, if the objective
            #: has one).
            self.bound_unavailable: str | None = None
            if self.objective.has_bound and self.schedule:
                # fail now, not after training, if the bound cannot be evaluated
                try:
                    with torch.no_grad(), self._evaluation_mode():
                        self.objective.bound(self.train[:2])
                except (SubsampledPlateError, RowsOutsidePlateError) as err:
                    # SVI trains such a model; only the per-datapoint bound is undefined
                    self.bound_unavailable = str(err)
                    warnings.warn(
                        f"the history will hold no train/test bound: {err}",
                        UserWarning,
                        stacklevel=3,
                    )
        # lr=None: the default for a new run, the run's own when resuming (see _restore)
        self._lr_given = None if lr is None else check_positive_float(lr, "lr")
        lr = DEFAULT_LR if lr is None else self._lr_given
        # data-parallel ranks (or RNG shards): see pyro_aevb.train.distributed
        self.parallel, parallel_config = data_parallel(
            self.objective,
            distributed=distributed,
            shards=shards,
            num_train=self.num_train,
            batch_size=self.batch_size,
            seed=self.seed,
            step_fn=lambda: self.step,
            state_params=self.state_params,
            device=self.device,
            saved=_saved_parallel_config(out_dir, resume),
        )
        if self.parallel is not None:
            self.objective = self.parallel
        self.progress = progress and (self.parallel is None or self.parallel.is_main)
        params = list(self.objective.params)
        if not any(p.requires_grad for p in params):
            raise ValueError(
                "the model and guide have no trainable parameter (no pyro.param, no "
                "pyro.module or PyroModule parameter with requires_grad): there is nothing "
                "for fit to train; give the guide parameters, or evaluate the programs "
                "directly (log_marginal)"
            )
        self.optimizer = make_optimizer(optimizer, params, lr)
        own_guide = getattr(guide_fn, "__self__", None) is module
        if (
            self.objective.path in ("pyro", "compiled")
            and isinstance(module, VAE)
            and own_guide
            and fast == "auto"
        ):
            where = "stock Pyro" if self.objective.path == "pyro" else "the compiled path"
            message = (
                f"training {type(module).__name__} on {where}, not the fused fast path: "
                f"{self.objective.path_reason}"
            )
            if _mlp_vae(module):
                # a paper-like VAE that lost the fused path (a subclass override, an activation,
                # frozen parameters): worth a warning, the user may not have meant it
                warnings.warn(message, UserWarning, stacklevel=3)
            else:
                # conv trunks, image data: the fused path was never on offer
                logger.info("%s", message)
        self.training_config = {
            "algorithm": objective.name,
            "objective": objective.settings(),
            "optimizer": optimizer,
            "lr": float(lr),
            "batch_size": self.batch_size,
            "seed": self.seed,
            "num_train": self.num_train,
            "eval_size": self.eval_size,
            "plate_name": plate_name,
        }
        self.config = {
            "pyro_aevb_version": __version__,
            "model_class": _describe_program(module, model_fn),
            "model": getattr(_model_owner(module, model_fn), "config", None),
            # an amortized autoguide records how to rebuild it (load_run, resume)
            "guide": guide_fn.config if isinstance(guide_fn, AmortizedGuide) else None,
            "dataset": dataset_name,
            "event_shape": list(self.train.shape[1:]),
            "training": self.training_config,
            "path": self.objective.path,
            "path_reason": self.objective.path_reason,
            "num_data_route": self.program.route,
            # compared on resume: the same number of rows is not the same data
            "data": {"train": data_fingerprint(self.train), "test": data_fingerprint(self.test)},
            "device": str(self.device),
        }
        if parallel_config:
            self.config["data_parallel"] = parallel_config
        # the budget this run trains to (not compared on resume, where it may grow): what a
        # resumed run without a new budget continues to
        self.config["num_samples"] = self.total
        ragged = self.num_train % self.batch_size  # each epoch ends with a smaller batch
        if self.total < self.batch_size:
            logger.warning(
                "the budget of %d samples is less than one minibatch of %d: minibatches stay "
                "whole, so the run trains one step (%d samples)",
                self.total,
                self.batch_size,
                self.batch_size,
            )
        elif (self.total % self.batch_size or ragged) and self.total > self.batch_size:
            logger.info(
                "the budget of %d samples may end inside a minibatch of %d%s: minibatches "
                "stay whole, so the run trains up to %d samples more",
                self.total,
                self.batch_size,
                f" (each epoch of {self.num_train} rows ends with one of {ragged})"
                if ragged
                else "",
                self.batch_size - 1,
            )
        if self.parallel is not None and self.parallel.world_size > 1:
            # the data itself, the objective's settings, the model and the budget: ranks that
            # differ in any would train on averaged gradients of different computations, or
            # reach the evaluations' collectives at different steps and wait there forever
            check_same_settings(
                {
                    "data": self.config["data"],
                    "training": self.training_config,
                    "model": self.config["model"],
                    "model_class": self.config["model_class"],
                    "guide": self.config["guide"],
                    "num_samples": self.total,
                    "evaluations": self.schedule,
                    "checkpoint_every": self.checkpoint_every,
                },
                "training settings",
            )

        # Progress state: everything below is saved in checkpoints.
        self.step = 0
        self.samples = 0
        self.epoch = 0
        self.train_seconds = 0.0
        self.history: list[dict[str, Any]] = []
        self.data_rng = torch.Generator().manual_seed(self.seed + 1)
        self.perm = torch.empty(0, dtype=torch.long)
        self.pos = 0
        self._loss_sum = 0.0
        self._loss_count = 0

        self._last_save = time.monotonic()
        self._saved_as: tuple | None = None  # (step, samples, records) of the last save
        # One job per run directory: locked before looking for a checkpoint, so two runs
        # cannot both find none and overwrite each other; held until run() ends.
        # (in a data-parallel run rank 0 owns the directory: it writes the run's files)
        owner = self.parallel is None or self.parallel.is_main
        self._lock = RunLock(self.out_dir).acquire() if self.out_dir and owner else None
        try:
            self._open_run(resume)
            if self.parallel is not None and self.parallel.world_size > 1:
                # every rank restores the checkpoint itself: ranks that found different ones
                # (an out_dir that is not shared, a stale copy) would train out of step, and
                # rank 0 would overwrite the last good checkpoint with their mixture
                check_same_settings(
                    {
                        "progress": (self.step, self.samples, len(self.history)),
                        "parameters": tensor_digest(self.objective.params),
                    },
                    f"checkpoints to resume from (out_dir {self.out_dir} must be the same "
                    f"folder on every rank)",
                )
        except BaseException:
            self.close()
            raise

    def _open_run(self, resume: bool) -> None:
        """Start a new run in ``out_dir`` or restore the one there (``resume``)."""
        checkpoint = self.out_dir / CHECKPOINT_NAME if self.out_dir else None
        if self._lock is not None:
            # the lock is held: temporaries of the run's own files are a killed run's. Only
            # the lock's holder may say so: the other ranks of a data-parallel job hold no
            # lock, and their job may have been refused one held by a live run, whose
            # temporaries are being written.
            remove_stale_temps(self.out_dir, list(RUN_FILES), exclusive=True)
        if resume:
            if checkpoint is None or not checkpoint.is_file():
                hint = "pass the out_dir of the run to continue"
                if checkpoint is not None:
                    hint = missing_checkpoint_hint(checkpoint, hint)
                raise FileNotFoundError(
                    f"resume=True but there is no checkpoint at {checkpoint}; {hint}"
                )
            self._restore(load_checkpoint(checkpoint), checkpoint)
        else:
            if checkpoint is not None:
                found = [n for n in RUN_FILES if (self.out_dir / n).exists()]
                if found:
                    raise FileExistsError(
                        f"{self.out_dir} holds an earlier run ({', '.join(found)}); pass "
                        f"resume=True to continue it or choose another out_dir (on the "
                        f"command line: --resume, or another --out); nothing was overwritten"
                    )
            torch.manual_seed(self.seed)

    def close(self) -> None:
        """Release the run directory's lock (done by :meth:`run` when it ends)."""
        if getattr(self, "_lock", None) is not None:
            self._lock.release()

    @property
    def path_description(self) -> str:
        """Which training path runs and why, for the progress bar and summaries."""
        reason = self.objective.path_reason
        return f"{self.objective.path}" + (f" ({reason})" if reason else "")

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "program_state": self.state_params.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "data": self.data_rng.get_state(),
                **device_rng_state(self.device),
            },
            "progress": {
                "step": self.step,
                "samples": self.samples,
                "epoch": self.epoch,
                "train_seconds": self.train_seconds,
                "perm": self.perm,
                "pos": self.pos,
                "loss_sum": self._loss_sum,
                "loss_count": self._loss_count,
            },
            "history": self.history,
            "objective_state": self.objective.state_dict(),
        }

    def _restore(self, payload: dict[str, Any], path: Path) -> None:
        """Continue the run saved in ``payload`` (read from ``path``): every setting that
        changes the run is compared first, and the whole payload is checked before anything
        is loaded, so a refused checkpoint leaves the module as it was."""
        check_restorable(payload, path)
        saved = payload["config"]
        differ = config_differences(saved, self.config)
        if differ:
            raise ValueError(
                f"cannot resume the run in {self.out_dir}: these settings differ from the "
                f"checkpoint's: {'; '.join(differ)}. Resume with the run's settings, or start "
                f"a new run in another out_dir"
            )
        if "data" not in saved:
            logger.warning("%s records no data fingerprint: the data cannot be compared", path)
        saved_lr = saved.get("training", {}).get("lr")
        if not isinstance(saved_lr, float) or not saved_lr > 0:
            raise MalformedCheckpointError(f"checkpoint {path}: training.lr is {saved_lr!r}")
        lr = resumed_lr(saved_lr, self._lr_given)
        self.training_config["lr"] = lr
        self.config["lr_changes"] = list(saved.get("lr_changes", []))
        check_generator_state(payload["rng"]["torch"], torch.get_rng_state(), "torch", path)
        check_generator_state(payload["rng"]["data"], self.data_rng.get_state(), "data", path)
        progress = payload["progress"]
        check_permutation(progress["perm"], self.num_train, path)
        params = list(self.objective.params)
        check_module_states(payload["program_state"], self.state_params.modules, path)
        payload["optimizer_state"] = _with_frozen_parameters(
            payload["optimizer_state"], self.optimizer, params, path
        )
        check_optimizer_state(payload["optimizer_state"], params, path)
        try:
            self.state_params.load_state_dict(payload["program_state"])
            self.optimizer.load_state_dict(payload["optimizer_state"])
            self.objective.load_state_dict(payload.get("objective_state", {}))
        except (KeyError, TypeError, IndexError, RuntimeError, ValueError) as err:
            raise MalformedCheckpointError(
                f"checkpoint {path} does not fit this run: {type(err).__name__}: {err}"
            ) from err
        if lr != saved_lr:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.config["lr_changes"].append(
                {"samples": progress["samples"], "from": saved_lr, "to": lr}
            )
            logger.info("resuming with lr %g (the run trained with %g)", lr, saved_lr)
        torch.set_rng_state(payload["rng"]["torch"])
        self.data_rng.set_state(payload["rng"]["data"])
        set_device_rng_state(payload["rng"], self.device)
        self.step, self.samples, self.epoch = (
            progress["step"],
            progress["samples"],
            progress["epoch"],
        )
        self.train_seconds = float(progress["train_seconds"])
        self.perm, self.pos = progress["perm"], progress["pos"]
        self._loss_sum, self._loss_count = float(progress["loss_sum"]), progress["loss_count"]
        self.history = list(payload["history"])
        self._saved_as = (self.step, self.samples, len(self.history))  # on disk as it is
        if self.samples >= self.total:
            logger.warning(
                "the checkpoint has already seen %d samples, at least this run's budget of %d: "
                "nothing to train",
                self.samples,
                self.total,
            )
        logger.info("resumed from checkpoint at %d samples (step %d)", self.samples, self.step)

    def save(self) -> Path | None:
        """Write checkpoint, history and config to ``out_dir`` (if any), atomically.

        The checkpoint first (the previous one is kept beside it), then the JSON files, which
        are views of it: history.json is never ahead of the checkpoint.
        """
        if self.out_dir is None or (self.parallel is not None and not self.parallel.is_main):
            return None  # in a data-parallel run rank 0 writes the run's files
        saved_as = (self.step, self.samples, len(self.history))
        if saved_as == self._saved_as:
            # this state is on disk already (a second Ctrl-C during an evaluation's save):
            # writing it again would turn the previous checkpoint into a copy of it
            return self.out_dir / CHECKPOINT_NAME
        if not all_finite(self.objective.params):
            raise NonFiniteLossError("parameters became non-finite; checkpoint not overwritten")
        bad = self._non_finite_optimizer_state()
        if bad:
            self._fail(
                float("nan"),
                what=(
                    f"the optimizer's state became non-finite by {self.samples} training "
                    f"samples ({bad}): a gradient whose square overflows float32 (about 1e19 "
                    f"or more) makes Adagrad's / Adam's updates zero, so that parameter had "
                    f"stopped training; the checkpoint was not overwritten"
                ),
            )
        # the compiled path may have fallen back to stock Pyro since the start
        self.config["path"], self.config["path_reason"] = (
            self.objective.path,
            self.objective.path_reason,
        )
        path = save_checkpoint(self.out_dir / CHECKPOINT_NAME, self.state())
        write_json_atomic(self.out_dir / CONFIG_NAME, self.config)
        write_json_atomic(self.out_dir / HISTORY_NAME, self.history)
        self._last_save = time.monotonic()
        self._saved_as = saved_as
        return path

    # ------------------------------------------------------------------ evaluation
    def _bound(self, data: torch.Tensor) -> torch.Tensor:
        chunks = [self.objective.bound(xb) for xb in data.split(1000)]
        return torch.cat(chunks)

    @contextlib.contextmanager
    def _evaluation_mode(self):
        """Evaluation as a validation pass runs: the programs' modules in eval mode (BatchNorm
        on its running statistics, no dropout: each row's bound its own), their buffers and
        modes as they were afterwards, so evaluating never changes the training."""
        modules = [*self.program.modules, *self.program.called_modules]
        with buffers_kept(modules, discover=False), eval_mode(modules):
            yield

    def evaluate(self) -> dict[str, Any]:
        """The history record at this point: progress, the mean loss since the previous
        record, the train/test bounds with standard errors, the step size."""
        record: dict[str, Any] = {
            "step": self.step,
            "samples": self.samples,
            "epoch": self.samples / self.num_train,
            "train_seconds": round(self.train_seconds, 4),
        }
        record["loss"] = self._loss_sum / self._loss_count if self._loss_count else None
        record["lr"] = self.optimizer.param_groups[0]["lr"]
        if self.parallel is not None:
            # every rank checks that the ranks agree; rank 0 evaluates and shares its record
            self.parallel.check_in_sync()
            if not self.parallel.is_main:
                self._loss_sum, self._loss_count = 0.0, 0
                shared = self.parallel.share_record(None)
                failed = shared.get(_EVALUATION_FAILED) if isinstance(shared, dict) else None
                if failed is not None:
                    # rank 0's evaluation raised: the same error here, not a lost connection
                    kind, message = failed
                    raise (ValueError if kind == "ValueError" else RuntimeError)(
                        f"{message} (raised by rank 0's evaluation)"
                    )
                return shared
        try:
            with fork_rng(), self._evaluation_mode():
                torch.manual_seed(self.seed + _EVAL_SEED_OFFSET)
                for split, data in (("train", self.train), ("test", self.test)):
                    if data is None or not self.objective.has_bound or self.bound_unavailable:
                        continue
                    subset = data if self.eval_size is None else data[: self.eval_size]
                    with torch.no_grad():
                        mean, stderr = _mean_and_stderr(self._bound(subset))
                    record[f"{split}_bound"] = mean
                    record[f"{split}_bound_stderr"] = stderr
                record.update(self.objective.diagnostics())
                if self.callback is not None:  # gradients allowed: it may run HMC
                    self.callback(self, record)
                    _check_json_record(record)
        except Exception as err:
            if self.parallel is not None:  # the other ranks wait for this record
                self.parallel.share_record({_EVALUATION_FAILED: (type(err).__name__, str(err))})
            raise
        # only now: an evaluation that fails leaves the running mean for its retry on resume
        self._loss_sum, self._loss_count = 0.0, 0
        if self.parallel is not None:
            self.parallel.share_record(record)
        return record

    # ------------------------------------------------------------------ training
    def _next_batch(self) -> torch.Tensor:
        """Indices of the next minibatch: a fresh permutation every epoch."""
        if self.pos >= self.perm.numel():
            self.perm = torch.randperm(self.num_train, generator=self.data_rng)
            self.pos = 0
            self.epoch += 1
        # Minibatches stay whole (the last one of an epoch may be smaller), so a run may end
        # up to M - 1 samples past its budget; cutting the last one short would make the
        # draws depend on where a run was stopped and break exact resume.
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += idx.numel()
        return idx

    def _fail(self, value: float, cause: BaseException | None = None, what: str = "") -> None:
        """Raise :class:`NonFiniteLossError` for a divergence, saying what was kept."""
        checkpoint = self.out_dir / CHECKPOINT_NAME if self.out_dir is not None else None
        if checkpoint is not None and checkpoint.exists():
            last = self.history[-1]["samples"] if self.history else 0
            where = (
                f"the last good checkpoint ({checkpoint}, last evaluated at {last} samples) is kept"
            )
        elif checkpoint is not None:
            where = "no checkpoint had been written yet"
        else:
            where = "no checkpoint was written (set out_dir to keep one)"
        finite = all_finite(self.objective.params)
        if not what:
            if cause is None and finite:
                what = (
                    f"non-finite loss ({value}) at step {self.step + 1} after {self.samples} "
                    f"training samples; training stopped before applying it, so the module's "
                    f"parameters are the last finite ones"
                )
            else:
                what = (
                    f"parameters became non-finite before step {self.step + 1} (after "
                    f"{self.samples} training samples): a previous update had non-finite "
                    f"gradients"
                )
        objective = self.training_config.get("objective") or {}
        # the analytic KL has lower variance than estimator A: worth trying, unless in use
        estimator_b = (
            ", estimator 'B'"
            if self.training_config["algorithm"] == "aevb" and objective.get("estimator") == "A"
            else ""
        )
        raise NonFiniteLossError(
            f"training diverged: {what}, and {where}. Try a smaller lr (now "
            f"{self.training_config['lr']}; a resumed run may lower it){estimator_b}, or "
            f"check the data."
        ) from cause

    def _divergence(self, err: BaseException, evaluating: bool = False) -> str | None:
        """What ``err`` says about a divergence, or ``None`` if it is another failure: a
        distribution argument made invalid by the parameters (Pyro's validation), or
        parameters that are no longer finite. ``evaluating``: ``err`` came from the evaluation
        after step ``self.step``, not from step ``self.step + 1``."""
        if not all_finite(self.objective.params):
            return (
                f"parameters became non-finite before step {self.step + 1} (after "
                f"{self.samples} training samples)"
            )
        when = (
            f"at the evaluation after step {self.step} ({self.samples} training samples)"
            if evaluating
            else f"by step {self.step + 1} ({self.samples} training samples before it)"
        )
        violation = constraint_violation(err)
        # before any update the parameters are the initial ones: a bug, not a divergence
        # (MCEM updates several times within one step, undone when one fails)
        updated = self.step > 0 or self.objective.failed_after_update
        if isinstance(err, NonFinitePotentialError) and updated:
            return (
                f"{when} the parameters give the model no finite density where the chains "
                f"are ({err})"
            )
        if violation is not None and updated:
            return f"{when} the parameters make a distribution's argument invalid ({violation})"
        return None

    def _train_step(self, xb: torch.Tensor, idx: torch.Tensor) -> float:
        """One step; a divergence in it becomes :class:`NonFiniteLossError` (the step is
        undone: the minibatch is drawn again on resume)."""
        try:
            loss = self.objective.train_step(xb, idx, self.optimizer)
        except NonFiniteGradient as err:
            self.pos -= xb.shape[0]
            self._fail(
                float("nan"),
                cause=err,
                what=(
                    f"non-finite gradient at step {self.step + 1} after {self.samples} training "
                    f"samples ({err}); the update was not applied, so the parameters are the "
                    f"last finite ones"
                ),
            )
        except (ValueError, RuntimeError) as err:
            what = self._divergence(err)
            if what is None:
                raise
            self.pos -= xb.shape[0]
            self._fail(float("nan"), cause=err, what=what)
        if not math.isfinite(loss):
            self.pos -= xb.shape[0]  # the step did not happen
            self._fail(loss)
        return loss

    def _evaluate_and_save(self, wall0: float, bar) -> None:
        """Evaluate, record, then checkpoint: a record that was computed is always saved
        with the state it describes; a diverged one is neither recorded nor saved."""
        try:
            record = self.evaluate()
        except (ValueError, RuntimeError) as err:
            what = self._divergence(err, evaluating=True)
            if what is not None:
                self._fail(float("nan"), cause=err, what=what)
            self._save_progress_after_failure()
            raise
        except BaseException:
            self._save_progress_after_failure()
            raise
        bad = non_finite_entries(record)
        if bad:
            self._fail(
                float("nan"),
                what=(
                    f"the evaluation at {self.samples} samples gave {', '.join(bad)}; that "
                    f"record was not kept"
                ),
            )
        record["wall_seconds"] = round(time.perf_counter() - wall0, 4)
        self.history.append(record)
        bar.set_postfix(_postfix(record), refresh=False)
        self.save()

    def _save_progress_after_failure(self) -> None:
        # Training progress is kept even if an evaluation fails; the record is not lost: on
        # resume the missing evaluation point is evaluated first.
        if (
            self.out_dir is not None
            and all_finite(self.objective.params)
            and not self._non_finite_optimizer_state()
        ):
            self.save()

    def _non_finite_optimizer_state(self) -> str:
        """The optimizer's non-finite state entries, e.g. ``"'sum' of a parameter of shape
        ()"``, or ``""``."""
        bad = []
        for param, entry in self.optimizer.state.items():
            for key, value in entry.items():
                if (
                    isinstance(value, torch.Tensor)
                    and value.is_floating_point()
                    and not bool(torch.isfinite(value).all())
                ):
                    bad.append(f"'{key}' of a parameter of shape {tuple(param.shape)}")
        return ", ".join(bad[:3])

    def _stop_if_interrupted(self, interrupts: DeferredInterrupts, saved: bool) -> None:
        signum = int(interrupts.received or 0)
        if self.parallel is not None:
            # all ranks stop at the same step, naming the signal that reached some of them
            signum = self.parallel.max_over_ranks(signum)
        if not signum:
            return
        checkpoint = None
        if self.out_dir is not None:
            checkpoint = self.out_dir / CHECKPOINT_NAME if saved else self.save()
            # the other ranks of a data-parallel run: rank 0 saved it
            checkpoint = checkpoint or self.out_dir / CHECKPOINT_NAME
        raise TrainingInterrupted(signum, self.samples, self.step, checkpoint)

    def run(self) -> FitResult:
        """Train until ``num_samples`` (or ``epochs``) and return a :class:`FitResult`.

        Raises :class:`TrainingInterrupted` (a ``KeyboardInterrupt``) after SIGINT or
        SIGTERM, once the current step is done and a checkpoint of it written.
        """
        if self._lock is not None:
            self._lock.acquire()
        try:
            with DeferredInterrupts() as interrupts:
                return self._run(interrupts)
        finally:
            self.close()

    def _run(self, interrupts: DeferredInterrupts) -> FitResult:
        logger.info(
            "training %s (%s) on %d datapoints via the %s path",
            self.config["model_class"],
            self.training_config["algorithm"],
            self.num_train,
            self.path_description,
        )
        # Points after the last record: one missed by a failed evaluation comes first.
        last = self.history[-1]["samples"] if self.history else 0
        pending = [s for s in self.schedule if s > last]
        next_ckpt = self._next_checkpoint()
        bar = tqdm(
            total=self.total,
            initial=self.samples,
            unit="sample",
            unit_scale=True,
            disable=not self.progress,
            dynamic_ncols=True,
            mininterval=1.0,
            desc=f"{self.training_config['algorithm']} [{self.objective.path}]",
        )
        wall0 = time.perf_counter()
        in_step = False
        # On stock Pyro the gradients are checked before every update, so a diverged update is
        # never applied (the NaN parameters would otherwise fail Pyro's argument validation
        # a step later). The fused paths (fast, wake-sleep, MCEM) keep their lean optimizer
        # step: a non-finite gradient there shows as a non-finite loss at the next step.
        hook = install_gradient_check(self.optimizer) if self.objective.path == "pyro" else None
        try:
            if pending and self.samples >= pending[0]:
                while pending and self.samples >= pending[0]:
                    pending.pop(0)
                self._evaluate_and_save(wall0, bar)
            while self.samples < self.total:
                t0 = time.perf_counter()
                in_step = True
                idx = self._next_batch()
                # 4x faster than self.train[idx]; the indices live on the CPU
                xb = torch.index_select(self.train, 0, idx.to(self.train.device))
                loss = self._train_step(xb, idx)
                self.step += 1
                self.samples += xb.shape[0]
                self._loss_sum += loss / self.num_train
                self._loss_count += 1
                self.train_seconds += time.perf_counter() - t0
                in_step = False
                bar.update(xb.shape[0])
                saved = False
                if pending and self.samples >= pending[0]:
                    while pending and self.samples >= pending[0]:
                        pending.pop(0)
                    self._evaluate_and_save(wall0, bar)
                    saved = True
                elif (next_ckpt is not None and self.samples >= next_ckpt) or self._save_due():
                    self.save()
                    saved = True
                if saved:
                    next_ckpt = self._next_checkpoint()
                self._stop_if_interrupted(interrupts, saved)
        except KeyboardInterrupt as err:
            # Asked twice, or raised by user code: between steps the state is consistent, so
            # keep it; inside a step the parameters may be half-updated and the last
            # checkpoint stays.
            if (
                not isinstance(err, TrainingInterrupted)
                and self.out_dir is not None
                and not in_step
                and all_finite(self.objective.params)
            ):
                self.save()
                logger.warning("interrupted; checkpoint saved at %d samples", self.samples)
            raise
        finally:
            if hook is not None:
                hook.remove()
            bar.close()
        return FitResult(
            module=self.module,
            history=self.history,
            path=self.objective.path,
            steps=self.step,
            samples=self.samples,
            out_dir=self.out_dir,
            config=self.config,
            path_reason=self.objective.path_reason,
        )

    def _save_due(self) -> bool:
        """A wall-time checkpoint is due (``checkpoint_every_seconds`` since the last save)."""
        return (
            self.out_dir is not None
            and self.checkpoint_every_seconds is not None
            and time.monotonic() - self._last_save >= self.checkpoint_every_seconds
        )

    def _next_checkpoint(self) -> int | None:
        if self.checkpoint_every is None:
            return None
        return (self.samples // self.checkpoint_every + 1) * self.checkpoint_every


def _postfix(record: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key in ("loss", "train_bound", "test_bound"):
        if record.get(key) is not None:
            out[key] = f"{record[key]:.2f}"
    return out


def _unpack_data(train, test, dataset_name):
    # Accept a pyro_aevb.data.Dataset as well as plain tensors.
    if hasattr(train, "train") and hasattr(train, "test") and hasattr(train, "name"):
        if test is not None:
            raise ValueError("pass either a Dataset as train, or train and test tensors")
        return train.train, train.test, dataset_name or train.name
    return train, test, dataset_name


def _check_json_record(record: dict) -> None:
    """The entries a callback put in a history record must be JSON numbers, strings, lists
    or dicts of them: the record goes into the checkpoint and ``history.json``, and one that
    cannot be written would make every later save, and the resume, fail."""
    for key in list(record):
        try:
            json.dumps({key: record[key]}, allow_nan=True)
        except (TypeError, ValueError) as err:
            value = record.pop(key)
            raise TypeError(
                f"the callback left {key!r} = {type(value).__name__} in the history record, "
                f"which cannot be written as JSON ({err}); add a number, string or list "
                f"(e.g. float(t) or t.tolist() for a tensor)"
            ) from None


def fit(model, train, test=None, **kwargs) -> FitResult:
    """Train a Pyro model/guide pair with AEVB (Algorithm 1) and return a :class:`FitResult`.

    Parameters
    ----------
    model : model object or callable
        Either an object with Pyro ``model(x)`` and ``guide(x)`` methods (a
        :class:`pyro_aevb.VAE`, Pyro's example VAE as written, any ``nn.Module`` of yours),
        or a Pyro model function with ``guide=`` given. The programs take a minibatch ``x`` of
        shape ``(M, *event_shape)``; per-datapoint sites sit in ``pyro.plate(plate_name,
        len(x))``. If the program takes a ``num_data`` keyword it is called with
        ``num_data=N`` and must scale its plate itself (as ``VAE`` does); otherwise the
        trainer scales every site inside the data plate by ``N / M``. Everything the programs
        register in Pyro's param store (``pyro.param``, ``pyro.module``, ``PyroModule``) and
        every parameter of the model object is trained and checkpointed.
    train : torch.Tensor or pyro_aevb.data.Dataset
        Training data ``(N, *event_shape)``; a ``Dataset`` supplies its train and test splits.
    test : torch.Tensor, optional
        Test data for the test bound in the history.
    guide : callable, optional
        The guide, when ``model`` is a function, or to replace a model object's own (e.g.
        ``fit(vae, data, guide=AmortizedMultivariateNormal(vae.model))``; an amortized
        autoguide records its config in the run, so :func:`load_run` rebuilds it).
    objective : Objective or str, optional
        What to optimise, as Pyro's ``SVI`` takes its loss:
        :class:`~pyro_aevb.infer.ELBO` (default, estimator B),
        :class:`~pyro_aevb.infer.WakeSleep`, :class:`~pyro_aevb.infer.MonteCarloEM`,
        :class:`~pyro_aevb.infer.IWAE` (``IWAE(K, dreg=True)``: the importance-weighted bound),
        or their names ``"aevb"``, ``"wake-sleep"``, ``"mcem"``, ``"iwae"``.
    estimator : {"A", "B"}
        Shortcut for ``objective=ELBO(estimator)``: generic SGVB (``Trace_ELBO``) or analytic
        KL. Default ``"B"``.
    num_particles : int
        L, draws of ``z`` per datapoint and step (default 1); K for ``algorithm="iwae"``
        (default 5).
    algorithm : {"aevb", "wake-sleep", "mcem", "iwae"}
        Shortcut for the objective by name (default ``"aevb"``).
    plate_name : str
        Name of the data plate (default ``"data"``).
    modules : sequence of nn.Module
        More modules whose state belongs to the run (owners of bound-method programs are
        found automatically).
    optimizer : {"adagrad", "adam"}
        Default ``"adagrad"`` (the paper's).
    lr : float, optional
        Step size; default 0.02 for a new run, the run's own when resuming. A resumed run
        may be given a *smaller* one (the advice after a divergence): the change is recorded
        in the config (``lr_changes``) and every history record carries its ``lr``.
    batch_size : int
        M (default 100).
    num_samples, epochs :
        The budget, in training samples evaluated (the paper's x-axis) or in epochs; give one.
    seed : int
        Seeds the sampling RNG (``torch.manual_seed``), the minibatch order and the initial
        values of parameters the programs create lazily.
    eval_every : int or "log"
        Evaluate every so many samples, or at 1, 2, 5 x 10^k samples (default), and at the end.
    eval_size : int or None
        Evaluate the bound on the first ``eval_size`` train and test points (None: all).
        The first rows of a split are not a random sample of it when the split is ordered
        (MNIST's test set: its first 5000 digits are easier than the rest, about 1 nat on
        the bound of a small model); report a final number on the whole split
        (:func:`~pyro_aevb.evaluate_bound`, ``eval_size=None``).
    checkpoint_every : int, optional
        Extra checkpoints every so many samples (one is always written at each evaluation).
    checkpoint_every_seconds : float or None
        Extra checkpoints every so many seconds of wall time (default 300; ``None``: none).
    out_dir : path, optional
        Where ``config.json``, ``history.json`` and ``checkpoint.pt`` go (the checkpoint
        before it, ``checkpoint.prev.pt``, is kept). The directory is locked while the run
        trains: a second run (or resume) into it is refused while the first is alive.
    resume : bool
        Continue the run saved in ``out_dir`` (the budget may be larger than before). Every
        setting that changes the run (the model's config, the training settings, the data,
        by fingerprint) must be the same; the refusal names those that differ.
    fast : {"auto", "on", "off"}
        Use the fused fast path when it supports the model (the paper's VAE; see
        :mod:`pyro_aevb.infer.objectives.fast_vae`), else the compiled path (any model/guide
        pair recorded once and replayed, :mod:`pyro_aevb.infer.objectives.compiled`; it falls
        back to stock Pyro with a warning if the programs cannot be recorded or change;
        ``"on"`` makes a program that cannot be recorded an error); ``"off"``: stock Pyro.
        Which path runs is in the progress bar, ``FitResult.path``/``path_reason`` and the
        run's config; a VAE with MLP trunks on flat rows that cannot use the fused path
        gets a warning saying why (a conv VAE or image data: a log line at INFO).
    callback : callable, optional
        ``callback(trainer, record)`` after each evaluation, under the evaluation RNG; it may
        add JSON-serialisable entries to ``record`` (e.g. a marginal-likelihood estimate).
    progress : bool
        Show a tqdm progress bar.
    device : str or torch.device, optional
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``: the model object (and ``modules``) are
        moved there in place, as the data; default: where the model's parameters are.
        Programs that are plain functions must create their tensors on the data's device.
        A checkpoint resumes on any device (loaded on the CPU, then moved); the accelerator's
        RNG state is restored only on the same kind of device, so the draws after resuming
        on another device differ from an uninterrupted run.
    dtype : torch.float32 or torch.float64, optional
        Convert the model and the data (default: the model's dtype).
    distributed : bool, optional
        Data-parallel training on ``torch.distributed`` (see
        :mod:`pyro_aevb.train.distributed`): ``None`` (default) trains data-parallel when a
        process group of several ranks is initialised (e.g. under ``torchrun``), ``False``
        trains in this process alone. Every rank calls ``fit`` with the same arguments; each
        computes its shard of every global minibatch of ``batch_size`` rows (the N/M scaling
        uses the global minibatch), gradients are averaged, and rank 0 evaluates, logs and
        writes ``out_dir``.
    shards : int, optional
        Stock-Pyro path only: compute each minibatch as this many contiguous shards whose
        guide/model draws come from streams seeded by ``(seed, step, shard)``, so that the
        trajectory does not depend on the number of ranks that compute them (which must
        divide ``shards``). Default: the number of ranks (1 in one process: torch's global
        RNG), or the checkpoint's value when resuming. The fast path draws the whole
        minibatch's noise on every rank and needs none.

    Raises
    ------
    ValueError
        The programs break the minibatch contract (a plate of another size, a plate that
        subsamples itself, no data plate), or another argument is invalid; the message says
        what to change. Checked on the first minibatch, before any step.
    NonFiniteLossError
        Training diverged: a NaN or infinite loss, gradient or bound, or parameters that make
        a distribution's argument invalid (on every path). The parameters keep their last
        finite values where the divergence was caught before the update; no checkpoint or
        history record of the diverged state is written.
    TrainingInterrupted
        (a ``KeyboardInterrupt``) On Ctrl-C (SIGINT) or SIGTERM: the current step is
        finished and a checkpoint of it written before stopping.
    RunLockedError
        (a ``FileExistsError``) Another live process trains in ``out_dir``.
    CorruptCheckpointError
        (a ``ValueError``) On resume, the checkpoint does not match its SHA-256 seal; the
        message says whether the previous checkpoint is intact.
    """
    return Trainer(model, train, test, **kwargs).run()


def _mlp_vae(module: VAE) -> bool:
    """Whether ``module`` has the fused path's shape: MLP trunks on flat rows."""
    return (
        len(module.event_shape) == 1 and type(module.encoder) is MLP and type(module.decoder) is MLP
    )


def _with_frozen_parameters(saved: dict, optimizer, params: list, path) -> dict:
    """An optimizer state saved before frozen parameters were among the trained ones (earlier
    versions kept only the ``requires_grad`` parameters, in the same order) mapped onto this
    run's list, the frozen ones keeping the fresh optimizer's state; any other state as is."""
    groups = saved.get("param_groups")
    if not (isinstance(groups, list) and len(groups) == 1 and isinstance(groups[0], dict)):
        return saved
    old = groups[0].get("params")
    trained = [i for i, p in enumerate(params) if p.requires_grad]
    if not isinstance(old, list) or len(old) == len(params) or len(old) != len(trained):
        return saved
    logger.info(
        "%s: an optimizer state over the %d unfrozen parameters (an earlier version's), mapped "
        "onto the run's %d parameters",
        path,
        len(old),
        len(params),
    )
    state = dict(optimizer.state_dict()["state"])
    for i, j in zip(old, trained, strict=True):
        if i in saved.get("state", {}):
            state[j] = saved["state"][i]
    return {"state": state, "param_groups": [{**groups[0], "params": list(range(len(params)))}]}


# The key of the record rank 0 shares when its evaluation raised.
_EVALUATION_FAILED = "__evaluation_failed__"


def _saved_parallel_config(out_dir, resume: bool) -> dict | None:
    """The ``data_parallel`` entry of the checkpoint a resumed run continues (its shards)."""
    checkpoint = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None
    if not resume or checkpoint is None or not checkpoint.is_file():
        return None
    payload = load_checkpoint(checkpoint)
    check_restorable(payload, checkpoint)  # read before the restore checks it again
    return payload["config"].get("data_parallel", {})


def _model_owner(module, model_fn):
    """The model object: ``module``, or the owner of a bound-method model (``vae.model``)."""
    return module if module is not None else getattr(model_fn, "__self__", None)


def _describe_program(module, model_fn) -> str:
    if module is not None:
        return type(module).__name__
    return getattr(model_fn, "__qualname__", type(model_fn).__name__)
