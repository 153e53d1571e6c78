r"""Train with the importance-weighted bound (IWAE, Burda et al. 2016), optionally with the
doubly reparameterized gradient (DReG, Tucker et al. 2019) for the encoder.

``fit(model, data, objective=IWAE(K, dreg=True))`` maximises, per minibatch of ``M`` of
``N`` rows, ``(N/M) sum_i L_K(x_i)`` plus whatever the model puts outside its data plate (the
VAE's weight prior), with ``L_K(x_i) = log (1/K) sum_k p(x_i, z_ik) / q(z_ik | x_i)`` the
bound of each datapoint (see :mod:`pyro_aevb.infer.importance_weighted` for the estimator,
the gradients and the minibatch scaling).

Two implementations compute the same numbers from the same random draws (a test checks this):

* ``path = "pyro"``: any model/guide pair, run by Pyro on ``K`` stacked copies of the
  minibatch rows (an ordinary bigger batch);
* ``path = "direct"``: the paper's :class:`~pyro_aevb.models.VAE` (any encoder, decoder and
  likelihood head), on its networks without Pyro traces; the encoder runs once per datapoint
  instead of once per particle. It draws the guide's standard normals exactly as the Pyro
  path does, so a run is the same on either path up to rounding.

``bound(x)`` (the history's ``train_bound``/``test_bound``) is the per-datapoint IWAE estimate
``L_K(x_i)`` with the same ``K`` (global latents at the guide's point estimate, as every
per-datapoint result of this library).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import pyro.poutine as poutine
import torch

from ...device import fork_rng
from ...models.vae import VAE, program_override
from ...poutine import (
    PerDatapointProgram,
    TrainingProgram,
    as_program,
    latent_sites,
    replicate_rows,
    trace_guide_and_model,
)
from ...poutine.params import buffers_kept, row_coupling_modules
from ...poutine.program import first_trace_errors
from ...validation import check_bool, check_choice, check_positive_int
from ..importance_weighted import IWAETerms, iwae_loss_and_backward, run_stacked
from ..per_datapoint import elbo_particle_per_datapoint
from .base import FAST_MODES, BoundObjective, Objective

__all__ = ["IWAE", "PyroIWAEObjective", "VAEIWAEObjective"]

# Numbers one evaluation chunk may replicate the data into (as evaluate.iwae does).
_CHUNK_BUDGET = 2**22


class IWAE(Objective):
    """Maximise the importance-weighted bound with ``K`` particles per datapoint.

    Parameters
    ----------
    num_particles : int
        K, proposals from the guide per datapoint and step (Burda et al.: 5 or 50). ``K = 1``
        is the ELBO with estimator A.
    dreg : bool
        Doubly reparameterized gradients for the guide's parameters (Tucker et al. 2019):
        unbiased, with a signal-to-noise ratio that grows with ``K`` (the plain estimator's
        decays as ``1/sqrt(K)``, Rainforth et al. 2018). The model's parameters get the plain
        gradient either way. Needs a guide that is deterministic given ``x`` and its latents
        (it is replayed).

    Every latent site of the guide must be reparameterised (``has_rsample``); one that is not
    is an error naming it.
    """

    name = "iwae"

    def __init__(self, num_particles: int = 5, dreg: bool = False):
        self.num_particles = check_positive_int(num_particles, "num_particles")
        self.dreg = check_bool(dreg, "dreg")

    def settings(self) -> dict:
        return {"num_particles": self.num_particles, "dreg": self.dreg}

    def bind(self, program: TrainingProgram, fast: str = "auto") -> BoundObjective:
        check_choice(fast, "fast", FAST_MODES)
        if program.guide is None:
            raise ValueError(
                "the IWAE objective needs a guide q(z | x) as its proposal: pass guide= (or a "
                "model object with .model and .guide)"
            )
        reason = "fast='off'"
        if fast != "off":
            reason = VAEIWAEObjective.unsupported_reason(program)
            if reason is None:
                bound = VAEIWAEObjective(program, self.num_particles, self.dreg)
                bound.path_reason = (
                    "the VAE's own networks: encoder once per datapoint, decoder on the K "
                    "particles; same numbers as the Pyro path"
                )
                return bound
            if fast == "on":
                raise ValueError(
                    f"fast='on' but the direct IWAE path does not support this model: {reason}"
                )
        bound = PyroIWAEObjective(program, self.num_particles, self.dreg)
        bound.path_reason = reason
        return bound


class _IWAEBound(BoundObjective):
    """What both implementations share: the loss and its gradient from the terms of one run
    on ``K`` stacked copies, and the per-datapoint bound in particle chunks."""

    def __init__(self, program: TrainingProgram, num_particles: int, dreg: bool):
        # The log weights are estimator A's terms; "A" is what stock_bound would use.
        super().__init__(program, "A", num_particles)
        self.dreg = dreg

    def _terms(self, x: torch.Tensor, num_particles: int, dreg: bool) -> IWAETerms:
        raise NotImplementedError

    def _bound_log_weights(self, x: torch.Tensor):
        """``k -> (k, batch)`` log weights of ``k`` fresh particles for the rows of ``x``."""
        return lambda k: self._terms(x, k, False).log_w

    def loss_and_grads(self, x: torch.Tensor) -> torch.Tensor:
        """``-(N/M) sum_i L_K(x_i) - G`` (a detached scalar); its plain or DReG gradient in
        ``p.grad``. NaN, without gradients, if a log weight is not finite."""
        self.zero_grad()
        terms = self._terms(x, self.num_particles, self.dreg)
        scale = self.program.num_data / x.shape[0]
        return iwae_loss_and_backward(terms, scale, self.params, self.dreg)

    def bound(self, x: torch.Tensor) -> torch.Tensor:
        """``L_K(x_i)``, shape ``(batch,)``, without gradient; particles drawn in chunks so
        that a chunk replicates ``x`` into at most about 4M numbers."""
        chunk = max(1, min(self.num_particles, _CHUNK_BUDGET // max(1, x.numel())))
        draw = self._bound_log_weights(x)
        log_w = []
        done = 0
        with torch.no_grad():
            while done < self.num_particles:
                k = min(chunk, self.num_particles - done)
                log_w.append(draw(k))
                done += k
        return torch.logsumexp(torch.cat(log_w), dim=0) - math.log(self.num_particles)


class PyroIWAEObjective(_IWAEBound):
    """IWAE on any model/guide pair through Pyro traces of the programs on stacked rows."""

    path = "pyro"

    def setup(self, x: torch.Tensor) -> None:
        """The minibatch contract and parameters (as for every objective), then one run on
        ``K`` stacked copies of ``x``: the data plate must cover them, guide and model must
        match, every guide latent must be reparameterised, and for DReG the replayed guide
        must give the same ``log q``. Under a forked RNG: the training draws do not shift."""
        super().setup(x)
        model, guide = self.program.model, self.program.guide
        plate = self.program.plate_name
        k = self.num_particles
        x_rep = replicate_rows(x, k)
        what = f"the model and guide on {k} stacked copies of the minibatch (IWAE's particles)"
        # a throw-away run: no draw shifted, no BatchNorm statistic updated
        with fork_rng(), torch.no_grad(), poutine.block(), buffers_kept():
            # plate over the rows given, guide sites matching the model's latents (a scale
            # inside the plate is applied by this objective, as by Trace_ELBO: no warning)
            PerDatapointProgram(model, guide, x_rep, plate_name=plate, warn=False)
            with first_trace_errors(x_rep.shape, what):
                guide_trace = poutine.trace(guide).get_trace(x_rep)
            for name, site in latent_sites(guide_trace).items():
                if not site["fn"].has_rsample:
                    raise ValueError(
                        f"the IWAE objective differentiates through the guide's draws, but "
                        f"guide site '{name}' has a {type(site['fn']).__name__} distribution "
                        f"without rsample (a discrete or non-reparameterisable latent needs "
                        f"a score-function estimator such as VIMCO, which this objective does "
                        f"not implement); use a reparameterisable distribution or the ELBO"
                    )
            if self.dreg:
                self._check_replay(x)

    def _check_replay(self, x: torch.Tensor) -> None:
        """DReG replays the guide on its own draws; a guide that is not deterministic given
        ``x`` and its latents (dropout in training mode) would weight with another ``q``."""
        seed = int(torch.randint(0, 2**31 - 1, ()))
        out = []
        for dreg in (False, True):
            torch.manual_seed(seed)
            terms = self._terms(x, self.num_particles, dreg)
            out.append(terms.log_q)
        if not torch.allclose(out[0], out[1], rtol=1e-4, atol=1e-4):
            worst = float((out[0] - out[1]).abs().max())
            raise ValueError(
                f"dreg=True replays the guide on its own draws, but the replayed guide gives "
                f"another log q(z | x) (by up to {worst:.3g}): the guide is not deterministic "
                f"given x and its latents (dropout or other randomness in training mode?). "
                f"Make it deterministic, or use dreg=False"
            )

    def _terms(self, x: torch.Tensor, num_particles: int, dreg: bool) -> IWAETerms:
        return run_stacked(
            self.program.model,
            self.program.guide,
            x,
            num_particles,
            self.program.plate_name,
            dreg,
        )

    def _bound_log_weights(self, x: torch.Tensor):
        # the per-datapoint programs: the plate must cover the rows, globals at a point estimate
        program = as_program(
            self.program.model, self.program.guide, x, plate_name=self.program.plate_name
        )

        def draw(k: int) -> torch.Tensor:
            x_rep = replicate_rows(x, k)
            guide_trace, model_trace = trace_guide_and_model(program.model, program.guide, x_rep)
            log_w = elbo_particle_per_datapoint(model_trace, guide_trace, "A", program.plate_name)
            return log_w.expand(x_rep.shape[0]).reshape(k, x.shape[0])

        return draw


class VAEIWAEObjective(_IWAEBound):
    """IWAE on a :class:`~pyro_aevb.models.VAE`'s networks: the arithmetic of its Pyro
    programs on ``K`` stacked copies, without traces, the encoder run once per datapoint.

    Per step: ``[mu, sigma] = encoder(x)`` ``(M, J)``, repeated to ``(K M, J)``;
    ``eps ~ N(0, I)`` ``(K M, J)`` drawn as ``Normal.rsample`` draws it; ``z = mu + eps sigma``;
    ``log q = Normal(mu, sigma).log_prob(z)``, ``log p = Normal(0, 1).log_prob(z) +
    log p(x | z)`` summed over each row's event; ``G = log p(theta)`` (the weight prior).
    """

    path = "direct"

    def __init__(self, program: TrainingProgram, num_particles: int, dreg: bool):
        reason = self.unsupported_reason(program)
        if reason is not None:
            raise ValueError(f"the direct IWAE path does not support this model: {reason}")
        super().__init__(program, num_particles, dreg)
        self.vae: VAE = program.model.__self__

    @classmethod
    def unsupported_reason(cls, program: TrainingProgram) -> str | None:
        """``None`` if the programs are a :class:`~pyro_aevb.models.VAE`'s own ``model`` and
        ``guide`` (a subclass overriding none of the methods that define them), else why not."""
        vae = getattr(program.model, "__self__", None)
        if not isinstance(vae, VAE):
            return "the model is not a pyro_aevb VAE's model method"
        override = program_override(vae)
        if override is not None:
            return override
        if (
            getattr(program.model, "__func__", None) is not VAE.model
            or getattr(program.guide, "__self__", None) is not vae
            or getattr(program.guide, "__func__", None) is not VAE.guide
        ):
            return "the model/guide are not the VAE's own model and guide methods"
        if program.plate_name != "data":
            return f"plate_name is {program.plate_name!r}; the VAE's plate is 'data'"
        if any(m is not vae for m in program.modules):
            return "the program trains modules besides the VAE"
        coupling = row_coupling_modules([vae])
        if coupling:
            # the Pyro path runs them on the K stacked copies (one dropout mask per particle,
            # batch statistics over K M rows); the encoder's single run here would not
            return (
                f"the VAE has {', '.join(coupling)} in training mode, which the direct path "
                f"would run on the M rows instead of the K M stacked particles"
            )
        return None

    def setup(self, x: torch.Tensor) -> None:
        super().setup(x)
        own = {id(p) for p in self.vae.parameters()}
        if any(id(p) not in own for p in self.params):
            raise ValueError(
                "the VAE's programs touch parameters outside the VAE (Pyro's param store); "
                "use fast='off'"
            )

    def _terms(self, x: torch.Tensor, num_particles: int, dreg: bool) -> IWAETerms:
        vae = self.vae
        rows = x.shape[0]
        loc, scale = vae.encode(x)
        loc, scale = replicate_rows(loc, num_particles), replicate_rows(scale, num_particles)
        # the guide's Normal(loc, scale).rsample(): loc + eps * scale, eps by normal_()
        eps = torch.empty_like(loc).normal_()
        z = loc + eps * scale
        leaves = paths = None
        at = z
        if dreg:
            at = z.detach().requires_grad_()
            leaves, paths = [at], [z]
        log_q = dist.Normal(loc, scale).log_prob(at).sum(-1)
        zeros = torch.zeros_like(loc)
        log_p = dist.Normal(zeros, torch.ones_like(zeros)).log_prob(at).sum(-1)
        log_p = log_p + vae.likelihood_dist(at).log_prob(replicate_rows(x, num_particles))
        if vae.weight_prior_std is not None:
            global_term = vae.log_weight_prior()
        else:
            global_term = zeros.new_zeros(())
        shape = (num_particles, rows)
        return IWAETerms(log_p.reshape(shape), log_q.reshape(shape), global_term, leaves, paths)
