r"""Importance-sampled log-likelihood with the guide as proposal (IWAE bound), and the ELBO.

For each datapoint, with ``K`` proposals ``z_k ~ q(z | x_i)`` from the guide::

    log w_{ik} = log p(x_i, z_k) - log q(z_k | x_i)
    log p(x_i) ~= log (1/K) sum_k w_{ik}       = logsumexp_k log w_{ik} - log K

The estimate is a stochastic lower bound: its expectation is the IWAE bound ``L_K``, which
increases with ``K`` (Burda et al. 2016) toward ``log p(x_i)``; ``K = 1`` is estimator A of
the ELBO (eq. 2). Its Monte Carlo standard error is the delta method on the mean weight,
``std_k(w_k / mean w) / sqrt(K)``; it is zero when the guide is the exact posterior (every
``w_k = p(x_i)``).

**Vectorisation.** A chunk of ``k`` particles is drawn by running guide and model once on
``k`` stacked copies of the rows (``(k B, *event_shape)``, copy-major), so the programs see an
ordinary bigger batch: any user code that works on a batch (``torch.cat``, ``reshape(-1, k)``,
convolutions) works, unlike an extra outer plate dimension. Chunks bound the memory. If a
program still fails on the stacked rows, the estimate falls back to one trace per particle,
with a warning. Global latents are conditioned on a point estimate and the data plate must
cover the rows given (:class:`~pyro_aevb.poutine.PerDatapointProgram`).

:func:`elbo_with_stderr` gives the per-datapoint ELBO (estimator A or B) with its standard
error over ``L`` draws, reusing :func:`~pyro_aevb.infer.per_datapoint.elbo_per_datapoint`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

from ..device import place
from ..infer.elbo import ESTIMATORS
from ..infer.per_datapoint import elbo_particle_per_datapoint, program_elbo, stacked_elbo
from ..poutine import PerDatapointProgram, as_program, replicate_rows, trace_guide_and_model
from ..validation import check_bool, check_choice, check_data, check_positive_int
from .result import (
    MIN_DRAWS_FOR_PARETO_K,
    fewer_than_two_effective,
    importance_ess,
    logmeanexp_with_stderr,
    pareto_k,
    warn_non_finite,
    warn_unreliable,
)

__all__ = ["iwae_log_weights", "iwae", "elbo_with_stderr", "default_chunk_size"]


def default_chunk_size(x: torch.Tensor, num_particles: int, budget: int = 2**22) -> int:
    """Particles per chunk so that one chunk replicates ``x`` into at most ``budget`` numbers."""
    return max(1, min(num_particles, budget // max(1, x.numel())))


def _log_weights_chunk(program: PerDatapointProgram, x: torch.Tensor, k: int) -> torch.Tensor:
    """``(k, B)`` log weights from one run of guide and model on ``k`` copies of the rows."""
    x_rep = replicate_rows(x, k)
    guide_trace, model_trace = trace_guide_and_model(program.model, program.guide, x_rep)
    log_w = elbo_particle_per_datapoint(model_trace, guide_trace, "A", program.plate_name)
    return log_w.expand(x_rep.shape[0]).reshape(k, x.shape[0])


def iwae_log_weights(
    model: Callable | PerDatapointProgram,
    guide: Callable | None,
    x: torch.Tensor,
    num_particles: int,
    *,
    chunk_size: int | None = None,
    plate_name: str = "data",
    vectorize: bool = True,
    global_values: dict | None = None,
    device=None,
    dtype=None,
) -> torch.Tensor:
    """Per-datapoint log importance weights ``log p(x_i, z_k) - log q(z_k | x_i)``.

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``fn(x)``; latents inside ``pyro.plate(plate_name, len(x))``.
        ``model`` may also be a prepared :class:`~pyro_aevb.poutine.PerDatapointProgram`.
    x : torch.Tensor
        ``(B, *event_shape)``.
    num_particles : int
        K >= 1.
    chunk_size : int, optional
        Particles per vectorised chunk (default: :func:`default_chunk_size`).
    plate_name : str
        Name of the data plate.
    vectorize : bool
        Draw a chunk's particles in one run on stacked rows (fast), or one trace per particle.
    global_values : dict, optional
        Values to condition global latents on (default: the guide's point estimate).
    device, dtype : optional
        Where and in which precision to run: ``x`` and the modules owning the programs (a
        ``VAE``'s ``model``/``guide``) are moved there in place (see
        :func:`pyro_aevb.device.place`); default: where the modules are.

    Returns
    -------
    torch.Tensor
        ``(K, B)``, without gradient. Randomness comes from torch's global RNG (Pyro's).
    """
    x, _ = place(check_data(x, "x"), (model, guide), device=device, dtype=dtype)
    num_particles = check_positive_int(num_particles, "num_particles")
    vectorize = check_bool(vectorize, "vectorize")
    program = as_program(model, guide, x, plate_name=plate_name, global_values=global_values)
    if program.guide is None:
        raise ValueError("importance weights need a guide q(z | x) as proposal; got None")
    if chunk_size is None:
        chunk_size = default_chunk_size(x, num_particles) if vectorize else 1
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    chunks = []
    done = 0
    with torch.no_grad():
        while vectorize and done < num_particles:
            k = min(chunk_size, num_particles - done)
            try:
                chunks.append(_log_weights_chunk(program, x, k))
            except (RuntimeError, ValueError, IndexError) as err:
                if k == 1:
                    raise
                warnings.warn(
                    f"IWAE: the model or guide failed on {k} stacked copies of the rows "
                    f"({type(err).__name__}: {err}); falling back to one trace per particle "
                    f"(slower). Pass vectorize=False to skip the attempt.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                vectorize = False
                break
            done += k
        while done < num_particles:
            chunks.append(program_elbo(program, x, "A", 1).unsqueeze(0))
            done += 1
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
    global_values: dict | None = None,
    device=None,
    dtype=None,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """IWAE estimate of ``log p(x_i)`` with ``K = num_particles`` guide proposals.

    The options are those of :func:`iwae_log_weights` (``device``/``dtype`` included).

    Returns
    -------
    (estimate, stderr, diagnostics)
        ``(B,)``, ``(B,)`` (``nan`` for K = 1), and ``{"ess": (B,), "pareto_k": (B,)}``: the
        importance-sampling effective sample size ``(sum w)^2 / sum w^2`` out of K, and the
        PSIS tail index of the weights (above 0.7 the standard error is not to be trusted:
        the weights are too heavy-tailed, and the estimate is likely too low). Datapoints
        with fewer than 2 effective weights, or (K >= 100) a ``k`` above 0.7, are named in a
        logged warning.
    """
    log_w = iwae_log_weights(
        model,
        guide,
        x,
        num_particles,
        chunk_size=chunk_size,
        plate_name=plate_name,
        vectorize=vectorize,
        global_values=global_values,
        device=device,
        dtype=dtype,
    )
    estimate, stderr = logmeanexp_with_stderr(log_w, dim=0)
    ess, k_hat = importance_ess(log_w), pareto_k(log_w, dim=0)  # k-hat: seconds for 1000 rows
    warn_non_finite("iwae", estimate)
    if num_particles > 1:
        checks = [("fewer than 2 effective weights", fewer_than_two_effective(ess))]
        if num_particles >= MIN_DRAWS_FOR_PARETO_K:  # fewer: k-hat itself is too noisy
            checks.append(("weight Pareto k > 0.7", k_hat > 0.7))
        warn_unreliable(
            "iwae",
            estimate,
            checks,
            "their standard errors are not to be trusted, and their estimates (stochastic "
            "lower bounds) may sit well below log p(x): the guide is a poor proposal there; "
            "more particles, a better guide, or AIS",
        )
    return estimate, stderr, {"ess": ess, "pareto_k": k_hat}


def elbo_with_stderr(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    estimator: str = "B",
    num_particles: int = 100,
    plate_name: str = "data",
    global_values: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-datapoint ELBO ``L_i`` averaged over ``L = num_particles`` draws, and its s.e.

    ``estimator="B"`` (analytic KL, eq. 7) or ``"A"`` (eq. 6). The standard error is
    ``std_l(L_i^(l)) / sqrt(L)`` (``nan`` for L = 1). Returns ``(B,)``, ``(B,)``.
    """
    check_choice(estimator, "estimator", ESTIMATORS)
    num_particles = check_positive_int(num_particles, "num_particles")
    x = check_data(x, "x")
    program = as_program(model, guide, x, plate_name=plate_name, global_values=global_values)
    chunk = default_chunk_size(x, num_particles)
    draws = []
    with torch.no_grad():
        done = 0
        while done < num_particles:
            k = min(chunk, num_particles - done)
            try:  # particles on stacked copies of the rows; one trace each if that fails
                draws.append(stacked_elbo(program, x, estimator, k, reduce=False))
            except (RuntimeError, ValueError, IndexError):
                draws.append(
                    torch.stack([program_elbo(program, x, estimator, 1) for _ in range(k)])
                )
            done += k
    draws = torch.cat(draws)
    mean = draws.mean(0)
    if num_particles < 2:
        return mean, torch.full_like(mean, math.nan)
    return mean, draws.std(0, unbiased=True) / math.sqrt(num_particles)
