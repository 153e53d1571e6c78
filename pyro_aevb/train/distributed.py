r"""Data-parallel training on ``torch.distributed``: every rank takes its shard of each minibatch.

Launch with PyTorch's own launcher (one process per CPU socket or GPU)::

    torchrun --nproc-per-node=2 -m pyro_aevb.cli train --dataset mnist ...

or, in Python, initialise the default process group (:func:`init_distributed` does it from
``torchrun``'s environment: gloo on CPUs, NCCL on GPUs) and call :func:`pyro_aevb.fit` on every
rank with the same arguments; it sees the process group and trains data-parallel.

**What a step computes.** Every rank holds the whole training set and draws the same minibatch
indices (the same seed, the same permutation), so the *global* minibatch of ``M`` rows is the
one a single process would train on. It is cut into ``S`` contiguous shards
(:func:`shard_bounds`: sizes differ by at most one row); rank ``r`` of ``P`` computes shards
``r S/P .. (r+1) S/P - 1``. Shard ``k`` of ``M_k`` rows evaluates::

    loss_k = S (N / M) sum_{i in shard k} ell_i  +  (terms outside the data plate)

(the N/M scaling uses the *global* minibatch; :class:`ShardScale` multiplies the scale of
every data-plate site by ``S M_k / M`` on top of the program's own ``N / M_k``), and the step
uses the gradient averaged over all shards::

    g = (1/S) sum_k grad loss_k = grad [ (N/M) sum_{i in batch} ell_i + (outside terms) ],

exactly the single-process gradient, whose loss is the average of the ``loss_k``. A rank
accumulates ``grad loss_k / (S/P)`` over its shards and the ranks average: with
:class:`~torch.nn.parallel.DistributedDataParallel` on the stock-Pyro (autograd) path (its
bucketed all-reduce; ``no_sync`` for all but a rank's last shard), plus an explicit all-reduce
of Pyro param-store entries that no module owns; on the fused fast path, whose gradients are
written into preallocated buffers without autograd, by one explicit all-reduce of those
buffers. Every rank then takes the same optimizer step, so parameters and optimizer state stay
identical (checked at every evaluation by :meth:`DataParallelObjective.check_in_sync`).

**Random draws, and equality with one process.** The guide's reparameterised draws come from
torch's global RNG, sized by the rows a program sees, so a rank drawing for its rows alone
would not reproduce a single process's draws.

* *Fast path* (the paper's VAE): every rank draws the noise of the whole global minibatch
  (``(M, J)`` per particle, as one process does) and uses its own rows. The draws, hence the
  loss trajectory, are those of a single process for any number of ranks (to floating-point
  rounding: the sums are split differently), and every rank's global RNG stays in the same
  state, so a checkpoint resumes under any number of ranks.
* *Stock Pyro* (any other model): the ``S`` shards of step ``t`` draw from their own streams:
  shard ``k`` runs under a forked RNG seeded with :func:`derive_seed` ``(seed, t, k)``. The
  draws depend on ``(seed, t, k)`` and on the shard's rows only, never on which rank computes
  the shard, so a single process with ``shards=S`` (computing the ``S`` shards one after the
  other) and any number of ranks dividing ``S`` train the same trajectory (to rounding), and a
  checkpoint resumes under any such number of ranks. ``S`` defaults to the number of ranks; it
  is kept in the run's config (``data_parallel.shards``) and reused on resume. With ``S = 1``
  (one process, the default) nothing changes: the draws come from torch's global RNG as before.

Rank 0 alone evaluates (and runs the callback), logs, shows the progress bar and writes
``config.json``, ``history.json`` and checkpoints; the other ranks receive its history record.
A resumed run reads the checkpoint on every rank (``out_dir`` must be visible to all of them).
Objectives other than the ELBO (wake-sleep, Monte Carlo EM) run in one process.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from pyro.poutine.messenger import Messenger
from torch import nn

from ..device import fork_rng, resolve_device
from ..infer.objectives import (
    BoundObjective,
    CompiledELBOObjective,
    FastVAEObjective,
    PyroELBOObjective,
)
from ..poutine import plate_frame
from ..poutine.params import buffers_kept
from ..validation import check_positive_int

__all__ = [
    "world",
    "is_distributed",
    "resolve_distributed",
    "launched_by_torchrun",
    "init_distributed",
    "shard_bounds",
    "derive_seed",
    "broadcast_object",
    "all_gather_objects",
    "ShardScale",
    "DataParallelObjective",
    "data_parallel",
]

logger = logging.getLogger("pyro_aevb")

# Keeps the training shards' streams apart from other streams derived from the same seed.
_TRAIN_STREAM = 0x7472


# ---------------------------------------------------------------------------- process group
def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_distributed() -> bool:
    """Whether a default process group of more than one rank is initialised."""
    return world()[1] > 1


def resolve_distributed(distributed, name: str = "distributed") -> bool:
    """``None``: data-parallel when a process group of several ranks is initialised;
    ``True``: require one (``ValueError`` otherwise); ``False``: this process alone."""
    if distributed is None:
        return is_distributed()
    if not isinstance(distributed, bool):
        raise TypeError(f"{name} must be None, True or False, got {distributed!r}")
    if distributed and not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            f"{name}=True but no torch.distributed process group is initialised: launch with "
            f"torchrun and call pyro_aevb.train.distributed.init_distributed() first"
        )
    return distributed and is_distributed()


def launched_by_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (its environment variables are set)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def init_distributed(
    device=None, backend: str | None = None, timeout_seconds: float = 1800.0
) -> torch.device:
    """Initialise the default process group from ``torchrun``'s environment; return the device
    this rank computes on.

    ``device``: ``"cpu"`` (default without CUDA), ``"cuda"`` (each rank takes
    ``cuda:LOCAL_RANK``; the default with CUDA) or an explicit device. ``backend``: default
    ``"nccl"`` for CUDA, ``"gloo"`` otherwise. Does nothing but resolve the device when the
    group is already initialised. Outside ``torchrun`` (no ``RANK``/``WORLD_SIZE``) it raises
    ``RuntimeError``.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    requested = torch.device(device) if isinstance(device, str) else device
    if requested.type == "cuda" and requested.index is None:
        requested = torch.device("cuda", local_rank)
    device = resolve_device(requested)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return device
    if not launched_by_torchrun():
        raise RuntimeError(
            "init_distributed() reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, "
            "MASTER_ADDR, MASTER_PORT); launch with torchrun --nproc-per-node=P ..."
        )
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    dist.init_process_group(
        backend=backend,
        timeout=datetime.timedelta(seconds=timeout_seconds),
        device_id=device if device.type == "cuda" else None,
    )
    return device


# ---------------------------------------------------------------------------- helpers
def shard_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: ``n`` rows cut into ``parts`` contiguous pieces whose sizes
    differ by at most one (the larger ones first, as :func:`torch.tensor_split`)."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for p in range(parts):
        stop = start + base + (1 if p < extra else 0)
        out.append((start, stop))
        start = stop
    return out


def derive_seed(*keys: int) -> int:
    """A 63-bit seed derived from the integers ``keys`` (NumPy's ``SeedSequence``: distinct
    keys give statistically independent streams)."""
    words = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (picklable objects)."""
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class ShardScale(Messenger):
    """Multiply the scale of every sample site inside the data plate by ``factor``.

    Sites outside the plate (a weight prior, global latents) are left alone. Used with
    ``factor = S M_k / M`` so that a program bound to ``N`` (which scales its plate by
    ``N / M_k`` on ``M_k`` rows) scales shard ``k`` by ``S N / M``.
    """

    def __init__(self, plate_name: str, factor: float):
        super().__init__()
        self.plate_name = plate_name
        self.factor = factor

    def _process_message(self, msg) -> None:
        # plates opened inside the program are above this messenger on Pyro's stack, so their
        # frames are in the message when it gets here (as for DataPlateScale)
        if msg["type"] == "sample" and plate_frame(msg, self.plate_name) is not None:
            msg["scale"] = msg["scale"] * self.factor


class _ShardLoss(nn.Module):
    """The user's modules with ``forward(x, factor)`` = one shard's differentiable loss, so that
    DistributedDataParallel can wrap them (it hooks the gradients of their parameters)."""

    def __init__(self, modules: Sequence[nn.Module], loss_fn: Callable):
        super().__init__()
        self.members = nn.ModuleList(modules)
        self._loss_fn = loss_fn

    def forward(self, x: torch.Tensor, factor: float) -> torch.Tensor:
        return self._loss_fn(x, factor)


# ---------------------------------------------------------------------------- the objective
class DataParallelObjective:
    """A bound objective whose :meth:`train_step` computes the global minibatch's step from
    this rank's shards (see the module docstring); everything else is the wrapped objective's.

    Parameters
    ----------
    inner : BoundObjective
        :class:`~pyro_aevb.infer.objectives.FastVAEObjective` or
        :class:`~pyro_aevb.infer.objectives.PyroELBOObjective` (after ``setup``).
    rank, world_size : int
        This process's place in the default process group (``0, 1`` without one).
    shards : int
        ``S``, shards per minibatch on the stock-Pyro path (a multiple of ``world_size``);
        the fast path shards by rank and ignores it.
    seed : int
        The run's seed, from which the shards' streams are derived.
    step_fn : callable
        Returns the index of the step being computed (the trainer's step counter).
    state_params : ProgramParams
        Everything the run checkpoints; rank 0's values are broadcast to every rank here.
    device : torch.device
    """

    def __init__(
        self,
        inner: BoundObjective,
        *,
        rank: int,
        world_size: int,
        shards: int,
        seed: int,
        step_fn: Callable[[], int],
        state_params,
        device: torch.device,
    ):
        self.inner = inner
        self.rank, self.world_size = rank, world_size
        self.seed = seed
        self.step_fn = step_fn
        self.device = device
        self.fast = isinstance(inner, FastVAEObjective)
        self.shards = world_size if self.fast else shards
        self.per_rank = self.shards // world_size
        self._ddp = None
        self._frozen: tuple | None = None  # which parameters were frozen at the first step
        self._module_params: list[torch.Tensor] = []
        self._store_params: list[torch.Tensor] = []
        if world_size > 1:
            self._broadcast_state(state_params)
        if not self.fast:
            self._setup_pyro(state_params)

    def __getattr__(self, name):
        # everything but the training step is the wrapped objective's
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def is_main(self) -> bool:
        """Rank 0 evaluates, logs and writes the run's files."""
        return self.rank == 0

    # ------------------------------------------------------------------ setup
    def _broadcast_state(self, state_params) -> None:
        """Start every rank from rank 0's parameters (module states and param-store entries)."""
        with torch.no_grad():
            for m in state_params.modules:
                for t in m.state_dict().values():
                    if isinstance(t, torch.Tensor):
                        dist.broadcast(t, src=0)
            for t in [*state_params.tensors, *state_params.buffers.values()]:
                dist.broadcast(t.detach(), src=0)

    def _setup_pyro(self, state_params) -> None:
        inner = self.inner
        program = inner.program

        def shard_loss(x: torch.Tensor, factor: float) -> torch.Tensor:
            with ShardScale(program.plate_name, factor):
                return inner.elbo.differentiable_loss(program.model_n, program.guide_n, x)

        self._module_params = [
            p for m in state_params.modules for p in m.parameters() if p.requires_grad
        ]
        ids = {id(p) for m in state_params.modules for p in m.parameters()}
        self._store_params = [p for p in inner.params if id(p) not in ids]
        # without module parameters (only pyro.param entries) there is nothing for DDP to
        # wrap: every gradient goes through the explicit all-reduce
        self._loss_module = _ShardLoss(state_params.modules, shard_loss)

    def _make_ddp(self, x: torch.Tensor) -> None:
        """Wrap the modules in DistributedDataParallel (on the first step, which tells whether
        every parameter gets a gradient: DDP must be told when some do not)."""
        # a throw-away pass: no draw is shifted, no BatchNorm statistic updated
        with fork_rng(), buffers_kept(self.inner.program.modules), torch.enable_grad():
            loss = self._loss_module(x, 1.0)
            grads = torch.autograd.grad(loss, self._module_params, allow_unused=True)
        unused = torch.tensor([float(any(g is None for g in grads))], device=self._comm_device())
        dist.all_reduce(unused, op=dist.ReduceOp.MAX)  # the ranks must agree
        self._ddp = nn.parallel.DistributedDataParallel(
            self._loss_module,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=bool(unused.item()),
        )

    # ------------------------------------------------------------------ the step
    def train_step(self, x: torch.Tensor, idx: torch.Tensor, optimizer) -> float:
        """One step on the global minibatch ``x = data[idx]`` (the same on every rank); returns
        the global loss, the same on every rank. A non-finite loss is returned without an
        update, as :meth:`BoundObjective.train_step` does."""
        frozen = tuple(not p.requires_grad for p in self.inner.params)
        if self._frozen is None:
            self._frozen = frozen
        elif frozen != self._frozen:
            # DistributedDataParallel fixes the parameters it reduces when it wraps the
            # modules; a changed set would be reduced wrongly or hang the ranks
            raise ValueError(
                "a parameter was frozen or unfrozen (requires_grad) during data-parallel "
                "training; which parameters are trained must stay as it was at the first "
                "step: change it before training, or train in one process"
            )
        loss = self._fast_step(x) if self.fast else self._pyro_step(x)
        if math.isfinite(loss):
            optimizer.step()
        return loss

    def _fast_step(self, x: torch.Tensor) -> float:
        inner = self.inner
        M = x.shape[0]
        start, stop = shard_bounds(M, self.world_size)[self.rank]
        num_data = inner.program.num_data
        # P (N / M) per datapoint of this rank's rows; the weight prior once on every rank
        scale = self.world_size * num_data / M
        local = inner.kernel.loss_and_grads(
            x[start:stop], num_data, scale=scale, noise_rows=(start, M)
        )
        grads = [p.grad for p in inner.params if p.grad is not None]
        return self._average(grads, float(local))

    def _pyro_step(self, x: torch.Tensor) -> float:
        inner = self.inner
        M = x.shape[0]
        bounds = shard_bounds(M, self.shards)
        mine = range(self.rank * self.per_rank, (self.rank + 1) * self.per_rank)
        step = self.step_fn()
        if self.world_size > 1 and self._module_params and self._ddp is None:
            self._make_ddp(x[slice(*bounds[self.rank * self.per_rank])])
        inner.zero_grad()
        module = self._ddp if self._ddp is not None else self._loss_module
        total = 0.0
        for j, k in enumerate(mine):
            start, stop = bounds[k]
            factor = self.shards * (stop - start) / M
            last = j == self.per_rank - 1
            sync = contextlib.nullcontext() if (last or self._ddp is None) else self._ddp.no_sync()
            with sync, self._stream(step, k):
                loss_k = module(x[start:stop], factor)
                (loss_k / self.per_rank if self.per_rank > 1 else loss_k).backward()
            total += float(loss_k.detach())
        grads = []
        if self.world_size > 1:
            for p in self._store_params:
                if p.grad is None:
                    # untouched on this rank, perhaps not on another: average a zero for it
                    p.grad = torch.zeros_like(p)
                grads.append(p.grad)
        return self._average(grads, total / self.per_rank)

    @contextlib.contextmanager
    def _stream(self, step: int, shard: int):
        """Shard ``shard`` of step ``step`` draws from its own stream (with ``S > 1``)."""
        if self.shards == 1:
            yield
            return
        with fork_rng():
            torch.manual_seed(derive_seed(self.seed, _TRAIN_STREAM, step, shard))
            yield

    def _average(self, grads: list[torch.Tensor], loss: float) -> float:
        """Average ``grads`` (in place) and ``loss`` over the ranks; returns the loss."""
        if self.world_size == 1:
            return loss
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat.div_(self.world_size)
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
        # the loss in float64, apart from the gradients (which stay in the parameters' dtype)
        total = torch.tensor([loss], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(total)
        return float(total) / self.world_size

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    # ------------------------------------------------------------------ checks and records
    def check_in_sync(self) -> None:
        """Raise ``RuntimeError`` unless every rank holds exactly rank 0's parameters."""
        if self.world_size == 1:
            return
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1).double() for p in self.inner.params])
            reference = flat.clone()
            dist.broadcast(reference, src=0)
            diff = (flat - reference).abs().max().reshape(1)
            dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        if float(diff) != 0.0 or not math.isfinite(float(diff)):
            raise RuntimeError(
                f"data-parallel ranks hold different parameters (largest difference "
                f"{float(diff):.3g}): the gradient averaging failed; stopping"
            )

    def max_over_ranks(self, value: int) -> int:
        """The largest of the ranks' ``value`` (e.g. the number of a signal that reached only
        some of them, 0 where none did), the same on every rank."""
        if self.world_size == 1:
            return value
        t = torch.tensor([float(value)], device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def share_record(self, record: dict | None) -> dict:
        """Rank 0's history record on every rank."""
        if self.world_size == 1:
            return record
        return broadcast_object(record if self.is_main else None)


def data_parallel(
    objective: BoundObjective,
    *,
    distributed: bool | None,
    shards: int | None,
    num_train: int,
    batch_size: int,
    seed: int,
    step_fn: Callable[[], int],
    state_params,
    device: torch.device,
    saved: dict | None = None,
) -> tuple[DataParallelObjective | None, dict]:
    """Wrap ``objective`` for data-parallel training, or return ``(None, {})`` when there is
    nothing to shard (one process and ``shards`` 1).

    ``saved`` is the ``data_parallel`` entry of a checkpoint's config when resuming: its
    ``shards`` is reused unless ``shards`` is given. Returns the wrapper and the config entry
    to record (``world_size``, ``shards``, ``backend``). Raises ``ValueError`` for an
    objective that cannot be sharded, a shard count that the ranks do not divide, or
    minibatches too small to give every shard a row.
    """
    use_group = resolve_distributed(distributed)
    rank, world_size = world() if use_group else (0, 1)
    fast = isinstance(objective, FastVAEObjective)
    # a checkpoint without the entry was trained in one process, unsharded
    saved_shards = None if saved is None else int(saved.get("shards", 1))
    if shards is not None:
        shards = check_positive_int(shards, "shards")
        if saved_shards is not None and shards != saved_shards and not fast:
            logger.warning(
                "resuming with shards=%d where the run used %d: the stock-Pyro draws after the "
                "resume differ from an uninterrupted run (they are still valid draws)",
                shards,
                saved_shards,
            )
    elif saved_shards is not None and not fast:
        shards = saved_shards
        if shards % world_size:
            logger.warning(
                "the run was trained with shards=%d, which %d ranks cannot split: continuing "
                "with shards=%d, so the stock-Pyro draws after the resume differ from an "
                "uninterrupted run (they are still valid draws); pass shards= to choose",
                shards,
                world_size,
                world_size,
            )
            shards = world_size
    else:
        shards = world_size
    if fast:
        if shards != world_size and saved_shards is None:
            logger.warning(
                "shards=%d is not used on the paper VAE's fast path: it draws the whole "
                "minibatch's noise at once, in %d process(es); pass fast='off' for sharded "
                "stock-Pyro draws",
                shards,
                world_size,
            )
        shards = world_size  # the fast path draws the global batch's noise: no streams needed
    if world_size == 1 and shards == 1:
        return None, {}
    if isinstance(objective, CompiledELBOObjective) and not objective.strict:
        # the recording replays one process's draws; the ranks need Pyro's own step
        objective = objective.stock_objective(
            "data-parallel training runs Pyro's own step on each rank's shard (the compiled "
            "path runs in one process)"
        )
    pyro_step = type(objective).loss_and_grads is PyroELBOObjective.loss_and_grads
    if not fast and not (isinstance(objective, PyroELBOObjective) and pyro_step):
        what = type(objective).__name__.removesuffix("Objective")
        raise ValueError(
            f"data-parallel training (and shards > 1) runs the ELBO objective (estimators A "
            f"and B), on the fast or the stock-Pyro path; {what} trains in one process: "
            f"leave out --nproc (distributed=True) and shards"
        )
    if shards % world_size:
        raise ValueError(
            f"shards={shards} cannot be split over {world_size} ranks: use a multiple of "
            f"{world_size} (a run trained with shards=S continues exactly on any number of "
            f"ranks dividing S; pass shards= to continue with other streams)"
        )
    last = num_train % batch_size
    if batch_size < shards:
        raise ValueError(
            f"batch_size={batch_size} is smaller than the {shards} shards of a minibatch "
            f"({world_size} rank(s)): every shard needs at least one row; use a batch_size of "
            f"at least {shards}"
        )
    if 0 < last < shards:
        raise ValueError(
            f"with batch_size={batch_size} over N={num_train} rows the last minibatch of each "
            f"epoch has {last} row(s), fewer than the {shards} shards ({world_size} rank(s)): "
            f"every shard needs at least one row; choose a batch_size whose remainder "
            f"N mod batch_size is 0 or at least {shards}"
        )
    if world_size > 1:
        check_same_settings(
            {
                "num_train": num_train,
                "batch_size": batch_size,
                "seed": seed,
                "shards": shards,
                "objective": type(objective).__name__,
            }
        )
    wrapper = DataParallelObjective(
        objective,
        rank=rank,
        world_size=world_size,
        shards=shards,
        seed=seed,
        step_fn=step_fn,
        state_params=state_params,
        device=device,
    )
    backend = dist.get_backend() if use_group else None
    return wrapper, {"world_size": world_size, "shards": wrapper.shards, "backend": backend}


def check_same_settings(settings: dict, what: str = "settings") -> None:
    """Every rank must be given the same ``settings`` (names to values): otherwise the ranks
    would average gradients of different computations (or wait for each other forever at
    collectives that only some of them reach). All ranks see all settings, so all of them
    raise together, naming each setting that differs and its value on every rank."""
    everyone = all_gather_objects(settings)
    differ = sorted(
        {
            k
            for s in everyone[1:]
            for k in set(s) | set(everyone[0])
            if s.get(k) != everyone[0].get(k)
        }
    )
    if differ:
        table = "; ".join(
            f"{k}: " + ", ".join(f"rank {r} {s.get(k)!r}" for r, s in enumerate(everyone))
            for k in differ
        )
        raise ValueError(
            f"the data-parallel ranks were given different {what} ({table}): call fit with "
            f"the same data and arguments on every rank"
        )
