r"""Wake-sleep (Hinton et al., 1995), the paper's baseline, with the same encoder and decoder.

Two objectives, one per parameter set, on a minibatch of ``M`` of ``N`` datapoints
(``s = N / M``)::

    wake  (theta):  maximise  s * sum_i log p_theta(x_i, z_i),     z_i ~ q_phi(z | x_i), no
                    gradient through z_i
    sleep (phi):    maximise  s * sum_i log q_phi(z'_i | x'_i),    (z'_i, x'_i) ~ p_theta(z, x)

plus the model's MAP weight prior ``log p(theta, phi)`` (it pulls on every parameter once).
Neither objective is a bound on ``log p(x)``; the trainer's history still records the ELBO
(estimator B by default) of the current encoder/decoder, which is what the paper's Figure 2
plots for both methods.

Because ``z`` is detached in the wake phase and the fantasies are drawn without gradient,
``grad(wake + sleep)`` holds the wake gradient in theta, the sleep gradient in phi and the prior
gradient in both, so one backward pass and one optimizer step serve the two phases. (Pyro's
``ReweightedWakeSleep`` is a different algorithm and does not support minibatches.)

Two implementations compute the same numbers from the same random draws (a test checks
this): a generic one on Pyro traces, for any ``module`` whose ``model(x=None, num_data,
batch_size)`` can generate data, and a direct one on the :class:`~pyro_aevb.models.VAE`'s
networks that skips Pyro's bookkeeping.
"""

from __future__ import annotations

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_factor, site_is_subsample

from ..models import VAE
from .objective import Objective, make_objective

__all__ = ["WakeSleepObjective"]


def _latent_sites(trace):
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    }


class WakeSleepObjective(Objective):
    """Wake-sleep updates for a model object with Pyro ``model``/``guide`` methods.

    ``loss_and_grads`` returns the wake loss ``-s sum_i log p(x_i, z_i) - log p(theta)`` and
    leaves ``grad(wake + sleep)`` in ``.grad``; ``bound`` is the per-datapoint ELBO of the
    current networks with ``estimator`` (evaluation only).
    """

    path = "wake-sleep"

    def __init__(self, module, estimator: str = "B", num_particles: int = 1, fast: str = "auto"):
        super().__init__(module, estimator, num_particles)
        self.evaluator = make_objective(module, estimator, num_particles, fast)
        self.direct = fast != "off" and type(module) is VAE

    def bound(self, x: torch.Tensor) -> torch.Tensor:
        return self.evaluator.bound(x)

    def loss_and_grads(self, x: torch.Tensor, num_data: int) -> torch.Tensor:
        """The wake loss (or, if the sleep phase diverged, its non-finite loss) and the grads.

        Both phases are checked: a NaN sleep loss would leave NaN gradients in phi while the
        wake loss still looks fine, and the trainer stops on the returned non-finite value.
        """
        for p in self.params:
            p.grad = None
        phases = self._vae_phases if self.direct else self._pyro_phases
        wake, sleep = phases(x, num_data)
        if not bool(torch.isfinite(sleep)):
            return sleep.detach()
        (wake + sleep).backward()
        return wake.detach()

    def _pyro_phases(self, x: torch.Tensor, num_data: int):
        model, guide = self.module.model, self.module.guide
        guide_trace = poutine.trace(guide).get_trace(x, num_data)
        for site in _latent_sites(guide_trace).values():
            site["value"] = site["value"].detach()
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, num_data)
        wake = -model_trace.log_prob_sum()

        observed = [
            n
            for n, s in model_trace.nodes.items()
            if s["type"] == "sample" and s["is_observed"] and not site_is_factor(s)
        ]
        if len(observed) != 1:
            raise ValueError(
                f"wake-sleep needs exactly one observed site in the model, found {observed}"
            )
        with torch.no_grad():
            fantasy = poutine.trace(model).get_trace(None, num_data=num_data, batch_size=len(x))
        latents = {n: s["value"] for n, s in _latent_sites(fantasy).items()}
        x_fantasy = fantasy.nodes[observed[0]]["value"]
        sleep_trace = poutine.trace(poutine.condition(guide, data=latents)).get_trace(
            x_fantasy, num_data
        )
        sleep = -sleep_trace.log_prob_sum()
        return wake, sleep

    def vae_wake_loss(self, x: torch.Tensor, z: torch.Tensor, num_data: int) -> torch.Tensor:
        """Wake loss ``-(N/M) sum_i log p(x_i, z_i) - log p(theta)`` at given ``z`` (VAE)."""
        vae: VAE = self.module
        prior = dist.Normal(torch.zeros_like(z), torch.ones_like(z)).to_event(1)
        wake = -(num_data / x.shape[0]) * (prior.log_prob(z) + vae.likelihood_dist(z).log_prob(x))
        wake = wake.sum()
        if vae.weight_prior_std is not None:
            wake = wake - vae.log_weight_prior()
        return wake

    def _vae_phases(self, x: torch.Tensor, num_data: int):
        vae: VAE = self.module
        scale = num_data / x.shape[0]
        loc, log_var = vae.encoder(x)
        with torch.no_grad():  # the guide's Normal.rsample draw, without its gradient
            z = loc + torch.exp(0.5 * log_var) * torch.randn_like(loc)
        wake = self.vae_wake_loss(x, z, num_data)
        prior = dist.Normal(torch.zeros_like(loc), torch.ones_like(loc)).to_event(1)
        with torch.no_grad():  # the model's generative draws, in its order
            z_f = prior.sample()
            x_f = vae.likelihood_dist(z_f).sample()
        loc_f, log_var_f = vae.encoder(x_f)
        q = dist.Normal(loc_f, torch.exp(0.5 * log_var_f)).to_event(1)
        sleep = -scale * q.log_prob(z_f).sum()
        return wake, sleep
