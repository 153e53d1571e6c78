r"""The data plate in a Pyro trace: find it, reduce a site's terms to it, say what is wrong.

A model with local latents declares its datapoints with ``pyro.plate(plate_name, ...)``; every
per-datapoint quantity of this library is a sum over the sites inside that plate, reduced to
one number per row of the plate. These helpers are the only place that reads plate frames, so
every estimator reduces the same way and gives the same error messages.
"""

from __future__ import annotations

import torch
from pyro.poutine.util import site_is_subsample

__all__ = [
    "ProgramContractError",
    "SubsampledPlateError",
    "RowsOutsidePlateError",
    "plate_frame",
    "sum_to_plate",
    "sample_sites",
    "latent_sites",
    "max_plate_nesting",
    "require_plate",
    "global_latent_error",
    "same_weight",
]


class ProgramContractError(ValueError):
    """A program breaks a contract of this library (its data plate, its sites); the message
    names the plate or site and says what to change."""


class SubsampledPlateError(ProgramContractError):
    """A plate other than the data plate subsamples: training by SVI works, per-datapoint
    densities (bounds, log p(x_i), HMC, AIS) do not."""


class RowsOutsidePlateError(ProgramContractError):
    """A site outside the data plate has a shape that follows the rows of ``x``: SVI trains
    such a model on the whole data set at once (no minibatch scale is needed), per-datapoint
    densities and minibatch training do not."""


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
    site is not inside ``plate_name``. Masks are applied, scales are not: the result is the
    term of each datapoint alone, whatever minibatch scale the plate carries.
    """
    frame = plate_frame(site, plate_name)
    if frame is None:
        return None
    mask = site.get("mask")
    if mask is False:  # poutine.mask(mask=False): Pyro takes a plain bool too
        value = torch.zeros_like(value)
    elif isinstance(mask, torch.Tensor):
        try:
            masked = torch.where(mask, value, value.new_zeros(()))
        except RuntimeError:
            raise ProgramContractError(
                f"the mask of site '{site['name']}' has shape {tuple(mask.shape)}, which does "
                f"not broadcast to its log-density of shape {tuple(value.shape)}. A mask with "
                f"one entry per row of the data held outside the program does not follow the "
                f"rows the model is run on (several chains or particles run it on stacked "
                f"copies of x, a minibatch on a subset): compute it from the program's x"
            ) from None
        if masked.shape != value.shape:
            # e.g. a (B, 1) mask on a (B,) log-density: (B, B) copies, each row's term summed
            # with every other row's; Pyro's own sum would be as wrong
            raise ProgramContractError(
                f"the mask of site '{site['name']}' has shape {tuple(mask.shape)}, which "
                f"broadcasts its log-density of shape {tuple(value.shape)} to "
                f"{tuple(masked.shape)}: every entry would be counted "
                f"{masked.numel() // max(1, value.numel())} times. Give the mask the site's "
                f"batch shape {tuple(value.shape)} (or one that broadcasts to it)"
            )
        value = masked
    if value.dim() < -frame.dim:
        value = value.reshape((1,) * (-frame.dim - value.dim()) + tuple(value.shape))
    value = value.movedim(frame.dim, 0)
    return value.reshape(value.shape[0], -1).sum(-1)


def same_weight(a, b) -> bool:
    """Whether two scales, or two masks, of a site are equal entry by entry once broadcast
    (numbers, bools or tensors; a mask of ``None`` masks nothing)."""
    if a is b:
        return True
    a, b = (True if v is None else v for v in (a, b))
    if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
        return a == b
    try:
        a, b = torch.broadcast_tensors(torch.as_tensor(a), torch.as_tensor(b))
    except RuntimeError:
        return False
    return torch.equal(a, b)


def sample_sites(trace):
    """``(name, site)`` of every sample site of ``trace`` except plates' subsample sites and
    ``pyro.deterministic`` sites (a record of a value: its ``Delta`` has log-density 0, and its
    default ``event_dim``, every dim of the value, need not fit the data plate)."""
    for name, site in trace.nodes.items():
        if (
            site["type"] == "sample"
            and not site_is_subsample(site)
            and not (site.get("infer") or {}).get("_deterministic")
        ):
            yield name, site


def latent_sites(trace) -> dict:
    """The latent (not observed) sample sites of ``trace``, by name, in trace order."""
    return {name: site for name, site in sample_sites(trace) if not site["is_observed"]}


def max_plate_nesting(*traces) -> int:
    """The largest ``-dim`` of any vectorised plate in ``traces`` (0 without plates)."""
    nesting = 0
    for trace in traces:
        for site in trace.nodes.values():
            if site["type"] != "sample":
                continue
            for frame in site["cond_indep_stack"]:
                if frame.vectorized and frame.dim is not None:
                    nesting = max(nesting, -frame.dim)
    return nesting


def require_plate(trace, plate_name: str, what: str) -> None:
    """Raise ``ValueError`` unless some sample site of ``trace`` is inside ``plate_name``."""
    for _, site in sample_sites(trace):
        if plate_frame(site, plate_name) is not None:
            return
    plates = sorted(
        {f.name for _, s in sample_sites(trace) for f in s["cond_indep_stack"] if f.vectorized}
    )
    found = f"; its plates are {plates}" if plates else "; it has no plate"
    raise ProgramContractError(
        f"no sample site of the {what} is inside a plate named '{plate_name}'{found}. Put the "
        f"per-datapoint sites inside pyro.plate('{plate_name}', len(x)), or pass "
        f"plate_name= the name of your data plate"
    )


def global_latent_error(name: str, plate_name: str, purpose: str) -> ValueError:
    """The error for a latent site outside the data plate where only local ones make sense."""
    return ProgramContractError(
        f"latent site '{name}' is outside the plate '{plate_name}': it is a global latent, "
        f"shared by all datapoints, so {purpose} is not defined for it. Per-datapoint "
        f"estimators condition on a point estimate of the globals (see "
        f"pyro_aevb.poutine.PerDatapointProgram); put per-datapoint latents inside "
        f"pyro.plate('{plate_name}', ...), or pass the right plate_name"
    )
