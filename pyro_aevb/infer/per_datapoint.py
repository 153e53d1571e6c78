r"""Per-datapoint quantities of a Pyro model with local latents in a data plate.

Pyro's ELBOs return one number for a whole batch. Here every term is reduced to the data plate
instead, giving tensors of shape ``(batch,)``::

    L_i = E_q[ log p(x_i, z_i) - log q(z_i | x_i) ]        estimator A
    L_i = -KL(q(z_i | x_i) || p(z_i)) + E_q[ log p(x_i | z_i) ]   estimator B

Terms are **unscaled**: the ``N / M`` minibatch scale of a subsampled plate is not applied,
so ``L_i`` is the bound of datapoint ``i`` alone. Sites outside the data plate (such as the
VAE's ``"weight_prior"`` factor) are not part of any datapoint's bound and are left out; a
*latent* site outside the plate would make the per-datapoint bound ill-defined, so it raises.
"""

from __future__ import annotations

import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

from ..validation import check_choice, check_positive_int
from .elbo import ESTIMATORS, site_kl

__all__ = ["elbo_per_datapoint", "sum_to_plate", "plate_frame"]


def plate_frame(site: dict, plate_name: str):
    """The ``CondIndepStackFrame`` of ``plate_name`` in a trace site, or ``None``."""
    for frame in site["cond_indep_stack"]:
        if frame.name == plate_name:
            return frame
    return None


def sum_to_plate(value: torch.Tensor, site: dict, plate_name: str) -> torch.Tensor | None:
    """Sum a per-site tensor (shape ``site["fn"].batch_shape``) to the data plate.

    Returns shape ``(batch,)``, or ``(1,)`` for a term that is broadcast along the plate (the
    same for every datapoint; it broadcasts when added to the others), or ``None`` when the
    site is not inside ``plate_name``. Masks are applied, scales are not.
    """
    frame = plate_frame(site, plate_name)
    if frame is None:
        return None
    if site.get("mask") is not None:
        value = torch.where(site["mask"], value, value.new_zeros(()))
    if value.dim() < -frame.dim:
        value = value.reshape((1,) * (-frame.dim - value.dim()) + tuple(value.shape))
    value = value.movedim(frame.dim, 0)
    return value.reshape(value.shape[0], -1).sum(-1)


def _check_local(name: str, site: dict, plate_name: str) -> None:
    if plate_frame(site, plate_name) is None:
        raise ValueError(
            f"latent site '{name}' is outside the plate '{plate_name}', so a per-datapoint "
            f"bound is not defined; put per-datapoint latents inside "
            f"pyro.plate('{plate_name}', ...) or pass the right plate_name"
        )


def _log_prob(site: dict) -> torch.Tensor:
    return site["fn"].log_prob(site["value"])


def elbo_particle_per_datapoint(model_trace, guide_trace, estimator: str, plate_name: str):
    """One particle's per-datapoint bound from a guide trace and the model replayed on it."""
    total = None
    found_plate = False
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if site["is_observed"]:
            term = sum_to_plate(_log_prob(site), site, plate_name)
        else:
            _check_local(name, site, plate_name)
            guide_site = guide_trace.nodes[name]
            if estimator == "B":
                term = -sum_to_plate(site_kl(name, guide_site, site), guide_site, plate_name)
            else:
                term = sum_to_plate(_log_prob(site), site, plate_name) - sum_to_plate(
                    _log_prob(guide_site), guide_site, plate_name
                )
        if term is None:
            continue
        found_plate = True
        total = term if total is None else total + term
    if not found_plate:
        raise ValueError(
            f"no site of the model is inside a plate named '{plate_name}'; pass plate_name="
            f"the name of the data plate"
        )
    return total


def elbo_per_datapoint(
    model,
    guide,
    *args,
    estimator: str = "B",
    num_particles: int = 1,
    plate_name: str = "data",
    **kwargs,
) -> torch.Tensor:
    """Per-datapoint ELBO ``L_i`` of ``model``/``guide`` on ``*args``; shape ``(batch,)``.

    Parameters
    ----------
    model, guide : callable
        Pyro programs taking ``*args, **kwargs``, with every latent site inside
        ``pyro.plate(plate_name, ...)``.
    estimator : {"A", "B"}
        Generic (eq. 6) or analytic-KL (eq. 7) estimator; B raises
        :class:`~pyro_aevb.infer.elbo.AnalyticKLError` for a site without closed-form KL.
    num_particles : int
        L, the number of ``z`` draws averaged.
    plate_name : str
        Name of the data plate.

    Returns
    -------
    torch.Tensor
        Shape ``(batch,)``. Gradients flow through it unless called under ``torch.no_grad()``.
    """
    check_choice(estimator, "estimator", ESTIMATORS)
    num_particles = check_positive_int(num_particles, "num_particles")
    total = 0.0
    for _ in range(num_particles):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
        total = total + elbo_particle_per_datapoint(model_trace, guide_trace, estimator, plate_name)
    return total / num_particles
