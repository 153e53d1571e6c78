r"""The compiled path: the ELBO step of any model/guide pair, recorded once and replayed.

For a model that is not the paper's VAE (which has its own hand-derived path,
:mod:`~pyro_aevb.infer.objectives.fast_vae`), :class:`CompiledELBOObjective` computes what
stock Pyro computes -- the minibatch loss of eq. 8 with estimator A
(:class:`~pyro.infer.Trace_ELBO`) or B (:class:`~pyro_aevb.infer.elbo.AnalyticKL_ELBO`) and
its gradient in every trained tensor -- without Pyro's per-site work at every step:

1. **Record.** On the first minibatch of a shape the user's guide and model are traced by
   Pyro as the ELBO traces them (``_get_traces``: the guide, then the model replayed on its
   draws, with the trainer's ``N / M`` scaling), the loss is formed from the traces as
   :func:`elbo_loss_particle` does it for Pyro's ELBO classes, and
   ``torch.autograd.grad`` differentiates it; :func:`pyro_aevb.poutine.compile.capture`
   records the ATen operations of all of it, including the guide's random draws.
2. **Replay.** Each step runs the recording on the minibatch and the current parameters: the
   same operations on the same random draws as the traced run, without the messenger stack,
   traces, distribution objects or autograd graph. Engines: ``"replay"`` (the recorded calls
   one by one: bitwise the stock numbers, no start-up cost) and ``"inductor"`` (fused C++
   kernels: equal to float rounding, several times less Python and memory traffic, seconds
   to compile once; the program is recorded for it a second time with cheaper formulas of
   the same value for some log-densities, :mod:`pyro_aevb.poutine.log_prob_rewrites`, e.g.
   a Bernoulli given by its probabilities). ``engine="auto"`` compiles only runs planned
   for at least :data:`INDUCTOR_MIN_STEPS` steps (the trainer says how many), where the
   compile time is repaid.
3. **Check.** A recording is only valid while the programs are static: same sites, shapes,
   plates, distribution types and scales, no Python state that changes the arithmetic. At
   steps 1, 2, 4, 8, ... and every ``check_every`` steps, and at any step where the Python
   state the recording holds has changed (a snapshot,
   :class:`~pyro_aevb.poutine.python_state.PythonState`, is compared at every step, and the
   tensors whose values the programs read in Python while recording), the step runs on
   Pyro's traces instead (its loss and gradients are the stock ones, so nothing is lost),
   and the recording is run on the same draws beside it: if the traced structure differs
   from the recorded one or the numbers disagree, the objective falls back to stock Pyro
   for the rest of training, with a warning and a new ``path``/``path_reason`` -- except
   after a change of Python state, where the programs are recorded anew (an annealing
   factor set between epochs), unless such changes come more often than every
   :data:`RECORD_AGAIN_MIN_STEPS` steps. A changed attribute that leaves the numbers equal
   at several consecutive steps is not watched again (a step counter the user keeps on a
   module); one that changes now and then stays watched (an epoch counter that a KL warm-up
   reads only from some epoch on). Programs that change their
   own Python state while running (a counter incremented in the model) are not recorded.
   The runs that are not training steps (recording, compiling, a check's replay) restore
   the modules' buffers afterwards, so a
   BatchNorm's running statistics see each step once, as on stock Pyro. A program whose
   Python reads tensor values (``if x.sum() > 0``) cannot be recorded at all and runs on
   stock Pyro from the start (``fast="on"`` makes that an error).

Guides with score-function (non-reparameterised) sites are not recorded (stock Pyro runs
them). Autoguides are ordinary Pyro programs (``PyroModule`` guides included): their
parameters are trained tensors like any other and are recorded as inputs.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import OrderedDict

import torch
from pyro.distributions.util import is_identically_zero

from ...device import fork_rng
from ...poutine import TrainingProgram
from ...poutine.compile import (
    CaptureError,
    RecordedFunction,
    capture,
    describe_error,
    structure_of,
)
from ...poutine.log_prob_rewrites import cheaper_log_probs
from ...poutine.params import (
    buffer_values,
    buffers_kept,
    check_params_cover,
    untrained_param_sites,
)
from ...poutine.python_state import PythonState
from ...validation import check_choice, check_positive_int
from ..elbo import AnalyticKLError, analytic_kl_elbo_particle, make_elbo
from .base import BoundObjective, PyroELBOObjective

__all__ = [
    "CompiledELBOObjective",
    "ENGINE_CHOICES",
    "INDUCTOR_MIN_STEPS",
    "RECORD_AGAIN_MIN_STEPS",
    "elbo_loss_particle",
]

#: ``engine=`` choices: ``"auto"`` picks ``"inductor"`` for long runs, else ``"replay"``.
ENGINE_CHOICES = ("auto", "replay", "inductor")
#: Planned training steps from which ``engine="auto"`` compiles with inductor: its compile
#: time (seconds to a minute, cached on disk by torch) is then a small part of the run.
INDUCTOR_MIN_STEPS = 10_000
#: Steps between structure checks after the first few (1, 2, 4, ...).
CHECK_EVERY = 500
#: Fewest steps between two changes of the programs' Python state for which the programs are
#: recorded anew (KL annealing by epoch); changes that come more often run on stock Pyro.
RECORD_AGAIN_MIN_STEPS = 50
# Recordings kept per minibatch shape (full batches, a smaller last one, a first minibatch).
_MAX_RECORDINGS = 4
# Checkpointed engine codes.
_ENGINE_CODES = {None: 0, "replay": 1, "inductor": 2}
#: Keys of :meth:`CompiledELBOObjective.state_dict` (stock Pyro accepts and ignores them).
STATE_KEYS = ("compiled_engine", "compiled_fell_back", "compiled_steps")


def elbo_loss_particle(model_trace, guide_trace, estimator: str) -> torch.Tensor:
    """One particle's surrogate loss (a tensor) from Pyro's traces, as Pyro differentiates it.

    Estimator A: ``Trace_ELBO``'s ``-(sum_model log_prob_sum - sum_guide entropy_term)``;
    estimator B: :class:`~pyro_aevb.infer.elbo.AnalyticKL_ELBO`'s
    ``-(sum_observed log_prob_sum - sum_latent scaled KL(q || p))``. The traces must have
    their log-densities computed (``compute_log_prob``/``compute_score_parts``), as the
    ELBOs' ``_get_traces`` leave them. Raises :class:`~pyro_aevb.poutine.compile.
    CaptureError` for a guide site with a score-function term (not reparameterised).
    """
    surrogate = 0
    if estimator == "A":
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                surrogate = surrogate + site["log_prob_sum"]
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample":
                continue
            _, score_function_term, entropy_term = site["score_parts"]
            if not is_identically_zero(entropy_term):
                surrogate = surrogate - entropy_term.sum()
            if not is_identically_zero(score_function_term):
                raise CaptureError(
                    f"guide site '{name}' is not reparameterised (its gradient needs "
                    f"score-function terms)"
                )
        return -surrogate
    return -analytic_kl_elbo_particle(model_trace, guide_trace)


def _trace_elbo_value_particle(model_trace, guide_trace) -> torch.Tensor:
    """``Trace_ELBO``'s loss value of one particle, ``-(sum_model log_prob_sum - sum_guide
    log_prob_sum)``, accumulated in float64 in Pyro's order (Pyro sums the terms as Python
    floats, ``torch_item``), so that the recorded loss is Pyro's number in any dtype."""
    elbo = 0.0
    for trace, sign in ((model_trace, 1), (guide_trace, -1)):
        for site in trace.nodes.values():
            if site["type"] == "sample":
                term = torch.as_tensor(site["log_prob_sum"], dtype=torch.float64).detach()
                elbo = elbo + term if sign == 1 else elbo - term
    return -torch.as_tensor(elbo, dtype=torch.float64)


def _first_difference(recorded: tuple, traced: tuple) -> str:
    for a, b in zip(recorded, traced, strict=False):
        if a != b:
            return f"recorded {a}, now {b}"
    longer, what = (recorded, "lost") if len(recorded) > len(traced) else (traced, "gained")
    return f"the programs {what} site {longer[min(len(recorded), len(traced))]}"


def _close(a: torch.Tensor, b: torch.Tensor, floor: float = 0.0) -> bool:
    """``a`` equals ``b`` up to the rounding of another kernel order: within ``rtol`` (1e-4 in
    single or half precision, 1e-9 in double) of ``b``'s largest magnitude, or of ``floor`` if
    larger; integer tensors exactly."""
    if not (b.is_floating_point() or b.is_complex()):
        return bool(torch.equal(a, b))
    if not b.numel():
        return True
    rtol = 1e-4 if b.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-9
    scale = max(float(b.abs().max()), floor)
    return float((a - b).abs().max()) <= rtol * scale + 1e-30


class _Recording:
    """A recorded step for one minibatch shape: the function, its structure, which
    parameters get a gradient, and the Python state it holds (a
    :class:`~pyro_aevb.poutine.python_state.PythonState` snapshot)."""

    def __init__(self, fn: RecordedFunction, structure: tuple, has_grad: list[bool]):
        self.fn = fn
        self.structure = structure
        self.has_grad = has_grad
        self.state: dict | None = None


class CompiledELBOObjective(BoundObjective):
    """Estimator A or B of any :class:`~pyro_aevb.poutine.TrainingProgram`, recorded once
    and replayed (see the module docstring).

    Parameters
    ----------
    program : TrainingProgram
    estimator : {"A", "B"}
    num_particles : int
        L; the programs run L times per step, as ``Trace_ELBO(num_particles=L)`` runs them.
    engine : {"auto", "replay", "inductor"}
        How the recording runs (see the module docstring).
    strict : bool
        Raise ``ValueError`` when the programs cannot be recorded (``fast="on"``) instead
        of running them on stock Pyro.
    check_every : int
        Steps between structure checks after the first few.
    """

    path = "compiled"

    def __init__(
        self,
        program: TrainingProgram,
        estimator: str = "B",
        num_particles: int = 1,
        *,
        engine: str = "auto",
        strict: bool = False,
        check_every: int = CHECK_EVERY,
    ):
        super().__init__(program, estimator, num_particles)
        self.engine_choice = check_choice(engine, "engine", ENGINE_CHOICES)
        self.check_every = check_positive_int(check_every, "check_every")
        self.strict = strict
        self.elbo = make_elbo(self.estimator, self.num_particles)
        self.stock = PyroELBOObjective(program, self.estimator, self.num_particles)
        #: The engine in use (resolved at the first step); ``None`` before.
        self.engine: str | None = None
        #: Whether the objective runs on stock Pyro now (the programs could not be recorded,
        #: or changed).
        self.fell_back = False
        #: Steps taken on this objective, and how many of them were structure checks.
        self.steps = 0
        self.num_checks = 0
        #: Times the programs were recorded anew after their Python state changed.
        self.num_recorded_again = 0
        self._recorded_again_at: int | None = None
        self.planned_steps: int | None = None
        self._recordings: OrderedDict = OrderedDict()
        self._main_shape = None
        self._why_not_fused = ""
        self._python_state: PythonState | None = None
        self._unknown_params: list = []  # param sites of a traced step the run does not train

    # ------------------------------------------------------------------ set-up
    def plan(self, num_steps: int) -> None:
        """The number of steps the caller means to take (picks the engine for ``"auto"``)."""
        self.planned_steps = int(num_steps)

    def setup(self, x: torch.Tensor) -> None:
        super().setup(x)
        self.stock.params = self.params
        self._main_shape = (tuple(x.shape), x.dtype, x.device)
        program = self.program
        self._python_state = PythonState(
            [program.model, program.guide], [*program.modules, *program.called_modules]
        )
        if not self.fell_back:
            try:
                self._recording(x)
            except CaptureError as err:
                if isinstance(err.__cause__, AnalyticKLError):
                    # the estimator does not fit the guide: stock Pyro would refuse it too, so
                    # say that, not that the recording failed and training falls back
                    raise err.__cause__ from None
                self._fall_back(str(err), at_setup=True)

    def stock_objective(self, reason: str) -> PyroELBOObjective:
        """The stock-Pyro objective on the same programs and (set-up) parameters, for a
        caller that needs Pyro's own step, e.g. data-parallel training; ``reason`` becomes
        its :attr:`path_reason`."""
        self.stock.params = self.params
        self.stock.path_reason = f"stock Pyro: {reason}"
        return self.stock

    def describe(self, why_not_fused: str) -> None:
        """Set :attr:`path_reason` (with why the fused VAE path does not apply)."""
        self._why_not_fused = why_not_fused
        self._update_reason()

    def _update_reason(self) -> None:
        if self.fell_back:
            return
        engine = self.engine or (
            self.engine_choice if self.engine_choice != "auto" else "replay or inductor"
        )
        self.path_reason = (
            f"programs recorded once and replayed without Pyro's per-site overhead "
            f"({engine} engine); not the fused VAE path: {self._why_not_fused}"
        )

    def _fall_back(self, reason: str, at_setup: bool = False) -> None:
        if self.strict and at_setup:
            raise ValueError(f"fast='on' but the programs cannot be compiled: {reason}")
        self.fell_back = True
        self._recordings.clear()
        self.path = "pyro"
        self.path_reason = f"stock Pyro: the compiled path does not apply ({reason})"
        warnings.warn(
            f"training on stock Pyro instead of the compiled path: {reason}",
            UserWarning,
            stacklevel=3,
        )

    # ------------------------------------------------------------------ recording
    def _buffers_kept(self):
        """The modules' buffers restored after a run that is not a training step (see
        :func:`~pyro_aevb.poutine.params.buffers_kept`): a recording, a compilation, a
        check's replay. A replay runs no module's forward, so the modules the programs
        called in their set-up trace are named up front (and no global hook is set)."""
        return buffers_kept(self._modules(), discover=False)

    def _modules(self) -> list:
        """The modules the programs run: those they hold and those their set-up trace called."""
        return [*self.program.modules, *self.program.called_modules]

    def _loss_terms(self, x: torch.Tensor, check_params: bool = False):
        """The ELBO's traces of the programs on ``x``: ``(loss tensor, structure)``, the loss
        accumulated over particles exactly as Pyro's ``differentiable_loss`` does; with
        ``check_params``, the param sites holding a tensor the run does not train are kept
        for :func:`~pyro_aevb.poutine.params.check_params_cover` after the backward pass."""
        loss = value = 0.0
        structure = ()
        model, guide = self.program.model_n, self.program.guide_n
        for model_trace, guide_trace in self.elbo._get_traces(model, guide, (x,), {}):
            if check_params:
                self._unknown_params += untrained_param_sites(self.params, guide_trace, model_trace)
            loss = loss + elbo_loss_particle(model_trace, guide_trace, self.estimator) / (
                self.num_particles
            )
            if self.estimator == "A":
                value = value + _trace_elbo_value_particle(model_trace, guide_trace) / (
                    self.num_particles
                )
            structure += structure_of(guide_trace, model_trace)
        if not isinstance(loss, torch.Tensor):
            raise CaptureError("the programs have no sample site")
        if self.estimator == "A":
            # Trace_ELBO returns `value + (surrogate - surrogate.item())`: the float64 value
            # rounded to the loss's dtype, with the surrogate's gradient
            loss = (loss - loss.detach()) + value.to(loss.dtype)
        return loss, structure

    def _record(self, x: torch.Tensor, cheaper_formulas: bool = False) -> _Recording:
        """Record the step on ``x``; with ``cheaper_formulas`` the log-densities that have a
        cheaper formula of the same value (:mod:`pyro_aevb.poutine.log_prob_rewrites`) are
        recorded with it (for the inductor engine: equal to float rounding, not bitwise)."""
        params = list(self.params)
        found: dict = {}

        def step(xb, *ps):
            loss, found["structure"] = self._loss_terms(xb)
            if not loss.requires_grad:
                raise CaptureError("the loss does not depend on any trained parameter")
            # a frozen parameter (requires_grad_(False)) gets no gradient, as with backward()
            wanted = [p for p in ps if p.requires_grad]
            found_grads = iter(torch.autograd.grad(loss, wanted, allow_unused=True))
            grads = [next(found_grads) if p.requires_grad else None for p in ps]
            found["has_grad"] = [g is not None for g in grads]
            out = [loss.detach()]
            for p, g in zip(ps, grads, strict=True):
                if g is not None:
                    # the layout backward() gives p.grad (the fused optimizers want it)
                    out.append(g.contiguous() if p.is_contiguous() else g)
            return out

        with cheaper_log_probs() if cheaper_formulas else contextlib.nullcontext():
            fn = capture(step, [x, *params], what="the model and guide")
        return _Recording(fn, found["structure"], found["has_grad"])

    def _recording(self, x: torch.Tensor) -> _Recording:
        key = (tuple(x.shape), x.dtype, x.device)
        rec = self._recordings.get(key)
        if rec is None:
            before = self._python_state.snapshot()
            with self._buffers_kept():
                rec = self._record(x)

            def run_again():
                with fork_rng(), self._buffers_kept(), torch.no_grad():
                    self._loss_terms(x)

            changed, rec.state = self._python_state.changed_by_run(before, run_again)
            if changed:
                raise CaptureError(
                    f"the programs change their own Python state while they run "
                    f"({self._python_state.describe(changed)}), which a replay would not do"
                )
            self._recordings[key] = rec
            if len(self._recordings) > _MAX_RECORDINGS:
                self._recordings.popitem(last=False)
        return rec

    def _resolve_engine(self) -> None:
        if self.engine is not None:
            return
        if self.engine_choice == "auto":
            long_run = self.planned_steps is not None and self.planned_steps >= INDUCTOR_MIN_STEPS
            self.engine = "inductor" if long_run else "replay"
        else:
            self.engine = self.engine_choice
        self._update_reason()

    def _engine_for(self, rec: _Recording, x: torch.Tensor) -> None:
        """Compile the main minibatch shape's recording when the engine is inductor (other
        shapes, e.g. a smaller last batch, are rare: they replay)."""
        if self.engine != "inductor" or rec.fn.engine == "inductor":
            return
        if (tuple(x.shape), x.dtype, x.device) != self._main_shape:
            return
        try:
            with self._buffers_kept():
                cheaper = self._record(x, cheaper_formulas=True)
                if (cheaper.structure, cheaper.has_grad) != (rec.structure, rec.has_grad):
                    raise CaptureError("the programs recorded differently a second time")
                cheaper.fn.compile("inductor", x, *self.params)
            rec.fn = cheaper.fn
        except CaptureError as err:
            warnings.warn(f"compiled path: using the replay engine ({err})", stacklevel=3)
            self.engine = "replay"
            self._update_reason()

    # ------------------------------------------------------------------ steps
    def _assign(self, rec: _Recording, grads) -> None:
        it = iter(grads)
        for p, has in zip(self.params, rec.has_grad, strict=True):
            p.grad = next(it) if has else None

    def _traced_step(self, x: torch.Tensor):
        """The step on Pyro's traces (stock numbers): ``(loss, structure)``, gradients in
        ``p.grad``."""
        self.zero_grad()
        self._unknown_params = []
        loss, structure = self._loss_terms(x, check_params=True)
        loss.backward()
        if self._unknown_params:
            check_params_cover(self._unknown_params)
        return loss.detach(), structure

    def _check_due(self) -> bool:
        k = self.steps
        return k & (k - 1) == 0 or k % self.check_every == 0

    def _agree(self, rec: _Recording, replayed, loss, structure) -> str | None:
        """``None`` if the traced step agrees with the recording, else what differs."""
        if structure != rec.structure:
            return f"their structure changed: {_first_difference(rec.structure, structure)}"
        traced = [loss] + [p.grad for p, has in zip(self.params, rec.has_grad, strict=True) if has]
        if any(b is None or a.shape != b.shape for a, b in zip(replayed, traced, strict=True)):
            return "a parameter's gradient changed shape or vanished"
        gained = [
            i for i, p in enumerate(self.params) if p.grad is not None and not rec.has_grad[i]
        ]
        if gained:
            return f"{len(gained)} parameter(s) without a gradient when recorded now have one"
        # A gradient that is zero in exact arithmetic (a bias before a BatchNorm) is rounding
        # noise on the scale of the others, which fused kernels round differently: each
        # gradient's tolerance is relative to at least 1% of the largest gradient.
        floor = 0.01 * max((float(b.abs().max()) for b in traced[1:] if b.numel()), default=0)
        for i, (a, b) in enumerate(zip(replayed, traced, strict=True)):
            if not _close(a, b, floor if i > 0 else 0.0):
                what = "loss no longer equals" if i == 0 else "gradients no longer equal"
                return f"the recorded {what} Pyro's (the programs read Python state that changed)"
        return None

    def _buffers_differ(self, replayed: list[tuple[torch.Tensor, torch.Tensor]]) -> str | None:
        """``None`` if the traced step left the buffers as the recording's run did (a
        BatchNorm's momentum is read in Python: a change of it changes the running statistics
        but not the loss or the gradients), else what differs. ``replayed`` holds
        :func:`~pyro_aevb.poutine.params.buffer_values` pairs taken after the replay."""
        for buffer, after_replay in replayed:
            if after_replay.shape != buffer.shape:
                return "a buffer changed shape"
            if not _close(after_replay, buffer):
                return (
                    "the recorded updates of the modules' buffers (running statistics) no "
                    "longer equal Pyro's (the programs read Python state that changed)"
                )
        return None

    def loss_and_grads(self, x: torch.Tensor) -> torch.Tensor:
        if self.fell_back:
            return self.stock.loss_and_grads(x)
        try:
            rec = self._recording(x)
        except CaptureError as err:
            self._fall_back(f"a minibatch of shape {tuple(x.shape)}: {err}")
            return self.stock.loss_and_grads(x)
        self._resolve_engine()
        self._engine_for(rec, x)
        self.steps += 1
        inputs = [x, *self.params]
        # Python state the recording holds (attributes, flags, modules, the param store) and
        # tensors it read in Python: a change makes this step a check, not a silent replay
        state = self._python_state.snapshot()
        changed = [] if state == rec.state else self._python_state.changes(rec.state, state)
        values_read = rec.fn.values_read_changed()
        if not changed and not values_read and not self._check_due():
            try:
                out = rec.fn(*inputs)
            except RuntimeError as err:
                return self._replay_failed(x, err)
            self._assign(rec, out[1:])
            return out[0]
        # A check: run the recording on the draws the traced step is about to make.
        self.num_checks += 1
        try:
            with fork_rng(), self._buffers_kept():
                replayed = rec.fn(*inputs)
                replayed_buffers = buffer_values(self._modules())
        except RuntimeError as err:
            return self._replay_failed(x, err)
        loss, structure = self._traced_step(x)
        differs = self._agree(rec, replayed, loss, structure) or self._buffers_differ(
            replayed_buffers
        )
        if differs is not None and (changed or values_read) and self._may_record_again():
            # the programs' Python state changed (an annealing factor set between epochs):
            # this step ran on Pyro's traces; the next one records the programs anew
            self._recordings.clear()
            self.num_recorded_again += 1
            self._recorded_again_at = self.steps
            return loss
        if differs is not None:
            after = [self._python_state.describe(changed)] if changed else []
            if values_read:
                after.append("a tensor the programs read in Python")
            after = f", after a change of {' and '.join(after)}," if after else ""
            self._fall_back(f"at step {self.steps}{after} {differs}")
            return loss
        # the changed state does not change the numbers now; a counter that changes at every
        # step is no longer watched (the regular checks still run), anything else stays
        # watched (an epoch counter that a KL warm-up reads only from some epoch on)
        self._python_state.harmless(changed, self.steps)
        rec.fn.accept_values_read()
        rec.state = self._python_state.snapshot()
        return loss

    def _may_record_again(self) -> bool:
        """Record anew after a change of Python state, unless changes come more often than
        every :data:`RECORD_AGAIN_MIN_STEPS` steps (recording costs a few traced steps, and
        compiling with inductor seconds: the engine drops to replay when changes come more
        often than every :data:`INDUCTOR_MIN_STEPS` steps)."""
        last = self._recorded_again_at
        if last is not None and self.steps - last < RECORD_AGAIN_MIN_STEPS:
            return False
        since = self.steps if last is None else self.steps - last
        if self.engine == "inductor" and since < INDUCTOR_MIN_STEPS:
            warnings.warn(
                f"compiled path: the programs' Python state changed at step {self.steps}, "
                f"{since} steps after the last change; recording again for the replay engine "
                f"(compiling with inductor at every change would cost more than it saves)",
                UserWarning,
                stacklevel=4,
            )
            self.engine = "replay"
            self._update_reason()
        return True

    def _replay_failed(self, x: torch.Tensor, err: RuntimeError) -> torch.Tensor:
        """The recording raised on ``x``: the step on stock Pyro, which raises the programs'
        own error if they fail there too, else leaves the recording for good."""
        loss = self.stock.loss_and_grads(x)
        self._fall_back(
            f"at step {self.steps} the recording failed where the programs run "
            f"({describe_error(err, 200)})"
        )
        return loss

    def bound(self, x: torch.Tensor) -> torch.Tensor:
        return self.stock_bound(x)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Engine, fallback and step count (numbers only): a resumed run replays the same
        way and checks at the same steps."""
        return {
            "compiled_engine": _ENGINE_CODES[self.engine],
            "compiled_fell_back": int(self.fell_back),
            "compiled_steps": self.steps,
        }

    def load_state_dict(self, state: dict) -> None:
        unknown = sorted(set(state) - set(STATE_KEYS))
        if unknown:
            raise ValueError(f"CompiledELBOObjective got unknown state keys {unknown}")
        if not state:
            return
        code = int(state.get("compiled_engine", 0))
        self.engine = {v: k for k, v in _ENGINE_CODES.items()}[code]
        self.steps = int(state.get("compiled_steps", 0))
        if state.get("compiled_fell_back") and not self.fell_back:
            self.fell_back = True
            self._recordings.clear()
            self.path = "pyro"
            self.path_reason = "stock Pyro: the run had left the compiled path before"
        self._update_reason()
