r"""Per-datapoint potentials of any Pyro model, recorded once instead of traced every time.

:class:`~pyro_aevb.mcmc.potential.PerDatapointPotential` runs the model under a Pyro trace and
autograd at every gradient: HMC, AIS, Appendix D and Monte Carlo EM pay Pyro's per-site work
thousands of times for the same program on the same data. :class:`CompiledPotential` records
the arithmetic of one traced evaluation -- the unflattening of the position, the model
conditioned on it, the per-datapoint sums and both gradients -- with
:func:`pyro_aevb.poutine.compile.capture` and replays it:

    (u, x_rows) -> (log p(u) incl. Jacobian, log p(x | z), d log p(u)/du, d log p(x|z)/du)

per row. Values and gradients are those of the traced potential (the same ATen operations on
the same inputs); the model's parameters and other tensors are read by reference at every
replay, so in-place updates (an optimizer's, between Monte Carlo EM's E-steps) are seen. What
a recording holds beyond that -- Python attributes, which modules, parameters and param-store
tensors the model uses, values it read in Python -- is compared at every evaluation (a
:class:`~pyro_aevb.poutine.python_state.PythonState` snapshot), and the model is recorded
again when it changed; and evaluations 1, 2, 4, 8, ... and every :data:`CHECK_EVERY`-th
compare their first chunk with the model traced on it (state the snapshot cannot see: a
nested attribute, a dict changed in place), recording again on a difference.

**Rows in chunks.** Rows (chains x datapoints) are independent, so a large position is
evaluated in chunks of at most ``max_rows`` rows (by default as many as keep the recording's
working memory near ``memory_limit``), the last chunk padded with copies of its own rows:
every chunk has the same shape, so one recording serves any number of rows, and the memory
of a whole-test-set AIS run stays bounded.

A model whose Python reads tensor values (data-dependent control flow) cannot be recorded:
the potential then runs traced, says so in :attr:`path_reason`, and warns (a ``UserWarning``).
"""

from __future__ import annotations

import logging
import math
import warnings
import weakref
from collections.abc import Callable

import pyro
import pyro.poutine as poutine
import torch

from ..device import fork_rng
from ..poutine.compile import CaptureError, RecordedFunction, capture, describe_error
from ..poutine.log_prob_rewrites import cheaper_log_probs
from ..poutine.params import owner_modules
from ..poutine.python_state import PythonState
from .potential import PerDatapointPotential, log_density_per_datapoint

__all__ = ["CompiledPotential", "DEFAULT_MEMORY_LIMIT", "row_chunks"]

#: Default working-memory budget of one potential evaluation, in bytes.
DEFAULT_MEMORY_LIMIT = 256 * 2**20
# Tensors of a row's size alive at once in a traced evaluation with its backward pass
# (activations, log-densities, their gradients): a deliberately generous estimate.
_LIVE_COPIES = 16

logger = logging.getLogger("pyro_aevb")

# Recordings by program: potentials of one program on other rows or chains (with_chains, the
# E-steps of Monte Carlo EM on each minibatch) share them, as they depend on the chunk shape
# only.
_RECORDINGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _module_tree(program) -> set[int]:
    """``id`` of the modules owning ``program`` (a module, a bound method's owner) and of
    their submodules."""
    return {id(sub) for m in owner_modules(program) for sub in m.modules()}


class _Recordings(dict):
    """A program's recordings by chunk shape, with the Python state they hold (a
    :class:`~pyro_aevb.poutine.python_state.PythonState` snapshot, shared: all were made in
    it)."""

    def __init__(self, program):
        super().__init__()
        # the model's state only: the recordings are of the model (the guide's draws are
        # inputs), and a guide that rebuilds objects at every call (an autoguide's plates)
        # must not make every evaluation record the model again
        model_tree = _module_tree(program.raw_model)
        guide_tree = _module_tree(program.raw_guide) - model_tree
        self.python_state = PythonState(
            [program.raw_model], [m for m in program.called_modules if id(m) not in guide_tree]
        )
        self.state = self.python_state.snapshot()

    def check_unchanged_by_recording(self, run_again: Callable[[], object]) -> None:
        """Raise :class:`CaptureError` if the recording run changed the Python state: a model
        that updates its own attributes while it runs (a counter) cannot be replayed. An
        attribute set from the input (``self.n = len(x)``) is told apart by ``run_again``,
        a second run on the same input: a counter moves again."""
        changed, self.state = self.python_state.changed_by_run(self.state, run_again)
        if changed:
            changed = self.python_state.describe(changed)
            raise CaptureError(
                f"the model changes its own Python state while it runs ({changed}), which a "
                f"replay would not do"
            )

    def refresh(self) -> None:
        """Drop the recordings that hold Python state or read tensor values that changed
        since (an attribute, a replaced module or param-store entry, ``float(buffer)``):
        they are recorded again."""
        state = self.python_state.snapshot()
        if state != self.state:
            changed = self.python_state.describe(self.python_state.changes(self.state, state))
            if self:
                logger.info("per-datapoint potential: recording again (%s changed)", changed)
            self.clear()
            self.state = state
            return
        for key in [k for k, rec in self.items() if rec.values_read_changed()]:
            logger.info("per-datapoint potential: recording again (a value read changed)")
            del self[key]


#: Evaluations between comparisons of a chunk with the traced model, after the first few.
CHECK_EVERY = 1000


def _same(out, traced) -> bool:
    """Whether a recording's outputs equal the traced ones (to float rounding: inductor)."""
    for a, b in zip(out, traced, strict=True):
        if a.shape != b.shape:
            return False
        rtol = 1e-4 if a.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-9
        finite = torch.isfinite(b)
        if not torch.equal(finite, torch.isfinite(a)):
            return False
        a_bad, b_bad = a[~finite], b[~finite]  # the same infinities, NaN where NaN
        if not ((a_bad == b_bad) | (a_bad.isnan() & b_bad.isnan())).all():
            return False
        scale = float(b[finite].abs().max()) if finite.any() else 0.0
        if finite.any() and float((a[finite] - b[finite]).abs().max()) > rtol * scale + 1e-30:
            return False
    return True


def row_chunks(n: int, max_rows: int):
    """``(start, stop, pad)`` covering rows ``0..n`` in chunks of ``min(n, max_rows)`` rows;
    ``pad`` rows are added to the last chunk to make it full (0 elsewhere)."""
    size = min(n, max_rows)
    for start in range(0, n, size):
        stop = min(n, start + size)
        yield start, stop, size - (stop - start)


def _row_index(start: int, stop: int, pad: int, device=None) -> torch.Tensor:
    """Rows ``start:stop`` followed by ``pad`` copies of them (cyclically), as indices."""
    idx = torch.arange(start, stop, device=device)
    if pad:
        idx = torch.cat([idx, idx[torch.arange(pad, device=device) % (stop - start)]])
    return idx


def _padded(t: torch.Tensor, start: int, stop: int, pad: int) -> torch.Tensor:
    """Rows ``start:stop`` of ``t``, followed by ``pad`` copies of those rows (cyclically)."""
    if not pad:
        return t[start:stop]
    return t.index_select(0, _row_index(start, stop, pad, t.device))


class CompiledPotential(PerDatapointPotential):
    """:class:`~pyro_aevb.mcmc.potential.PerDatapointPotential` computed from a recording
    of one traced evaluation (see the module docstring).

    Parameters
    ----------
    (as PerDatapointPotential), and:
    max_rows : int, optional
        Rows per recorded evaluation (default: from ``memory_limit``).
    memory_limit : int
        Working-memory budget in bytes that sets the default ``max_rows``.
    engine : {"replay", "inductor"}
        How the recordings run (see :mod:`pyro_aevb.poutine.compile`); ``"replay"`` gives
        the traced numbers bit for bit, ``"inductor"`` equal ones to float rounding (and
        records the cheaper log-density formulas of
        :mod:`pyro_aevb.poutine.log_prob_rewrites`).
    """

    provides_grad = True
    path = "compiled"

    def __init__(
        self,
        model,
        x: torch.Tensor,
        *,
        num_chains: int = 1,
        plate_name: str = "data",
        guide=None,
        validate: bool = False,
        global_values: dict | None = None,
        max_rows: int | None = None,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        engine: str = "replay",
    ):
        super().__init__(
            model,
            x,
            num_chains=num_chains,
            plate_name=plate_name,
            guide=guide,
            validate=validate,
            global_values=global_values,
        )
        row_bytes = (math.prod(x.shape[1:]) + self.dim) * x.element_size() * _LIVE_COPIES
        self.max_rows = max_rows or max(1, memory_limit // max(1, row_bytes))
        self.memory_limit = memory_limit
        self.engine = engine
        self._x_spec = (tuple(self.x.shape[1:]), self.x.dtype, self.x.device)
        #: Evaluations, and how many of them compared a chunk with the traced model (the
        #: 1st, 2nd, 4th, ... and every CHECK_EVERY-th).
        self.num_evaluations = 0
        self.num_checks = 0
        self._recordings = _RECORDINGS.get(self.program)
        if self._recordings is None:
            self._recordings = _RECORDINGS[self.program] = _Recordings(self.program)
        self.path_reason = "the model's arithmetic recorded once and replayed (no Pyro trace)"

    def with_chains(self, num_chains: int) -> CompiledPotential:
        new = CompiledPotential(
            self.program,
            self.x,
            num_chains=num_chains,
            validate=self.validate,
            max_rows=self.max_rows,
            memory_limit=self.memory_limit,
            engine=self.engine,
        )
        if self.path != "compiled":
            new._fall_back(self.path_reason, warn=False)
        return new

    # ------------------------------------------------------------------ recording
    def _fall_back(self, reason: str, warn: bool = True) -> None:
        self.provides_grad = False
        self.path = "traced"
        self.path_reason = f"traced at every evaluation: the model cannot be compiled ({reason})"
        if warn:
            # a UserWarning, as training's fallback to stock Pyro: the user sees it by default
            warnings.warn(f"per-datapoint potential: {self.path_reason}", UserWarning, stacklevel=4)

    def _evaluate(self, u: torch.Tensor, x_rows: torch.Tensor, grads: bool):
        with poutine.block():
            log_prior, log_lik = log_density_per_datapoint(
                self.model, x_rows, self.layout, position=u
            )
        if not grads:
            return log_prior, log_lik
        g_prior = torch.autograd.grad(log_prior.sum(), u, retain_graph=True)[0]
        if log_lik.requires_grad:
            g_lik = torch.autograd.grad(log_lik.sum(), u)[0]
        else:  # no observation depends on the latents
            g_lik = torch.zeros_like(u)
        return log_prior, log_lik, g_prior, g_lik

    def _recording(self, rows: int, grads: bool) -> RecordedFunction:
        # the recordings are shared by the program's potentials, whose x may differ in shape
        key = (rows, grads, self.dtype, self.engine, self._x_spec)
        rec = self._recordings.get(key)
        if rec is None:
            u = torch.zeros(
                rows, self.dim, dtype=self.dtype, device=self.x.device, requires_grad=True
            )
            x_rows = self._x_rows(0, min(rows, self.num_rows), max(0, rows - self.num_rows))

            def fn(u, x_rows):
                return self._evaluate(u, x_rows, grads)

            rec = None
            if self.engine != "replay":
                # fused kernels: equal to rounding, so the cheaper formulas may be used too
                with cheaper_log_probs():
                    fused = capture(fn, [u, x_rows], what="the model's log-density")
                try:
                    fused.compile(self.engine, u, x_rows)
                    rec = fused
                except CaptureError as err:  # no compiler, ...: the model still records
                    warnings.warn(
                        f"per-datapoint potential: replaying instead ({err})",
                        UserWarning,
                        stacklevel=4,
                    )
                    self.engine = "replay"
                    key = (rows, grads, self.dtype, self.engine, self._x_spec)
                    rec = self._recordings.get(key)
            if rec is None:
                rec = capture(fn, [u, x_rows], what="the model's log-density")

            def run_again():
                with fork_rng(), torch.no_grad(), pyro.validation_enabled(self.validate):
                    self._evaluate(u.detach(), x_rows, grads=False)

            self._recordings.check_unchanged_by_recording(run_again)
            self._recordings[key] = rec
        return rec

    def _checked(self, rec, out, u, x_rows, grads: bool):
        """``out`` compared with the model traced on the same chunk; on a difference (Python
        state the snapshot does not see: a nested attribute, a dict changed in place) the
        model is recorded again, and if that recording differs too, ``CaptureError``."""
        self.num_checks += 1
        traced = self._traced_chunk(u, x_rows, grads)
        if _same(out, traced):
            return out
        logger.info("per-datapoint potential: recording again (the model changed)")
        self._recordings.clear()
        out = self._recording(u.shape[0], grads)(u, x_rows)
        if not _same(out, traced):
            raise CaptureError("the recording does not compute what the model computes")
        return out

    def _traced_chunk(self, u, x_rows, grads: bool):
        with torch.enable_grad(), pyro.validation_enabled(self.validate):
            u = u.detach().requires_grad_(grads)
            return [t.detach() for t in self._evaluate(u, x_rows, grads)]

    def _x_rows(self, start: int, stop: int, pad: int) -> torch.Tensor:
        """The observations of rows ``start:stop`` (+ ``pad``), without replicating ``x``."""
        if self.num_chains == 1:
            return _padded(self.x, start, stop, pad)
        idx = _row_index(start, stop, pad, self.x.device) % self.batch_size
        return self.x.index_select(0, idx)

    def _run(self, position: torch.Tensor, grads: bool):
        """The recorded evaluation over all rows, chunk by chunk; ``None`` if it cannot be
        recorded (after falling back)."""
        self._check_position(position)
        position = position.detach()
        n = position.shape[0]
        outs = []
        self._recordings.refresh()
        self.num_evaluations += 1
        k = self.num_evaluations
        check = k & (k - 1) == 0 or k % CHECK_EVERY == 0
        try:
            for start, stop, pad in row_chunks(n, self.max_rows):
                rec = self._recording(stop - start + pad, grads)
                u = _padded(position, start, stop, pad)
                x_rows = self._x_rows(start, stop, pad)
                out = rec(u, x_rows)
                if check and start == 0:
                    out = self._checked(rec, out, u, x_rows, grads)
                outs.append([t[: stop - start] for t in out])
        except CaptureError as err:
            self._fall_back(str(err))
            return None
        if len(outs) == 1:
            return outs[0]
        return [torch.cat(parts) for parts in zip(*outs, strict=True)]

    # ------------------------------------------------------------------ evaluations
    def _replayed(self, position: torch.Tensor, grads: bool, traced: Callable):
        """The recording's outputs at ``position``, or ``traced()``'s after a fallback. A
        recording that raises where the traced model does not (it held something of the
        data it was made on) is left for good; the traced model's own error propagates."""
        try:
            out = self._run(position, grads=grads)
        except RuntimeError as err:
            result = traced()
            self._fall_back(
                f"the recording failed where the model runs ({describe_error(err, 200)})"
            )
            return result
        return traced() if out is None else tuple(out)

    def log_joint_parts(self, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.path != "compiled" or position.requires_grad:
            # traced (after a fallback), or differentiated by a caller's autograd
            return super().log_joint_parts(position)
        traced = lambda: super(CompiledPotential, self).log_joint_parts(position)  # noqa: E731
        out = self._replayed(position, False, traced)
        return out[0], out[1]

    def parts_and_grads(self, position: torch.Tensor, need_value: bool = True):
        if self.path == "compiled":
            traced = lambda: super(CompiledPotential, self).parts_and_grads(  # noqa: E731
                position, need_value
            )
            return self._replayed(position, True, traced)
        return super().parts_and_grads(position, need_value)

    def potential_and_grad(self, position: torch.Tensor, need_value: bool = True):
        """``(U (n,), dU/du (n, D))`` from the recording (``need_value`` is free here)."""
        if self.path != "compiled":
            return super().potential_and_grad(position)
        log_prior, log_lik, g_prior, g_lik = self.parts_and_grads(position)
        return -(log_prior + log_lik), -(g_prior + g_lik)
