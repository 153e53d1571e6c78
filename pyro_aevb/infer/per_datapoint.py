r"""The per-datapoint bound of a Pyro model with local latents in a data plate.

Pyro's ELBOs return one number for a whole batch. Here every term is reduced to the data plate
instead, giving tensors of shape ``(batch,)``::

    L_i = E_q[ log p(x_i, z_i) - log q(z_i | x_i) ]                estimator A
    L_i = -KL(q(z_i | x_i) || p(z_i)) + E_q[ log p(x_i | z_i) ]    estimator B

Terms are **unscaled**: the ``N / M`` minibatch scale of a subsampled plate is not applied,
so ``L_i`` is the bound of datapoint ``i`` alone. Sites outside the data plate that are not
latent (such as the VAE's ``"weight_prior"`` factor) are not part of any datapoint's bound and
are left out. Global latents (outside the plate) are conditioned on a point estimate, so
``L_i`` is the bound of ``log p(x_i | g)`` (see :class:`~pyro_aevb.poutine.PerDatapointProgram`,
which also refuses a data plate that would give results for other rows than those given).
"""

from __future__ import annotations

import torch

from ..poutine import (
    UNCONSTRAINED_OF,
    PerDatapointProgram,
    guide_auxiliary_sites,
    replicate_rows,
    sample_sites,
    sum_to_plate,
    trace_guide_and_model,
)
from ..poutine.plates import global_latent_error
from ..validation import check_choice, check_data, check_positive_int
from .elbo import ESTIMATORS, AnalyticKLError, check_site_order, model_dependencies, site_kl

__all__ = [
    "elbo_per_datapoint",
    "elbo_particle_per_datapoint",
    "program_elbo",
    "stacked_elbo",
    "check_per_datapoint",
]


def _log_prob(site: dict) -> torch.Tensor:
    return site["fn"].log_prob(site["value"])


def elbo_particle_per_datapoint(
    model_trace, guide_trace, estimator: str, plate_name: str, dependencies=None
) -> torch.Tensor:
    """One particle's per-datapoint bound ``(batch,)`` from a guide trace and the model
    replayed on it (global latents already conditioned).

    Auxiliary guide sites (:mod:`~pyro_aevb.poutine.auxiliary`) inside the data plate count
    with estimator A (their ``-log q``; the ``Delta`` sites they set carry the Jacobian), and
    are refused by estimator B, which has no closed form for them. Auxiliary sites outside
    the plate belong to the global latents, which are conditioned on, and carry no term.
    """
    aux, _ = guide_auxiliary_sites(guide_trace, model_trace, plate_name)
    if aux and estimator == "B":
        name = next(iter(aux))
        covers = (aux[name].get("infer") or {}).get(UNCONSTRAINED_OF)
        what = f" (it parametrises the latents {list(covers)})" if covers else ""
        raise AnalyticKLError(
            f"estimator B needs a closed-form KL(q || p) at every latent site, but the guide "
            f"samples the auxiliary site '{name}'{what} and sets the model's latents from it "
            f"(a joint guide: full-covariance over several sites, or a flow): no closed form "
            f"exists for that. Use estimator 'A'"
        )
    if estimator == "B":
        check_site_order(model_trace, guide_trace, dependencies)
    total = None
    for site in aux.values():
        term = -sum_to_plate(_log_prob(site), site, plate_name)
        total = term if total is None else total + term
    for name, site in sample_sites(model_trace):
        if site["is_observed"]:
            term = sum_to_plate(_log_prob(site), site, plate_name)
        else:
            guide_site = guide_trace.nodes[name]
            if estimator == "B":
                kl = sum_to_plate(site_kl(name, guide_site, site), guide_site, plate_name)
                term = None if kl is None else -kl
            else:
                term = sum_to_plate(_log_prob(site), site, plate_name)
                if term is not None:
                    term = term - sum_to_plate(_log_prob(guide_site), guide_site, plate_name)
            if term is None:
                raise global_latent_error(name, plate_name, "a per-datapoint bound")
        if term is None:
            continue
        total = term if total is None else total + term
    return total


def check_per_datapoint(value: torch.Tensor, rows: int, what: str) -> torch.Tensor:
    """Broadcast a ``(1,)`` term to ``(rows,)``; raise if a result has another length."""
    if value.shape == (1,) and rows != 1:
        return value.expand(rows)
    if value.shape != (rows,):
        raise RuntimeError(
            f"{what} gave shape {tuple(value.shape)} for {rows} rows; a per-datapoint result "
            f"must have one entry per row"
        )
    return value


def elbo_per_datapoint(
    model,
    guide,
    x: torch.Tensor,
    *,
    estimator: str = "B",
    num_particles: int = 1,
    plate_name: str = "data",
    global_values: dict | None = None,
) -> torch.Tensor:
    """Per-datapoint ELBO ``L_i`` of ``model``/``guide`` on the rows of ``x``; ``(batch,)``.

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``fn(x)``, with every per-datapoint latent inside
        ``pyro.plate(plate_name, len(x))``.
    x : torch.Tensor
        ``(batch, *event_shape)`` observations.
    estimator : {"A", "B"}
        Generic (eq. 6) or analytic-KL (eq. 7) estimator; B raises
        :class:`~pyro_aevb.infer.elbo.AnalyticKLError` for a site without closed-form KL.
    num_particles : int
        L, the number of ``z`` draws averaged.
    plate_name : str
        Name of the data plate.
    global_values : dict, optional
        Values to condition global latents on (default: the guide's point estimate).

    Returns
    -------
    torch.Tensor
        Shape ``(batch,)``. Gradients flow through it unless called under ``torch.no_grad()``.
    """
    check_choice(estimator, "estimator", ESTIMATORS)
    num_particles = check_positive_int(num_particles, "num_particles")
    x = check_data(x, "x")
    program = PerDatapointProgram(
        model, guide, x, plate_name=plate_name, global_values=global_values
    )
    return program_elbo(program, x, estimator, num_particles)


def _dependencies(program: PerDatapointProgram, x: torch.Tensor):
    """The model's dependencies on ``x``, when :func:`check_site_order` needs them."""
    return lambda: model_dependencies(program.model, (x,), {})


def stacked_elbo(
    program: PerDatapointProgram,
    x: torch.Tensor,
    estimator: str,
    num_particles: int,
    reduce: bool = True,
) -> torch.Tensor:
    """:func:`program_elbo` with the particles drawn in one run of the programs on
    ``num_particles`` stacked copies of the rows (faster; the same estimator, other draws).
    ``(B,)``, or with ``reduce=False`` every particle's bound, ``(num_particles, B)``."""
    if program.guide is None:
        raise ValueError("the per-datapoint bound needs a guide q(z | x); got None")
    x_rep = replicate_rows(x, num_particles)
    guide_trace, model_trace = trace_guide_and_model(program.model, program.guide, x_rep)
    per_row = elbo_particle_per_datapoint(
        model_trace, guide_trace, estimator, program.plate_name, _dependencies(program, x_rep)
    )
    per_row = check_per_datapoint(per_row, x_rep.shape[0], "the bound")
    per_particle = per_row.reshape(num_particles, x.shape[0])
    return per_particle.mean(0) if reduce else per_particle


def program_elbo(
    program: PerDatapointProgram, x: torch.Tensor, estimator: str, num_particles: int
) -> torch.Tensor:
    """:func:`elbo_per_datapoint` on a prepared program (no re-preparation); ``(batch,)``."""
    if program.guide is None:
        raise ValueError("the per-datapoint bound needs a guide q(z | x); got None")
    total = 0.0
    for _ in range(num_particles):
        guide_trace, model_trace = trace_guide_and_model(program.model, program.guide, x)
        total = total + elbo_particle_per_datapoint(
            model_trace, guide_trace, estimator, program.plate_name, _dependencies(program, x)
        )
    return check_per_datapoint(total / num_particles, x.shape[0], "the bound")
