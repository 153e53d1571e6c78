r"""Importance-sampled log-likelihood with the guide as proposal (IWAE bound), and the ELBO.

For each datapoint, with ``K`` proposals ``z_k ~ q(z | x_i)`` from the guide::

    log w_{ik} = log p(x_i, z_k) - log q(z_k | x_i)
    log p(x_i) ~= log (1/K) sum_k w_{ik}       = logsumexp_k log w_{ik} - log K

The estimate is a stochastic lower bound: its expectation is the IWAE bound ``L_K``, which
increases with ``K`` (Burda et al. 2016) toward ``log p(x_i)``; ``K = 1`` is estimator A of
the ELBO (eq. 2). Its Monte Carlo standard error is the delta method on the mean weight,
``std_k(w_k / mean w) / sqrt(K)``; it is zero when the guide is the exact posterior (every
``w_k = p(x_i)``).

**Vectorisation.** Particles are drawn by running guide and model under an extra outer
``pyro.plate`` (dimension ``-(max_plate_nesting + 1)``), as Pyro's ``vectorize_particles``
does, in chunks of ``chunk_size`` particles to bound memory; every site's log-density is
then reduced to ``(particles, batch)`` with :func:`~pyro_aevb.infer.per_datapoint.sum_to_plate`
applied per particle. Sites outside the data plate that are not latent (the VAE's weight
prior) are left out; a latent outside it raises. ``vectorize=False`` runs one guide trace per
particle instead, for models that do not broadcast over an extra batch dimension.

:func:`elbo_with_stderr` gives the per-datapoint ELBO (estimator A or B) with its standard
error over ``L`` draws, reusing :func:`~pyro_aevb.infer.per_datapoint.elbo_per_datapoint`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

from ..infer.elbo import ESTIMATORS
from ..infer.per_datapoint import elbo_per_datapoint, plate_frame, sum_to_plate
from ..validation import check_choice, check_data, check_positive_int
from .result import logmeanexp_with_stderr, pareto_k

__all__ = ["iwae_log_weights", "iwae", "elbo_with_stderr", "default_chunk_size"]

PARTICLE_PLATE = "_iwae_particles"


def default_chunk_size(x: torch.Tensor, num_particles: int, budget: int = 2**22) -> int:
    """Particles per chunk so that one chunk replicates ``x`` into at most ``budget`` numbers."""
    return max(1, min(num_particles, budget // max(1, x.numel())))


def _max_plate_nesting(model: Callable, guide: Callable, x: torch.Tensor) -> int:
    # a throw-away trace: fork the RNG so that it does not shift the particles' draws
    with poutine.block(), torch.no_grad(), torch.random.fork_rng(devices=[]):
        guide_trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    nesting = 0
    for trace in (guide_trace, model_trace):
        for site in trace.nodes.values():
            if site["type"] != "sample":
                continue
            for frame in site["cond_indep_stack"]:
                if frame.vectorized and frame.dim is not None:
                    nesting = max(nesting, -frame.dim)
    return nesting


def _per_particle_plate_sum(
    value: torch.Tensor, site: dict, plate_name: str, particle_dim: int, k: int, b: int
) -> torch.Tensor | None:
    """Reduce a site's log-density (batch shape incl. the particle dim) to ``(k, b)``."""
    if plate_frame(site, plate_name) is None:
        return None
    if site.get("mask") is not None:
        value = torch.where(site["mask"], value, value.new_zeros(()))
    n = -particle_dim
    if value.dim() < n:
        value = value.reshape((1,) * (n - value.dim()) + tuple(value.shape))
    value = value.movedim(value.dim() + particle_dim, 0)
    unmasked = {**site, "mask": None}
    term = torch.vmap(lambda v: sum_to_plate(v, unmasked, plate_name))(value)
    return term.expand(k, b)


def _log_weights_chunk(model, guide, x, k, plate_name, particle_dim) -> torch.Tensor:
    b = x.shape[0]
    with poutine.block():
        with pyro.plate(PARTICLE_PLATE, k, dim=particle_dim):
            guide_trace = poutine.trace(guide).get_trace(x)
        with pyro.plate(PARTICLE_PLATE, k, dim=particle_dim):
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    log_w = x.new_zeros(k, b)
    found_plate = False
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        lp = site["fn"].log_prob(site["value"])
        term = _per_particle_plate_sum(lp, site, plate_name, particle_dim, k, b)
        if not site["is_observed"]:
            if term is None:
                raise ValueError(
                    f"latent site '{name}' is outside the plate '{plate_name}': a global "
                    f"latent makes log p(x_i) ill-defined per datapoint; put per-datapoint "
                    f"latents inside pyro.plate('{plate_name}', ...) or pass the right plate_name"
                )
            guide_site = guide_trace.nodes[name]
            q_lp = guide_site["fn"].log_prob(guide_site["value"])
            term = term - _per_particle_plate_sum(q_lp, guide_site, plate_name, particle_dim, k, b)
        if term is None:
            continue  # a non-latent site outside the data plate (e.g. a weight prior)
        found_plate = True
        log_w = log_w + term
    for name, site in guide_trace.nodes.items():
        if (
            site["type"] == "sample"
            and not site_is_subsample(site)
            and name not in model_trace.nodes
        ):
            raise ValueError(
                f"guide site '{name}' is not in the model (an auxiliary variable); "
                f"importance weights p(x, z) / q(z | x) need every guide site in the model"
            )
    if not found_plate:
        raise ValueError(
            f"no site of the model is inside a plate named '{plate_name}'; pass plate_name="
            f"the name of the data plate"
        )
    return log_w


def iwae_log_weights(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_particles: int,
    *,
    chunk_size: int | None = None,
    plate_name: str = "data",
    vectorize: bool = True,
) -> torch.Tensor:
    """Per-datapoint log importance weights ``log p(x_i, z_k) - log q(z_k | x_i)``.

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``fn(x)``; latents inside ``pyro.plate(plate_name)``.
    x : torch.Tensor
        ``(B, data_dim)``.
    num_particles : int
        K >= 1.
    chunk_size : int, optional
        Particles per vectorised chunk (default: :func:`default_chunk_size`).
    plate_name : str
        Name of the data plate.
    vectorize : bool
        Draw a chunk's particles under one outer plate (fast) or one trace per particle.

    Returns
    -------
    torch.Tensor
        ``(K, B)``, without gradient. Randomness comes from torch's global RNG (Pyro's).
    """
    x = check_data(x, "x")
    num_particles = check_positive_int(num_particles, "num_particles")
    if chunk_size is None:
        chunk_size = default_chunk_size(x, num_particles) if vectorize else 1
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    chunks = []
    with torch.no_grad():
        if vectorize:
            particle_dim = -(_max_plate_nesting(model, guide, x) + 1)
            done = 0
            while done < num_particles:
                k = min(chunk_size, num_particles - done)
                chunks.append(_log_weights_chunk(model, guide, x, k, plate_name, particle_dim))
                done += k
        else:
            for _ in range(num_particles):
                chunks.append(
                    elbo_per_datapoint(
                        model, guide, x, estimator="A", plate_name=plate_name
                    ).unsqueeze(0)
                )
    return torch.cat(chunks)


def iwae(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_particles: int = 5000,
    *,
    chunk_size: int | None = None,
    plate_name: str = "data",
    vectorize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """IWAE estimate of ``log p(x_i)`` with ``K = num_particles`` guide proposals.

    Returns
    -------
    (estimate, stderr, diagnostics)
        ``(B,)``, ``(B,)`` (``nan`` for K = 1), and ``{"ess": (B,), "pareto_k": (B,)}``: the
        importance-sampling effective sample size ``(sum w)^2 / sum w^2`` out of K, and the
        PSIS tail index of the weights (above 0.7 the standard error is not to be trusted:
        the weights are too heavy-tailed, and the estimate is likely too low).
    """
    log_w = iwae_log_weights(
        model,
        guide,
        x,
        num_particles,
        chunk_size=chunk_size,
        plate_name=plate_name,
        vectorize=vectorize,
    )
    estimate, stderr = logmeanexp_with_stderr(log_w, dim=0)
    ess = torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))
    return estimate, stderr, {"ess": ess, "pareto_k": pareto_k(log_w, dim=0)}


def elbo_with_stderr(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    estimator: str = "B",
    num_particles: int = 100,
    plate_name: str = "data",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-datapoint ELBO ``L_i`` averaged over ``L = num_particles`` draws, and its s.e.

    ``estimator="B"`` (analytic KL, eq. 7) or ``"A"`` (eq. 6). The standard error is
    ``std_l(L_i^(l)) / sqrt(L)`` (``nan`` for L = 1). Returns ``(B,)``, ``(B,)``.
    """
    check_choice(estimator, "estimator", ESTIMATORS)
    num_particles = check_positive_int(num_particles, "num_particles")
    x = check_data(x, "x")
    with torch.no_grad():
        draws = torch.stack(
            [
                elbo_per_datapoint(model, guide, x, estimator=estimator, plate_name=plate_name)
                for _ in range(num_particles)
            ]
        )
    mean = draws.mean(0)
    if num_particles < 2:
        return mean, torch.full_like(mean, math.nan)
    return mean, draws.std(0, unbiased=True) / math.sqrt(num_particles)
