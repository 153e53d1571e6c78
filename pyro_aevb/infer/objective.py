r"""Training objectives: one minibatch step's loss and gradients, and the per-datapoint bound.

An :class:`Objective` wraps a model object (an ``nn.Module`` with Pyro ``model(x, num_data)``
and ``guide(x, num_data)`` methods holding all trainable parameters) and an estimator:

* ``loss_and_grads(x, num_data)`` evaluates the minibatch loss of eq. 8,
  ``-(N/M) sum_{i in batch} L_i - log p(theta)`` (the weight prior if the model has one),
  writes its gradient into each parameter's ``.grad`` and returns the loss as a detached
  scalar tensor;
* ``bound(x)`` returns the per-datapoint bound ``L_i``, shape ``(batch,)``, without gradient.

:class:`PyroObjective` runs the stock Pyro estimators (``Trace_ELBO`` for A, the strict
:class:`~pyro_aevb.infer.elbo.AnalyticKL_ELBO` for B) and works for any such model.
:func:`make_objective` picks the fused fast path of :mod:`pyro_aevb.infer.fast_vae` when it
supports the model and falls back to :class:`PyroObjective` otherwise, logging which one runs.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from ..validation import check_choice, check_positive_int
from .elbo import ESTIMATORS, make_elbo
from .per_datapoint import elbo_per_datapoint

__all__ = ["Objective", "PyroObjective", "make_objective", "FAST_MODES"]

logger = logging.getLogger("pyro_aevb")

FAST_MODES = ("auto", "on", "off")


class Objective:
    """Base class: a model object, an estimator (``"A"``/``"B"``) and ``num_particles`` L."""

    #: Short name of the implementation, shown in logs and run summaries.
    path = "base"
    #: Whether :meth:`bound` gives a per-datapoint ELBO (not so without an encoder).
    has_bound = True

    def __init__(self, module: nn.Module, estimator: str = "B", num_particles: int = 1):
        self.module = module
        self.estimator = check_choice(estimator, "estimator", ESTIMATORS)
        self.num_particles = check_positive_int(num_particles, "num_particles")
        self.params = [p for p in module.parameters() if p.requires_grad]

    def loss_and_grads(self, x: torch.Tensor, num_data: int) -> torch.Tensor:
        raise NotImplementedError

    def bound(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def train_step(
        self, x: torch.Tensor, idx: torch.Tensor, num_data: int, optimizer: torch.optim.Optimizer
    ) -> float:
        """One training step on the minibatch ``x = data[idx]``; returns the loss.

        A non-finite loss is returned *without* updating the parameters, so the caller can
        stop with the last finite ones. Subclasses with more than one update per minibatch
        (Monte Carlo EM) override this.
        """
        loss = self.loss_and_grads(x, num_data).item()
        if math.isfinite(loss):
            optimizer.step()
        return loss

    def diagnostics(self) -> dict:
        """Numbers to add to the next history record (e.g. acceptance rates); none here."""
        return {}

    def state_dict(self) -> dict:
        """Extra state to checkpoint (tensors and numbers only); none by default."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")


class PyroObjective(Objective):
    """Stock Pyro: ``Trace_ELBO`` (A) or :class:`AnalyticKL_ELBO` (B) on the module's programs."""

    path = "pyro"

    def __init__(self, module: nn.Module, estimator: str = "B", num_particles: int = 1):
        super().__init__(module, estimator, num_particles)
        self.elbo = make_elbo(self.estimator, self.num_particles)

    def loss_and_grads(self, x: torch.Tensor, num_data: int) -> torch.Tensor:
        for p in self.params:
            p.grad = None
        loss = self.elbo.differentiable_loss(self.module.model, self.module.guide, x, num_data)
        loss.backward()
        return loss.detach()

    @torch.no_grad()
    def bound(self, x: torch.Tensor) -> torch.Tensor:
        # Estimator B has lower variance; A needs no closed-form KL.
        return elbo_per_datapoint(
            self.module.model,
            self.module.guide,
            x,
            estimator=self.estimator,
            num_particles=self.num_particles,
        )


def make_objective(
    module: nn.Module, estimator: str = "B", num_particles: int = 1, fast: str = "auto"
) -> Objective:
    """The fast fused objective when it supports ``module``, else stock Pyro.

    ``fast="auto"`` chooses, ``"on"`` requires the fast path (error if unsupported),
    ``"off"`` forces stock Pyro.
    """
    check_choice(fast, "fast", FAST_MODES)
    if fast != "off":
        from .fast_vae import FastVAEObjective

        reason = FastVAEObjective.unsupported_reason(module, estimator, num_particles)
        if reason is None:
            objective = FastVAEObjective(module, estimator, num_particles)
            logger.info("training path: fast fused VAE objective (estimator %s)", estimator)
            return objective
        if fast == "on":
            raise ValueError(f"fast='on' but the fast path does not support this model: {reason}")
        logger.info("training path: stock Pyro (%s)", reason)
    else:
        logger.info("training path: stock Pyro (fast='off')")
    return PyroObjective(module, estimator, num_particles)
