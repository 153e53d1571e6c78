r"""Training objectives: what one minibatch step computes, handed to the trainer as Pyro's
``SVI`` takes its loss.

An objective is configured by the user (:class:`Objective` subclasses: :class:`ELBO`,
:class:`~pyro_aevb.infer.objectives.wake_sleep.WakeSleep`,
:class:`~pyro_aevb.infer.objectives.mcem.MonteCarloEM`) and *bound* by the trainer to a
:class:`~pyro_aevb.poutine.TrainingProgram` (the user's model and guide on minibatches of
``N`` rows). The bound objective (:class:`BoundObjective`) does the work:

* ``loss_and_grads(x)`` evaluates the minibatch loss of eq. 8,
  ``-(N/M) sum_{i in batch} L_i - log p(theta)`` (plus whatever the model puts outside its
  data plate, e.g. the VAE's weight prior), writes its gradient into each parameter's
  ``.grad`` and returns the loss as a detached scalar tensor;
* ``train_step(x, idx, optimizer)`` does one update (several for Monte Carlo EM);
* ``bound(x)`` returns the per-datapoint bound ``L_i``, shape ``(batch,)``, without gradient.

:class:`~pyro_aevb.infer.objectives.aevb.ELBO` (estimator A, Pyro's ``Trace_ELBO``, or the
strict analytic-KL estimator B) binds to the fused fast path of
:mod:`~pyro_aevb.infer.objectives.fast_vae` where it computes exactly the same numbers (the
paper's VAE), and to stock Pyro (:class:`PyroELBOObjective`) for everything else; which one
runs, and why, is the bound objective's ``path`` and ``path_reason``.
"""

from __future__ import annotations

import math

import pyro.poutine as poutine
import torch

from ...poutine import ProgramParams, TrainingProgram, as_program
from ...poutine.params import check_params_cover, untrained_param_sites
from ...validation import check_choice, check_positive_int
from ..elbo import ESTIMATORS, make_elbo
from ..per_datapoint import program_elbo

__all__ = [
    "Objective",
    "BoundObjective",
    "PyroELBOObjective",
    "FAST_MODES",
]

FAST_MODES = ("auto", "on", "off")


class BoundObjective:
    """An objective bound to a :class:`~pyro_aevb.poutine.TrainingProgram`; see the module
    docstring. Subclasses set :attr:`params` (a :class:`~pyro_aevb.poutine.ProgramParams`)
    in :meth:`setup`."""

    #: Short name of the implementation, shown in the progress bar, summaries and configs.
    path = "base"
    #: Whether :meth:`bound` gives a per-datapoint ELBO (not so without an encoder).
    has_bound = True
    #: Set by a :meth:`train_step` that raised after updating the parameters (several updates
    #: per minibatch, all undone): the error came from trained parameters, not initial ones.
    failed_after_update = False

    def __init__(self, program: TrainingProgram, estimator: str = "B", num_particles: int = 1):
        self.program = program
        self.estimator = check_choice(estimator, "estimator", ESTIMATORS)
        self.num_particles = check_positive_int(num_particles, "num_particles")
        self.params: ProgramParams | None = None
        #: Why this path runs (shown to the user with :attr:`path`).
        self.path_reason = ""

    def setup(self, x: torch.Tensor) -> None:
        """Check the minibatch contract and collect the parameters, on a first minibatch."""
        self.program.check(x)
        self.params = self.program.collect_params(x)

    def loss_and_grads(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def bound(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def plan(self, num_steps: int) -> None:
        """Told by the trainer how many steps it means to take (before :meth:`setup`);
        objectives whose set-up cost depends on it (the compiled path) use it."""

    def train_step(self, x: torch.Tensor, idx: torch.Tensor, optimizer) -> float:
        """One training step on the minibatch ``x = data[idx]``; returns the loss.

        A non-finite loss is returned *without* updating the parameters, so the caller can
        stop with the last finite ones. Subclasses with more than one update per minibatch
        (Monte Carlo EM) override this.
        """
        loss = self.loss_and_grads(x).item()
        if math.isfinite(loss):
            optimizer.step()
        return loss

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def diagnostics(self) -> dict:
        """Numbers to add to the next history record (e.g. acceptance rates); none here."""
        return {}

    def state_dict(self) -> dict:
        """Extra state to checkpoint (tensors and numbers only); none by default."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")

    def stock_bound(self, x: torch.Tensor) -> torch.Tensor:
        """The per-datapoint bound on the user's programs through Pyro traces (the globals at
        the guide's current point estimate)."""
        program = as_program(
            self.program.model,
            self.program.guide,
            x,
            plate_name=self.program.plate_name,
        )
        with torch.no_grad():
            return program_elbo(program, x, self.estimator, self.num_particles)


class PyroELBOObjective(BoundObjective):
    """Stock Pyro: ``Trace_ELBO`` (A) or :class:`AnalyticKL_ELBO` (B) on the programs."""

    path = "pyro"

    def __init__(self, program, estimator="B", num_particles=1):
        super().__init__(program, estimator, num_particles)
        self.elbo = make_elbo(self.estimator, self.num_particles)

    def loss_and_grads(self, x: torch.Tensor) -> torch.Tensor:
        self.zero_grad()
        # the param sites, as SVI collects them: a parameter the run does not train is an
        # error here, where SVI would start training it
        with poutine.trace(param_only=True) as capture:
            loss = self.elbo.differentiable_loss(self.program.model_n, self.program.guide_n, x)
        unknown = untrained_param_sites(self.params, capture.trace)
        loss.backward()
        if unknown:
            check_params_cover(unknown)
        return loss.detach()

    def bound(self, x: torch.Tensor) -> torch.Tensor:
        # Estimator B has lower variance; A needs no closed-form KL.
        return self.stock_bound(x)

    def load_state_dict(self, state: dict) -> None:
        # A run of the compiled path (same numbers) resumes on stock Pyro: its bookkeeping
        # keys (``compiled_*``, see compiled.STATE_KEYS) have no meaning here.
        super().load_state_dict({k: v for k, v in state.items() if not k.startswith("compiled_")})


class Objective:
    """A training objective's settings; :meth:`bind` makes the working object for a program.

    Subclasses define :attr:`name`, :meth:`settings` (JSON-friendly, compared on resume) and
    :meth:`bind`.
    """

    name = "objective"

    def settings(self) -> dict:
        return {}

    def bind(self, program: TrainingProgram, fast: str = "auto") -> BoundObjective:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"
