r"""Semi-amortized training (Kim et al. 2018, SA-VAE), without differentiating through the
refinement.

On each minibatch the encoder's parameters ``lambda_0 = f_phi(x_i)`` of ``q(z | x_i)`` are
refined for ``K`` gradient steps on the per-datapoint ELBO (the model fixed), and then::

    decoder (theta):  ascend  (N/M) sum_i L_i(theta, lambda_K) + log p(theta)
    encoder (phi):    ascend  (N/M) sum_i L_i(theta, lambda_0(phi))

The decoder learns from the better posterior approximation ``q_{lambda_K}``; the encoder keeps
learning the ordinary amortized objective (so that its starting point improves). Kim et al.
also back-propagate through the ``K`` steps into ``phi``; that costs second derivatives and
is not done here. Both gradients are written in one pass: the decoder's from the refined
bound, the encoder's by back-propagating ``dL/dlambda_0`` through the encoder. The guide must
expose its per-datapoint parameters (:mod:`pyro_aevb.infer.refine`).

Guide parameters that are not per-datapoint and not the encoder's -- the flow networks of
:class:`~pyro_aevb.autoguide.AmortizedIAF`, shared by every row and not refined -- are part of
the variational family that ``q_{lambda_K}`` is drawn from, and learn, like the decoder, from
the refined bound ``L(theta, lambda_K)`` only.
"""

from __future__ import annotations

import torch
from pyro.infer import Trace_ELBO

from ...poutine import TrainingProgram, bind_num_data
from ...validation import check_choice, check_positive_float, check_positive_int
from ..refine import local_params_owner
from .base import FAST_MODES, BoundObjective, Objective

__all__ = ["SemiAmortized", "SemiAmortizedObjective"]


class SemiAmortized(Objective):
    """Semi-amortized variational inference: refine ``q`` per minibatch before the decoder's
    step (see the module docstring).

    Parameters
    ----------
    refine_steps : int
        K, gradient steps on the per-datapoint ELBO per minibatch.
    refine_lr : float
        Their step size (Adam, fresh for every minibatch; Kim et al. used SGD with momentum
        and gradient clipping).
    num_particles : int
        Draws of ``z`` per datapoint in each bound.
    """

    name = "sa-vae"

    def __init__(self, refine_steps: int = 5, refine_lr: float = 0.1, num_particles: int = 1):
        self.refine_steps = check_positive_int(refine_steps, "refine_steps")
        self.refine_lr = check_positive_float(refine_lr, "refine_lr")
        self.num_particles = check_positive_int(num_particles, "num_particles")

    def settings(self) -> dict:
        return {
            "refine_steps": self.refine_steps,
            "refine_lr": self.refine_lr,
            "num_particles": self.num_particles,
        }

    def bind(self, program: TrainingProgram, fast: str = "auto") -> BoundObjective:
        check_choice(fast, "fast", FAST_MODES)
        if fast == "on":
            raise ValueError(
                "fast='on' but semi-amortized training has no fast path (its refinement "
                "steps run on stock Pyro's traces); use fast='auto' or 'off'"
            )
        if program.guide is None or local_params_owner(program.guide) is None:
            raise ValueError(
                "semi-amortized training refines the guide's per-datapoint parameters: the "
                "guide must expose local_params(x) and local_guide(params) (the VAE's guide "
                "and pyro-aevb's autoguides do)"
            )
        return SemiAmortizedObjective(program, self)


class SemiAmortizedObjective(BoundObjective):
    """SA-VAE steps on a :class:`~pyro_aevb.poutine.TrainingProgram`; the history records
    the encoder's (amortized) bound."""

    path = "semi-amortized"

    def __init__(self, program: TrainingProgram, options: SemiAmortized):
        super().__init__(program, "A", options.num_particles)
        self.options = options
        self.owner = local_params_owner(program.guide)
        self.elbo = Trace_ELBO(num_particles=options.num_particles)
        self.path_reason = f"{options.refine_steps} refinement steps per minibatch, stock Pyro"

    def _guide_with(self, params: dict):
        return bind_num_data(
            self.owner.local_guide(params), self.program.num_data, self.program.plate_name
        )

    def refine(self, x: torch.Tensor, start: dict) -> dict:
        """``lambda_K`` from ``lambda_0 = start`` (detached), the model frozen."""
        lam = {k: v.detach().clone().requires_grad_() for k, v in start.items()}
        # Adam: its steps do not depend on the scale of the gradient, which grows as 1 / var of
        # a sharp posterior (plain SGD steps overshoot there)
        opt = torch.optim.Adam(list(lam.values()), lr=self.options.refine_lr)
        scale = x.shape[0] / self.program.num_data  # back to the minibatch's own bound
        for _ in range(self.options.refine_steps):
            loss = self.elbo.differentiable_loss(self.program.model_n, self._guide_with(lam), x)
            grads = torch.autograd.grad(loss * scale, list(lam.values()))
            for p, g in zip(lam.values(), grads, strict=True):
                p.grad = g
            opt.step()
        return {k: v.detach() for k, v in lam.items()}

    def loss_and_grads(self, x: torch.Tensor) -> torch.Tensor:
        self.zero_grad()
        start = self.owner.local_params(x)  # with the graph to the encoder
        refined = self.refine(x, start)
        # decoder: the refined bound; the guide holds no parameters here (lambda_K detached)
        loss = self.elbo.differentiable_loss(self.program.model_n, self._guide_with(refined), x)
        loss.backward()
        # encoder: d(-L(lambda_0))/d lambda_0, back-propagated through the encoder only
        trained = [k for k, v in start.items() if v.requires_grad]  # a frozen encoder has none
        if trained:
            lam0 = {k: v.detach().requires_grad_() for k, v in start.items()}
            loss0 = self.elbo.differentiable_loss(self.program.model_n, self._guide_with(lam0), x)
            grads = torch.autograd.grad(loss0, [lam0[k] for k in trained])
            torch.autograd.backward([start[k] for k in trained], list(grads))
        return loss.detach()

    def bound(self, x: torch.Tensor) -> torch.Tensor:
        return self.stock_bound(x)
