"""The per-datapoint bound of a whole data set, in batches: fast for the paper's VAE, Pyro
traces for any other model object."""

from __future__ import annotations

import torch
from torch import nn

from ..infer.elbo import ESTIMATORS
from ..infer.objectives.base import FAST_MODES
from ..infer.objectives.fast_vae import FastVAE
from ..infer.per_datapoint import program_elbo
from ..poutine import PerDatapointProgram
from ..validation import check_choice, check_data, check_positive_int, data_to_dtype

__all__ = ["evaluate_bound"]


def evaluate_bound(
    module: nn.Module,
    data: torch.Tensor,
    batch_size: int = 1000,
    estimator: str = "B",
    num_particles: int = 1,
    fast: str = "auto",
    *,
    guide=None,
    plate_name: str = "data",
    global_values: dict | None = None,
) -> torch.Tensor:
    """Per-datapoint bound ``L_i`` of every row of ``data``, in batches, without gradient.

    Parameters
    ----------
    module : nn.Module or callable
        A model object with Pyro ``model(x)``/``guide(x)`` methods (e.g. a
        :class:`~pyro_aevb.models.VAE`), or a Pyro model with ``guide=`` given. A model
        object with ``guide=`` is evaluated with that guide in place of its own.
    data : torch.Tensor
        ``(N, *event_shape)``, validated once here (finite; in [0, 1] for a Bernoulli
        decoder) and converted to the parameters' dtype.
    batch_size : int
        Rows per batch (memory grows with ``batch_size * num_particles * D``).
    estimator : {"A", "B"}
        Generic (eq. 6) or analytic-KL (eq. 7) estimator.
    num_particles : int
        ``L``, draws of ``z`` averaged per datapoint.
    fast : {"auto", "on", "off"}
        Use the fused :class:`~pyro_aevb.infer.objectives.fast_vae.FastVAE` when it supports
        ``module`` (``"auto"``), require it (``"on"``, ``ValueError`` otherwise) or use Pyro's
        traces (``"off"``).
    guide : callable, optional
        The guide, when ``module`` is a plain Pyro model (or to replace a model object's
        own, e.g. an amortized autoguide).
    plate_name, global_values
        See :func:`~pyro_aevb.infer.per_datapoint.elbo_per_datapoint`.

    Returns
    -------
    torch.Tensor
        ``(N,)``, ``L_i`` without the weight prior and without minibatch scaling. Draws come
        from the global torch RNG in batch order, so the result equals one pass over all rows
        only in distribution (and exactly, for a fixed seed, the same computation batch by
        batch).
    """
    check_choice(estimator, "estimator", ESTIMATORS)
    check_choice(fast, "fast", FAST_MODES)
    num_particles = check_positive_int(num_particles, "num_particles")
    batch_size = check_positive_int(batch_size, "batch_size")
    if guide is None:
        model, guide = getattr(module, "model", None), getattr(module, "guide", None)
        if not (callable(model) and callable(guide)):
            raise TypeError(
                "evaluate_bound needs a model object with .model and .guide methods, or a Pyro "
                f"model with guide=; got {type(module).__name__}"
            )
    elif callable(getattr(module, "model", None)):
        model = module.model  # a model object evaluated with another guide (an autoguide)
    else:
        model = module
    params = list(module.parameters()) if isinstance(module, nn.Module) else []
    dtype = params[0].dtype if params else data.dtype
    device = params[0].device if params else data.device
    lik = getattr(module, "likelihood", None)
    data = check_data(
        data,
        "data",
        getattr(module, "event_shape", None),
        unit_interval=bool(getattr(lik, "unit_interval", False)),
    )
    data = data_to_dtype(data, dtype, "data").to(device=device)
    kernel = None
    if fast != "off":
        reason = FastVAE.unsupported_reason(module, estimator, num_particles)
        if reason is None and model == module.model and guide == module.guide:
            kernel = FastVAE(module, estimator, num_particles)
        elif fast == "on":
            raise ValueError(f"fast='on' but the fast path does not support this model: {reason}")
    if kernel is not None:
        # The fast path never scans values per batch; data was validated above.
        return torch.cat([kernel.bound(xb) for xb in data.split(batch_size)])
    validate = getattr(module, "validate", None)
    try:
        if validate is not None:
            module.validate = False  # validated once above, not once per batch
        program = PerDatapointProgram(
            model, guide, data[:batch_size], plate_name=plate_name, global_values=global_values
        )
        with torch.no_grad():
            return torch.cat(
                [
                    program_elbo(program, xb, estimator, num_particles)
                    for xb in data.split(batch_size)
                ]
            )
    finally:
        if validate is not None:
            module.validate = validate
