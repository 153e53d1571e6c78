r"""How does the encoder's ``q(z|x)`` differ from the true posterior? Diagnostics against MCMC.

For each datapoint, draws from the guide are compared with draws from the posterior
``p(z | x_i)`` by the batched HMC of :mod:`pyro_aevb.mcmc` (or Pyro's NUTS as a reference), in
the unconstrained coordinates ``u`` of the model's local latents (where HMC works, and where a
Gaussian guide is Gaussian)::

    mean offset      (E_q[u_d] - E_p[u_d]) / sd_p(u_d)        per dimension d
    variance ratio   Var_q(u_d) / Var_p(u_d)                   per dimension (mode-seeking: < 1)
    KL(q || p)       log p(x_i) - L_i[q]                        exact identity, per datapoint

The KL identity ``log p(x) = L[q] + KL(q(z|x) || p(z|x))`` (the paper's eq. 1) holds in any
coordinates; ``L[q]`` is estimated from the guide draws (estimator A) and ``log p(x_i)`` by an
estimator of :func:`~pyro_aevb.evaluate.log_marginal` (AIS by default), each with its
standard error. Maximising the ELBO minimises ``KL(q || p)``, which penalises mass of ``q``
where the posterior has little, not the reverse: ``q`` tends to be more concentrated than the
posterior (variance ratios below 1; the course notes' warning), which these numbers show per
dimension. :meth:`PosteriorShapeResult.gaussian_kl` gives the KL between Gaussian fits of the
two sets of draws, a shape-only summary.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..device import fork_rng
from ..mcmc import PerDatapointPotential, sample
from ..mcmc.pyro_reference import sample_posterior_pyro
from ..poutine import as_program
from ..validation import check_choice, check_data, check_positive_int, check_seed
from .log_marginal import log_marginal
from .result import LogMarginalResult, to_jsonable

__all__ = ["PosteriorShapeResult", "compare_with_mcmc", "guide_draws"]

SAMPLERS = ("hmc", "pyro_nuts")


def _moments(draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S, B, D)`` draws -> per-datapoint mean and variance ``(B, D)``."""
    return draws.mean(0), draws.var(0)


def guide_draws(
    potential: PerDatapointPotential, num_samples: int, chunk: int = 256
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``num_samples`` guide draws per datapoint in the unconstrained layout, with their
    ``log q`` and ``log p(x, u)``: ``(S, B, D)``, ``(S, B)``, ``(S, B)``. Guide and model run
    on ``chunk`` stacked copies of the rows at a time."""
    draws, log_q, log_p = [], [], []
    b = potential.batch_size
    done = 0
    with torch.no_grad():
        while done < num_samples:
            k = min(chunk, num_samples - done)
            pot = potential.with_chains(k)
            u, lq = pot.sample_guide()
            draws.append(u.reshape(k, b, -1))
            log_q.append(lq.reshape(k, b))
            log_p.append(pot.log_joint(u).reshape(k, b))
            done += k
    return torch.cat(draws), torch.cat(log_q), torch.cat(log_p)


@dataclass
class PosteriorShapeResult:
    """Guide against posterior, per datapoint; see the module docstring.

    Attributes
    ----------
    names : list of str
        A label per unconstrained coordinate (``"site[i]"``), length ``D``.
    q_mean, q_var, post_mean, post_var : torch.Tensor
        ``(B, D)`` moments of the guide and of the posterior draws.
    mean_offset, var_ratio : torch.Tensor
        ``(B, D)``: ``(q_mean - post_mean) / post_sd`` and ``q_var / post_var``.
    elbo, elbo_stderr : torch.Tensor
        ``(B,)``: ``L_i[q]`` from the guide draws and its standard error.
    log_marginal : LogMarginalResult
        The ``log p(x_i)`` estimate used.
    kl, kl_stderr : torch.Tensor
        ``(B,)``: ``KL(q || p(.|x_i)) = log p(x_i) - L_i[q]`` and its standard error.
    q_draws, post_draws : torch.Tensor
        ``(S_q, B, D)`` guide draws and ``(C, S, B, D)`` posterior draws (chains, draws).
    diagnostics : dict
        The posterior sampler's per-datapoint diagnostics (acceptance, ESS, R-hat).
    settings : dict
    """

    names: list[str]
    q_mean: torch.Tensor
    q_var: torch.Tensor
    post_mean: torch.Tensor
    post_var: torch.Tensor
    elbo: torch.Tensor
    elbo_stderr: torch.Tensor
    log_marginal: LogMarginalResult
    q_draws: torch.Tensor
    post_draws: torch.Tensor
    diagnostics: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    @property
    def mean_offset(self) -> torch.Tensor:
        return (self.q_mean - self.post_mean) / self.post_var.sqrt()

    @property
    def var_ratio(self) -> torch.Tensor:
        return self.q_var / self.post_var

    @property
    def kl(self) -> torch.Tensor:
        return self.log_marginal.estimate - self.elbo

    @property
    def kl_stderr(self) -> torch.Tensor:
        return (self.log_marginal.stderr.pow(2) + self.elbo_stderr.pow(2)).sqrt()

    def gaussian_kl(self) -> torch.Tensor:
        """``KL(N(q) || N(p))`` between Gaussian fits (full covariance) of the two sets of
        draws, per datapoint ``(B,)``: how far the *shapes* differ, ignoring non-Gaussianity."""
        post = self.post_draws.reshape(-1, *self.post_draws.shape[2:])  # (C S, B, D)
        fits = []
        for draws in (self.q_draws, post):
            mean = draws.mean(0)
            centred = draws - mean
            cov = torch.einsum("sbi,sbj->bij", centred, centred) / (draws.shape[0] - 1)
            eye = torch.eye(cov.shape[-1], dtype=cov.dtype)
            cov = cov + 1e-9 * cov.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None] * eye
            fits.append(torch.distributions.MultivariateNormal(mean, covariance_matrix=cov))
        return torch.distributions.kl_divergence(*fits)

    def summary(self) -> str:
        """A few human-readable lines."""
        r = self.var_ratio
        lines = [
            f"guide vs posterior over {r.shape[0]} datapoints, {r.shape[1]} latent coordinates",
            f"  KL(q || p) = log p(x) - ELBO: mean {float(self.kl.mean()):.3f} +- "
            f"{float(self.kl_stderr.pow(2).sum().sqrt() / r.shape[0]):.3f} nats",
            f"  variance ratio Var_q / Var_p: median {float(r.median()):.3f}, "
            f"{100 * float((r < 1).double().mean()):.0f} % of coordinates below 1",
            f"  |mean offset| in posterior sd: median {float(self.mean_offset.abs().median()):.3f}",
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-serialisable per-datapoint numbers (draws left out)."""
        return to_jsonable(
            {
                "names": self.names,
                "mean_offset": self.mean_offset,
                "var_ratio": self.var_ratio,
                "kl": self.kl,
                "kl_stderr": self.kl_stderr,
                "elbo": self.elbo,
                "log_marginal": self.log_marginal.estimate,
                "gaussian_kl": self.gaussian_kl(),
                "settings": self.settings,
            }
        )

    def to_inference_data(self) -> dict:
        """ArviZ ``InferenceData`` of both sets of draws: ``{"posterior": ..., "guide": ...}``,
        each with dims ``(chain, draw, datapoint, u_dim)`` (the guide's draws as one chain),
        ready for ``az.summary``, ``az.plot_pair`` etc."""
        import arviz as az

        def idata(draws):
            return az.from_dict(
                posterior={"u": draws.detach().cpu().numpy()},
                dims={"u": ["datapoint", "u_dim"]},
                coords={"u_dim": self.names},
            )

        return {"posterior": idata(self.post_draws), "guide": idata(self.q_draws[None])}


def compare_with_mcmc(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    num_guide_samples: int = 1000,
    num_samples: int = 500,
    num_chains: int = 4,
    num_warmup: int = 500,
    sampler: str = "hmc",
    log_marginal_method: str = "ais",
    log_marginal_options: dict | None = None,
    plate_name: str = "data",
    global_values: dict | None = None,
    seed: int = 0,
) -> PosteriorShapeResult:
    """Compare the guide's ``q(z | x_i)`` with MCMC draws from ``p(z | x_i)`` per datapoint.

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``fn(x)``; local latents in ``pyro.plate(plate_name)``
        (globals are conditioned, as everywhere per datapoint).
    x : torch.Tensor
        ``(B, *event_shape)``.
    num_guide_samples : int
        Draws from ``q`` per datapoint (moments and the ELBO).
    num_samples, num_chains, num_warmup : int
        Posterior draws per chain, chains per datapoint, warm-up iterations.
    sampler : {"hmc", "pyro_nuts"}
        The batched HMC (fast), or Pyro's NUTS per datapoint (reference, slow).
    log_marginal_method, log_marginal_options
        How ``log p(x_i)`` is estimated for the KL (see
        :func:`~pyro_aevb.evaluate.log_marginal`; default AIS with its default settings).
    seed : int
        Seeds every random draw; the caller's RNG state is left untouched.

    Returns
    -------
    PosteriorShapeResult
    """
    x = check_data(x, "x")
    check_choice(sampler, "sampler", SAMPLERS)
    num_guide_samples = check_positive_int(num_guide_samples, "num_guide_samples", minimum=2)
    num_samples = check_positive_int(num_samples, "num_samples", minimum=2)
    num_chains = check_positive_int(num_chains, "num_chains")
    seed = check_seed(seed)
    program = as_program(model, guide, x, plate_name=plate_name, global_values=global_values)
    if program.guide is None:
        raise ValueError("compare_with_mcmc compares a guide with the posterior; got guide=None")
    program.check_no_masked_latents(
        "the posterior moments, R-hat and ESS compare_with_mcmc reports",
        "compare the guide on a model without the mask (e.g. the complete rows)",
    )
    layout = program.layout
    names = [
        f"{s.name}[{i}]" if s.size > 1 else s.name for s in layout.sites for i in range(s.size)
    ]
    with fork_rng():
        torch.manual_seed(seed)
        potential = PerDatapointPotential(program, x)
        q_draws, log_q, log_p = guide_draws(potential, num_guide_samples)
        log_w = log_p - log_q
        elbo = log_w.mean(0)
        elbo_se = log_w.std(0) / math.sqrt(num_guide_samples)
        generator = torch.Generator().manual_seed(seed)
        if sampler == "hmc":
            chains = potential.with_chains(num_chains)
            with torch.no_grad():
                init = chains.sample_guide()[0]
            res = sample(
                chains,
                init,
                num_samples=num_samples,
                num_warmup=num_warmup,
                num_chains=num_chains,
                generator=generator,
            )
            post = res.by_chain(res.samples)  # (C, S, B, D)
            diagnostics = res.diagnostics(rhat=num_chains > 1)
        else:
            res = sample_posterior_pyro(
                program,
                x,
                kernel="nuts",
                num_samples=num_samples,
                num_warmup=num_warmup,
                num_chains=num_chains,
                seed=seed,
            )
            post = res.samples
            diagnostics = res.diagnostics()
        lm = log_marginal(
            program,
            None,
            x,
            log_marginal_method,
            seed=seed,
            **(log_marginal_options or {}),
        )
    q_mean, q_var = _moments(q_draws)
    post_mean, post_var = _moments(post.reshape(-1, *post.shape[2:]))
    return PosteriorShapeResult(
        names=names,
        q_mean=q_mean,
        q_var=q_var,
        post_mean=post_mean,
        post_var=post_var,
        elbo=elbo,
        elbo_stderr=elbo_se,
        log_marginal=lm,
        q_draws=q_draws,
        post_draws=post,
        diagnostics=diagnostics,
        settings={
            "num_guide_samples": num_guide_samples,
            "num_samples": num_samples,
            "num_chains": num_chains,
            "num_warmup": num_warmup,
            "sampler": sampler,
            "log_marginal_method": log_marginal_method,
            "seed": seed,
            **program.settings,
        },
    )
