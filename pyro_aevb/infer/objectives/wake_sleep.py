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
this): a generic one on Pyro traces, for any model/guide pair (the fantasies ``(z', x')`` are
the model run under :func:`pyro.poutine.uncondition`, so it needs no special calling
convention, only that the model's one observed site observe ``x`` itself, perhaps
reshaped: the guide is run on that site's fantasy in place of ``x``, so a model observing a
transform or a part of ``x`` is refused), and a direct one on the
:class:`~pyro_aevb.models.VAE`'s networks that skips Pyro's bookkeeping.
"""

from __future__ import annotations

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_factor

from ...models.vae import VAE
from ...poutine import (
    TrainingProgram,
    guide_auxiliary_sites,
    latent_sites,
    plate_frame,
    sample_sites,
)
from ...validation import check_choice, check_positive_int
from ..elbo import ESTIMATORS
from .base import FAST_MODES, BoundObjective, Objective
from .fast_vae import FastVAE

__all__ = ["WakeSleep", "WakeSleepObjective"]


class WakeSleep(Objective):
    """The wake-sleep baseline (Hinton et al. 1995) with the model's encoder and decoder.

    Parameters
    ----------
    estimator : {"A", "B"}
        The estimator of the ELBO recorded in the history (wake-sleep optimises no bound).
    num_particles : int
        Draws per datapoint for that ELBO.

    With ``fast="on"`` (:meth:`bind`) training must take the direct path on the VAE's own
    networks (a :class:`~pyro_aevb.models.VAE`, not a subclass, with its own guide); any
    other model/guide pair is an error saying why (``"auto"`` runs it on Pyro traces).
    """

    name = "wake-sleep"

    def __init__(self, estimator: str = "B", num_particles: int = 1):
        self.estimator = check_choice(estimator, "estimator", ESTIMATORS)
        self.num_particles = check_positive_int(num_particles, "num_particles")

    def settings(self) -> dict:
        return {"estimator": self.estimator, "num_particles": self.num_particles}

    def bind(self, program: TrainingProgram, fast: str = "auto") -> BoundObjective:
        check_choice(fast, "fast", FAST_MODES)
        if program.guide is None:
            raise ValueError("wake-sleep needs a guide (the recognition model); pass guide=")
        return WakeSleepObjective(program, self.estimator, self.num_particles, fast)


class WakeSleepObjective(BoundObjective):
    """Wake-sleep updates for a :class:`~pyro_aevb.poutine.TrainingProgram`.

    ``loss_and_grads`` returns the wake loss ``-s sum_i log p(x_i, z_i) - log p(theta)`` and
    leaves ``grad(wake + sleep)`` in ``.grad``; ``bound`` is the per-datapoint ELBO of the
    current networks with ``estimator`` (evaluation only).
    """

    path = "wake-sleep"

    def __init__(self, program, estimator="B", num_particles=1, fast="auto"):
        super().__init__(program, estimator, num_particles)
        check_choice(fast, "fast", FAST_MODES)
        vae = getattr(program.model, "__self__", None)
        self.vae = vae if isinstance(vae, VAE) else None
        reason = "fast='off'" if fast == "off" else self.unsupported_reason(program)
        self.direct = reason is None
        if fast == "on" and not self.direct:
            raise ValueError(
                f"fast='on' but the direct wake-sleep path does not support this model: "
                f"{reason}; use fast='auto' (Pyro traces)"
            )
        # the fused bound runs the VAE's own encoder: only when that is the guide
        own_guide = getattr(program.guide, "__self__", None) is self.vae
        fast_ok = self.vae is not None and own_guide and fast != "off"
        self.kernel = None
        if fast_ok and FastVAE.unsupported_reason(self.vae, estimator, num_particles) is None:
            self.kernel = FastVAE(self.vae, estimator, num_particles)
        self.path_reason = "direct VAE arithmetic" if self.direct else f"Pyro traces: {reason}"

    @staticmethod
    def unsupported_reason(program: TrainingProgram) -> str | None:
        """``None`` if the direct path (the VAE's networks, no Pyro trace) computes this
        program's wake and sleep phases, else why not."""
        vae = getattr(program.model, "__self__", None)
        if not isinstance(vae, VAE) or getattr(program.model, "__func__", None) is not VAE.model:
            return "the model is not a pyro_aevb VAE's model method"
        if type(vae) is not VAE:
            return (
                f"{type(vae).__name__} is a subclass of VAE (the direct path computes VAE's "
                f"own programs)"
            )
        if getattr(program.guide, "__self__", None) is not vae:
            return "the guide is not the VAE's own guide method"
        if program.plate_name != "data":
            return f"plate_name is {program.plate_name!r}; the VAE's plate is 'data'"
        return None

    def bound(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is not None:
            return self.kernel.bound(x)
        return self.stock_bound(x)

    def loss_and_grads(self, x: torch.Tensor) -> torch.Tensor:
        """The wake loss (or, if the sleep phase diverged, its non-finite loss) and the grads.

        Both phases are checked: a NaN sleep loss would leave NaN gradients in phi while the
        wake loss still looks fine, and the trainer stops on the returned non-finite value.
        """
        self.zero_grad()
        phases = self._vae_phases if self.direct else self._pyro_phases
        wake, sleep = phases(x, self.program.num_data)
        if not bool(torch.isfinite(sleep)):
            return sleep.detach()
        (wake + sleep).backward()
        return wake.detach()

    def _pyro_phases(self, x: torch.Tensor, num_data: int):
        model, guide = self.program.model_n, self.program.guide_n
        plate = self.program.plate_name
        guide_trace = poutine.trace(guide).get_trace(x)
        for site in latent_sites(guide_trace).values():
            site["value"] = site["value"].detach()
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
        aux, outside = guide_auxiliary_sites(guide_trace, model_trace, plate)
        if aux or outside:
            raise ValueError(
                f"wake-sleep's sleep phase scores the guide at the model's fantasies, but the "
                f"guide sets latents from the auxiliary site(s) {sorted({**aux, **outside})} "
                f"(a joint or flow guide, or Pyro's AutoNormal): use a guide that samples the "
                f"model's latent sites directly (e.g. AmortizedNormal on a model without global "
                f"latents), or the ELBO"
            )
        globals_ = [n for n, s in latent_sites(model_trace).items() if not plate_frame(s, plate)]
        if globals_:
            raise ValueError(
                f"wake-sleep trains a recognition model of per-datapoint latents, but the model "
                f"has global latent site(s) {globals_} outside the data plate '{plate}': its "
                f"wake phase would not train their guide (the draws are fixed) and its sleep "
                f"phase would score that guide at a prior draw (-inf for a point estimate). "
                f"Make them parameters (pyro.param) or train with the ELBO"
            )
        wake = -model_trace.log_prob_sum()

        observed = [
            n
            for n, s in sample_sites(model_trace)
            if s["is_observed"] and not site_is_factor(s) and plate_frame(s, plate)
        ]
        if len(observed) != 1:
            raise ValueError(
                f"wake-sleep needs exactly one observed site in the data plate '{plate}' (the "
                f"data to fantasise), found {observed}"
            )
        seen = model_trace.nodes[observed[0]]["value"]
        # x observed as it is, or only reshaped (image rows flattened): the fantasy is fed to
        # the guide in x's shape
        same = seen.numel() == x.numel() and torch.equal(seen.to(x.dtype).reshape(x.shape), x)
        if not same:
            # the fantasy of that site is what the guide is fed in place of x
            detail = (
                f"it holds shape {tuple(seen.shape)} where x has shape {tuple(x.shape)}"
                if seen.numel() != x.numel()
                else f"it holds {tuple(seen.shape)} values that differ from x's"
            )
            raise ValueError(
                f"wake-sleep's sleep phase runs the guide on the model's fantasy of its "
                f"observed site '{observed[0]}' in place of x, but that site observes "
                f"something other than x itself ({detail}: a transform of x, or a part of "
                f"it): the guide would learn from inputs it never "
                f"sees. Observe x itself (obs=x, moving the transform into the likelihood), or "
                f"train with the ELBO"
            )
        with torch.no_grad():
            # the generative model run forward: every latent from its prior, the data site
            # sampled instead of observed
            fantasy = poutine.trace(poutine.uncondition(model)).get_trace(x)
        latents = {
            n: s["value"]
            for n, s in sample_sites(fantasy)
            if not s["is_observed"] and not s["infer"].get("was_observed")
        }
        x_fantasy = fantasy.nodes[observed[0]]["value"].to(x.dtype).reshape(x.shape)
        sleep_trace = poutine.trace(poutine.condition(guide, data=latents)).get_trace(x_fantasy)
        sleep = -sleep_trace.log_prob_sum()
        return wake, sleep

    def vae_wake_loss(self, x: torch.Tensor, z: torch.Tensor, num_data: int) -> torch.Tensor:
        """Wake loss ``-(N/M) sum_i log p(x_i, z_i) - log p(theta)`` at given ``z`` (VAE)."""
        vae = self.vae
        wake = -(num_data / x.shape[0]) * vae.log_joint(x, z).sum()
        if vae.weight_prior_std is not None:
            wake = wake - vae.log_weight_prior()
        return wake

    def _vae_phases(self, x: torch.Tensor, num_data: int):
        vae = self.vae
        scale = num_data / x.shape[0]
        loc, scale_q = vae.encode(x)
        with torch.no_grad():  # the guide's Normal.rsample draw, without its gradient
            z = loc + scale_q * torch.randn_like(loc)
        wake = self.vae_wake_loss(x, z, num_data)
        prior = dist.Normal(torch.zeros_like(loc), torch.ones_like(loc)).to_event(1)
        with torch.no_grad():  # the model's generative draws, in its order
            z_f = prior.sample()
            x_f = vae.likelihood_dist(z_f).sample()
        loc_f, scale_f = vae.encode(x_f)
        q = dist.Normal(loc_f, scale_f).to_event(1)
        sleep = -scale * q.log_prob(z_f).sum()
        return wake, sleep
