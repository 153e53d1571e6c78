r"""The paper's marginal-likelihood estimator (Kingma & Welling 2014, Appendix D).

For any normalised density ``q`` over the latents::

    1 / p(x) = integral q(z) dz / p(x) = E_{z ~ p(z | x)} [ q(z) / p(x, z) ].

So, per datapoint:

1. draw posterior samples ``z_l ~ p(z | x_i)`` with HMC (the paper: 50 samples, 4 leapfrog
   steps, step sizes adapted per datapoint toward 90 % acceptance);
2. fit a density estimator ``q`` to the first part (``fit_fraction``) of the draws: a
   Gaussian, or a Gaussian kernel density estimate whose bandwidth is chosen by held-out
   likelihood (as the paper's code did);
3. on the remaining ``L`` draws (``split="within"``, the paper's; with ``split="across"`` and
   two or more chains, each chain's draws are all evaluated under a ``q`` fitted to the other
   chains' draws)::

       log p(x_i) ~= -log (1/L) sum_l q(z_l) / p(x_i, z_l)
                   = -logmeanexp_l [log q(z_l) - log p(x_i, z_l)].

Everything is done in the unconstrained coordinates ``u`` of the latents, where
``p(x, u) = p(x, z(u)) |dz/du|`` (:mod:`pyro_aevb.mcmc.potential`); the identity holds in any
coordinates, and a density estimate fits better there.

**Error and bias.** The mean ratio is an unbiased estimate of ``1/p(x_i)`` (``q`` is fitted on
draws that are not used to average), so by Jensen the log estimate is a stochastic *upper*
bound, with bias about ``Var / 2`` of the mean ratio. Its standard error is the delta method on
the mean ratio, ``std_l(r_l / mean r) / sqrt(n_eff)``, where ``n_eff`` is ArviZ's effective
sample size of the ratios (MCMC draws are correlated; capped at the number of draws) or, with
``stderr="iid"``, the number of draws. The ratio has finite variance when ``q`` has lighter
tails than the posterior, so a too-wide ``q`` (a large bandwidth) is the failure mode; the
estimate is good for low-dimensional latents (the paper: Nz <= 5).

**The standard error is optimistic** with the paper's 50 draws: the ESS and the spread of
25 correlated ratios are themselves noisy. Against exact ``log p(x_i)`` on two conjugate
models (``benchmarks/calibration.py``) the errors in units of the reported stderr have a
standard deviation of 1.8-1.9 (2.0-2.2 with ``stderr="iid"``) and 6-9 % exceed 3, while the
mean error over datapoints is 0.006 nats or less; the Pareto ``k`` does not single out the
points concerned. Read it as a rough scale, or use AIS (z spread 1.25-1.3 with 8 chains) for
per-datapoint error bars. With ``num_chains=2, split="across"`` (each chain evaluated under
a ``q`` fitted to the other chain: twice the paper's sampling) the same benchmark measures a
spread of 1.24-1.31, AIS's level; two chains split within each chain reach 1.48-1.56.

**Samplers.** ``sampler="hmc"`` is the batched sampler of :mod:`pyro_aevb.mcmc.hmc` (all
datapoints at once); ``"pyro_nuts"`` / ``"pyro_hmc"`` run Pyro's own :class:`~pyro.infer.MCMC`
per datapoint (:mod:`pyro_aevb.mcmc.pyro_reference`), much slower, as a reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.distributions as tdist

from ..device import check_generator, place
from ..mcmc import sample as hmc_sample
from ..mcmc.adaptation import check_target_accept
from ..mcmc.diagnostics import ess_mean
from ..mcmc.initialization import importance_resampled_init
from ..mcmc.potential import PerDatapointPotential
from ..mcmc.potentials import make_potential
from ..mcmc.pyro_reference import sample_posterior_pyro
from ..poutine import PerDatapointProgram, as_program
from ..validation import check_bool, check_choice, check_data, check_positive_int, check_seed
from .result import MIN_DRAWS_FOR_PARETO_K, logmeanexp_with_stderr, pareto_k, warn_unreliable

__all__ = [
    "fit_gaussian",
    "fit_kde",
    "appendix_d_from_samples",
    "appendix_d",
    "log_joint_at",
    "DENSITIES",
    "SAMPLERS",
    "SPLITS",
    "DEFAULT_BANDWIDTHS",
]

DENSITIES = ("gaussian", "kde")
SAMPLERS = ("hmc", "pyro_nuts", "pyro_hmc")
STDERRS = ("ess", "iid")
SPLITS = ("within", "across")
#: Bandwidth grid of the KDE, in units of the fit samples' standard deviations.
DEFAULT_BANDWIDTHS = tuple(float(h) for h in np.geomspace(0.05, 2.0, 20))
#: Prior proposals per chain for the starting point when there is no guide.
DEFAULT_PRIOR_INIT_PARTICLES = 1000


def _covariance(samples: torch.Tensor) -> torch.Tensor:
    """``(N, B, D)`` -> ``(B, D, D)`` sample covariances (N - 1 degrees of freedom)."""
    centred = samples - samples.mean(0)
    cov = torch.einsum("nbi,nbj->bij", centred, centred) / (samples.shape[0] - 1)
    # a relative jitter keeps the Cholesky factor defined for (near-)degenerate samples
    scale = cov.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(torch.finfo(cov.dtype).tiny)
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    return cov + 1e-6 * scale[:, None, None] * eye


def _check_fit_samples(samples: torch.Tensor, minimum: int, what: str) -> None:
    if samples.dim() != 3:
        raise ValueError(
            f"samples must have shape (num_draws, batch, D), got {tuple(samples.shape)}"
        )
    if samples.shape[0] < minimum:
        raise ValueError(
            f"{what} needs at least {minimum} fit draws per datapoint for D = "
            f"{samples.shape[-1]} latent dimensions, got {samples.shape[0]}; draw more "
            f"posterior samples or raise fit_fraction"
        )


def fit_gaussian(samples: torch.Tensor) -> tdist.MultivariateNormal:
    """Per-datapoint Gaussian ``N(mean, cov)`` fitted to ``samples`` ``(N, B, D)``.

    Returns a distribution with batch shape ``(B,)`` and event shape ``(D,)``. Needs
    ``N > D``.
    """
    _check_fit_samples(samples, samples.shape[-1] + 1, "a Gaussian density estimate")
    return tdist.MultivariateNormal(samples.mean(0), covariance_matrix=_covariance(samples))


def _kde(centres: torch.Tensor, scale_tril: torch.Tensor, bandwidth: torch.Tensor):
    """Equal-weight Gaussian mixture with kernels ``N(c, h^2 Sigma)`` per datapoint.

    ``centres`` ``(N, B, D)``, ``scale_tril`` ``(B, D, D)``, ``bandwidth`` ``(B,)`` or
    ``(H, B)`` -> batch shape ``(B,)`` or ``(H, B)``.
    """
    n, b, _ = centres.shape
    loc = centres.transpose(0, 1)  # (B, N, D)
    tril = scale_tril.unsqueeze(-3) * bandwidth[..., None, None, None]  # (..., B, 1, D, D)
    loc = loc.expand(tril.shape[:-4] + loc.shape)
    mix = tdist.Categorical(logits=loc.new_zeros(loc.shape[:-1]))
    return tdist.MixtureSameFamily(mix, tdist.MultivariateNormal(loc, scale_tril=tril))


def fit_kde(
    samples: torch.Tensor,
    bandwidths: tuple[float, ...] | torch.Tensor = DEFAULT_BANDWIDTHS,
    holdout_fraction: float = 0.5,
) -> tuple[tdist.MixtureSameFamily, torch.Tensor]:
    r"""Per-datapoint Gaussian KDE with a bandwidth chosen on held-out draws.

    Kernels are ``N(z_n, h^2 Sigma)`` with ``Sigma`` the fit draws' covariance (so ``h`` is
    in standard deviations along every direction). The fit draws are split in time: the
    first ``1 - holdout_fraction`` are kernel centres, and each datapoint's ``h`` maximises
    the mean log-density of the held-out rest over ``bandwidths``; the returned KDE then uses
    all fit draws as centres with that ``h``.

    Parameters
    ----------
    samples : torch.Tensor
        ``(N, B, D)`` fit draws.
    bandwidths : sequence of float
        Candidate ``h`` (relative to the draws' standard deviation).
    holdout_fraction : float
        Share of the fit draws held out for choosing ``h``.

    Returns
    -------
    (kde, bandwidth)
        The mixture (batch shape ``(B,)``) and the chosen ``h`` per datapoint, ``(B,)``.
    """
    _check_fit_samples(samples, max(4, samples.shape[-1] + 2), "a kernel density estimate")
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    grid = torch.as_tensor(bandwidths, dtype=samples.dtype, device=samples.device).flatten()
    if grid.numel() == 0 or not bool((grid > 0).all()):
        raise ValueError(f"bandwidths must be positive numbers, got {bandwidths!r}")
    n = samples.shape[0]
    n_hold = min(max(1, round(n * holdout_fraction)), n - 2)
    centres, held_out = samples[: n - n_hold], samples[n - n_hold :]
    tril = torch.linalg.cholesky(_covariance(samples))
    candidates = _kde(centres, tril, grid[:, None].expand(-1, samples.shape[1]))  # (H, B)
    score = candidates.log_prob(held_out.unsqueeze(1)).mean(0)  # (H, B)
    best = grid[score.argmax(0)]
    return _kde(samples, tril, best), best


def _ratio_ess(log_r: torch.Tensor) -> torch.Tensor:
    """ArviZ's ESS for the mean of the ratios (:func:`~pyro_aevb.mcmc.diagnostics.ess_mean`),
    ``(C, S, B)`` -> ``(B,)``, capped at ``C * S``; 1 where it is undefined."""
    c, s, b = log_r.shape
    if s < 4:
        return log_r.new_full((b,), float(c * s))
    log_mean = torch.logsumexp(log_r.reshape(c * s, b), 0) - math.log(c * s)
    ess = ess_mean(torch.exp(log_r.double() - log_mean.double()))
    ess = torch.nan_to_num(ess, nan=1.0).to(dtype=log_r.dtype, device=log_r.device)
    return ess.clamp(min=1.0, max=float(c * s))


def _check_split(split: str, num_chains: int, fit_fraction: float | None) -> None:
    check_choice(split, "split", SPLITS)
    if split != "across":
        return
    if num_chains < 2:
        raise ValueError(
            f"split='across' fits each chain's q to the other chains' draws: it needs "
            f"num_chains >= 2, got num_chains={num_chains}"
        )
    if fit_fraction is not None:
        raise ValueError(
            f"fit_fraction={fit_fraction} applies to split='within' only: with split='across' "
            f"each chain is evaluated whole under a q fitted to the others"
        )


def appendix_d_from_samples(
    samples: torch.Tensor,
    log_joint: torch.Tensor,
    *,
    density: str = "gaussian",
    fit_fraction: float | None = None,
    stderr: str = "ess",
    bandwidths: tuple[float, ...] = DEFAULT_BANDWIDTHS,
    split: str = "within",
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The Appendix-D estimate from posterior draws and their log-joint values.

    Parameters
    ----------
    samples : torch.Tensor
        ``(C, S, B, D)`` unconstrained posterior draws: ``C`` chains of ``S`` draws for each of
        ``B`` datapoints.
    log_joint : torch.Tensor
        ``(C, S, B)`` ``log p(x_i, u)`` at the draws (in the same coordinates).
    density : {"gaussian", "kde"}
        The density estimator ``q``.
    fit_fraction : float, optional
        ``split="within"``: the first ``fit_fraction`` of each chain's draws fit ``q``; the
        rest estimate (default 0.5, as the paper's code).
    stderr : {"ess", "iid"}
        Divide by ArviZ's ESS of the ratios, or by the number of draws.
    bandwidths : sequence of float
        KDE bandwidth grid (see :func:`fit_kde`).
    split : {"within", "across"}
        Which draws fit ``q`` and which estimate. ``"within"`` (the paper's): the first part
        of every chain fits one ``q``, the rest of every chain estimates. ``"across"`` (needs
        ``C >= 2``; cross-fitting): chain ``k``'s draws, all of them, are evaluated under a
        ``q_k`` fitted to the draws of the other chains, so that no evaluated draw is
        correlated with the draws its ``q`` was fitted to; every draw serves both ends.

    Returns
    -------
    (estimate, stderr, diagnostics)
        ``(B,)``, ``(B,)``, and a dict with ``"ess"`` (of the ratios), ``"pareto_k"`` (their
        PSIS tail index: above 0.7 the ratios are too heavy-tailed for the error to be
        trusted, usually because ``q`` is wider than the posterior) and, for the KDE,
        ``"bandwidth"`` (``(B,)``; ``(B, C)``, one per chain's ``q``, with ``"across"``).
    """
    check_choice(density, "density", DENSITIES)
    check_choice(stderr, "stderr", STDERRS)
    check_choice(split, "split", SPLITS)
    if samples.dim() != 4:
        raise ValueError(
            f"samples must have shape (chains, draws, batch, D), got {tuple(samples.shape)}"
        )
    c, s, b, d = samples.shape
    if log_joint.shape != (c, s, b):
        raise ValueError(
            f"log_joint must have shape (chains, draws, batch) = {(c, s, b)}, got "
            f"{tuple(log_joint.shape)}"
        )
    diagnostics = {}

    def fitted(draws):  # (N, B, D) -> q
        if density == "gaussian":
            return fit_gaussian(draws)
        q, bandwidth = fit_kde(draws, bandwidths)
        diagnostics.setdefault("bandwidth", []).append(bandwidth)
        return q

    if split == "within":
        fit_fraction = 0.5 if fit_fraction is None else fit_fraction
        if not 0.0 < fit_fraction < 1.0:
            raise ValueError(f"fit_fraction must be in (0, 1), got {fit_fraction}")
        n_fit = int(round(s * fit_fraction))
        if not 0 < n_fit < s:
            raise ValueError(
                f"fit_fraction={fit_fraction} of {s} draws per chain leaves no draws to fit or "
                f"to estimate with; use more draws"
            )
        q = fitted(samples[:, :n_fit].reshape(c * n_fit, b, d))
        log_r = q.log_prob(samples[:, n_fit:]) - log_joint[:, n_fit:]  # (C, S_e, B)
    else:
        _check_split(split, c, fit_fraction)
        log_r = torch.stack(
            [
                fitted(torch.cat([samples[:k], samples[k + 1 :]]).reshape(-1, b, d)).log_prob(
                    samples[k]
                )
                - log_joint[k]
                for k in range(c)
            ]
        )  # (C, S, B)
    if "bandwidth" in diagnostics:
        bandwidth = torch.stack(diagnostics["bandwidth"])
        diagnostics["bandwidth"] = bandwidth[0] if split == "within" else bandwidth.T  # rows first
    n_eval = log_r.shape[0] * log_r.shape[1]
    ess = _ratio_ess(log_r) if stderr == "ess" else None
    log_mean, se = logmeanexp_with_stderr(log_r.reshape(-1, b), dim=0, ess=ess)
    diagnostics["ess"] = ess if ess is not None else log_r.new_full((b,), float(n_eval))
    diagnostics["pareto_k"] = pareto_k(log_r.reshape(-1, b), dim=0)
    diagnostics["num_estimate_draws"] = n_eval
    return -log_mean, se, diagnostics


def log_joint_at(
    model: Callable | PerDatapointProgram,
    x: torch.Tensor,
    samples: torch.Tensor,
    plate_name: str = "data",
    global_values: dict | None = None,
) -> torch.Tensor:
    """``log p(x_i, u)`` at unconstrained draws ``(N, B, D)``; returns ``(N, B)``.

    Evaluated in blocks of draws to keep the replicated ``x`` small.
    """
    program = as_program(model, None, x, plate_name=plate_name, global_values=global_values)
    n, b, d = samples.shape
    block = max(1, min(n, (2**22) // max(1, x.numel())))
    out = []
    with torch.no_grad():
        for start in range(0, n, block):
            chunk = samples[start : start + block]
            pot = PerDatapointPotential(program, x, num_chains=chunk.shape[0])
            u = chunk.reshape(-1, d).to(device=pot.x.device, dtype=pot.dtype)
            out.append(pot.log_joint(u).reshape(-1, b))
    return torch.cat(out)


def default_init_particles(guide: Callable | None) -> int:
    """Proposals per chain for the start: 1 from a guide (a plain encoder draw, as in the
    paper), :data:`DEFAULT_PRIOR_INIT_PARTICLES` from the prior."""
    return 1 if guide is not None else DEFAULT_PRIOR_INIT_PARTICLES


def appendix_d(
    model: Callable,
    guide: Callable | None,
    x: torch.Tensor,
    *,
    num_samples: int = 50,
    num_chains: int = 1,
    num_warmup: int = 200,
    num_steps: int = 4,
    target_accept: float = 0.9,
    density: str = "gaussian",
    fit_fraction: float | None = None,
    split: str = "within",
    sampler: str = "hmc",
    stderr: str = "ess",
    adapt_mass: bool = True,
    step_size_jitter: float = 0.5,
    bandwidths: tuple[float, ...] = DEFAULT_BANDWIDTHS,
    init_particles: int | None = None,
    plate_name: str = "data",
    generator: torch.Generator | None = None,
    seed: int = 0,
    global_values: dict | None = None,
    device=None,
    dtype=None,
    fast: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Sample each datapoint's posterior, then apply :func:`appendix_d_from_samples`.

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``fn(x)``. Chains start at an importance-resampled draw
        (:func:`~pyro_aevb.mcmc.initialization.importance_resampled_init`) from the guide,
        or from the prior without one.
    x : torch.Tensor
        ``(B, data_dim)``.
    num_samples : int
        Posterior draws per chain kept after warm-up (the paper: 50 per datapoint), split
        into fit and estimate parts by ``fit_fraction``.
    num_chains : int
        Chains per datapoint (R-hat needs 2 or more).
    num_warmup : int
        Warm-up (adaptation) iterations per chain.
    num_steps : int
        Leapfrog steps per HMC transition (the paper: 4; batched HMC and ``"pyro_hmc"``).
    target_accept : float
        Step-size adaptation target (the paper: 0.9).
    density, fit_fraction, split, stderr, bandwidths
        See :func:`appendix_d_from_samples` (``split="across"`` needs ``num_chains >= 2``).
    sampler : {"hmc", "pyro_nuts", "pyro_hmc"}
        Batched HMC (fast) or Pyro's MCMC per datapoint (reference).
    adapt_mass, step_size_jitter
        Batched HMC options (:func:`pyro_aevb.mcmc.sample`).
    init_particles : int, optional
        K, proposals per chain for the starting point (default 1 with a guide, a plain draw
        from the encoder as in the paper; 1000 from the prior, whose single draws start
        chains in minor modes of sharp posteriors, see :mod:`~pyro_aevb.mcmc.initialization`).
    plate_name : str
        Name of the data plate.
    generator : torch.Generator, optional
        Batched HMC randomness.
    seed : int
        Seed of the Pyro MCMC runs.
    device, dtype : optional
        Where and in which precision to run: ``x`` and the modules owning the programs (a
        ``VAE``'s ``model``/``guide``) are moved there in place (see
        :func:`pyro_aevb.device.place`); default: where the modules are.
    fast : {"auto", "on", "off"}
        The batched sampler's potential (:func:`~pyro_aevb.mcmc.potentials.make_potential`):
        hand-derived for the paper's VAE or recorded once, or traced at every gradient
        (``"off"``). The potentials agree to float rounding; with the same seed the chains
        agree to rounding while short and, as HMC amplifies a rounding difference along a
        trajectory, within their Monte Carlo error over long runs.

    Returns
    -------
    (estimate, stderr, diagnostics)
        ``(B,)``, ``(B,)``, and a dict of sampler diagnostics (acceptance, step sizes, ESS,
        R-hat, divergences; ``"inference_data"`` for the Pyro samplers) plus the estimator's.
    """
    x, device = place(check_data(x, "x"), (model, guide), device=device, dtype=dtype)
    check_generator(generator, device)
    check_choice(sampler, "sampler", SAMPLERS)
    check_choice(density, "density", DENSITIES)
    num_samples = check_positive_int(num_samples, "num_samples", minimum=2)
    num_chains = check_positive_int(num_chains, "num_chains")
    # checked here for every sampler (the Pyro samplers would pass them on unchecked)
    check_positive_int(num_warmup, "num_warmup", minimum=0)
    check_positive_int(num_steps, "num_steps")
    check_target_accept(target_accept)
    check_bool(adapt_mass, "adapt_mass")
    if not (isinstance(step_size_jitter, int | float) and 0.0 <= step_size_jitter < 1.0):
        raise ValueError(f"step_size_jitter must be in [0, 1), got {step_size_jitter!r}")
    _check_split(split, num_chains, fit_fraction)  # before any sampling
    seed = check_seed(seed)
    program = as_program(model, guide, x, plate_name=plate_name, global_values=global_values)
    program.check_no_masked_latents(
        "the density Appendix D fits to the draws", "use method 'ais' or 'iwae'"
    )
    guide = program.guide
    if init_particles is None:
        init_particles = default_init_particles(guide)
    init_particles = check_positive_int(init_particles, "init_particles")
    pot = make_potential(program, x, num_chains=num_chains, fast=fast)
    with torch.no_grad():
        if init_particles > 1:
            init = importance_resampled_init(pot, init_particles, generator=generator)
        elif guide is not None:
            init = pot.sample_guide()[0]
        else:
            init = pot.sample_prior()
    if sampler == "hmc":
        res = hmc_sample(
            pot,
            init,
            num_samples=num_samples,
            num_warmup=num_warmup,
            num_steps=num_steps,
            target_accept=target_accept,
            adapt_mass=adapt_mass,
            num_chains=num_chains,
            generator=generator,
            step_size_jitter=step_size_jitter,
        )
        samples = res.by_chain(res.samples)  # (C, S, B, D)
        log_joint = -res.by_chain(res.potential)  # (C, S, B)
        diagnostics = res.diagnostics(rhat=num_chains > 1)
        diagnostics["sampler_seconds"] = res.seconds
        diagnostics["potential"] = pot.path
    else:
        res = sample_posterior_pyro(
            program,
            x,
            kernel=sampler.removeprefix("pyro_"),
            num_samples=num_samples,
            num_warmup=num_warmup,
            num_chains=num_chains,
            target_accept=target_accept,
            num_steps=num_steps,
            adapt_mass=adapt_mass,
            initial_positions=init.reshape(num_chains, x.shape[0], -1),
            seed=seed,
        )
        samples = res.samples
        c, s, b, d = samples.shape
        log_joint = log_joint_at(program, x, samples.reshape(c * s, b, d))
        log_joint = log_joint.reshape(c, s, b)
        diagnostics = res.diagnostics()
        diagnostics["inference_data"] = res.inference_data
        diagnostics["sampler_seconds"] = res.seconds
    estimate, se, est_diag = appendix_d_from_samples(
        samples,
        log_joint,
        density=density,
        fit_fraction=fit_fraction,
        stderr=stderr,
        bandwidths=bandwidths,
        split=split,
    )
    diagnostics["ratio_ess"] = est_diag.pop("ess")
    diagnostics.update(est_diag)
    _warn_on_diagnostics(estimate, diagnostics)
    return estimate, se, diagnostics


def _warn_on_diagnostics(estimate: torch.Tensor, diagnostics: dict) -> None:
    """Log which datapoints' estimates the sampler diagnostics call into question."""
    checks = [
        ("non-finite estimates", ~torch.isfinite(estimate)),
        ("chains that hardly move (acceptance < 0.1)", diagnostics["accept_rate"] < 0.1),
        ("R-hat > 1.1", diagnostics.get("r_hat", torch.zeros(0)) > 1.1),
    ]
    # k-hat from fewer than ~100 ratios rests on a handful of tail draws: too noisy to warn on
    if diagnostics.get("num_estimate_draws", 0) >= MIN_DRAWS_FOR_PARETO_K:
        checks.append(("ratio Pareto k > 0.7", diagnostics["pareto_k"] > 0.7))
    warn_unreliable(
        "appendix_d",
        estimate,
        checks,
        "their estimates and standard errors are not to be trusted; more warm-up or draws may help",
    )
