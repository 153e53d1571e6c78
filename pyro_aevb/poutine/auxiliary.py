r"""Auxiliary guide sites: guide-only latents that parametrise the model's latents.

A guide that is joint over several of a model's latents (a full-covariance Gaussian, a
normalising flow) naturally samples **one** auxiliary vector per datapoint and sets each
model latent from it through a :class:`~pyro.distributions.Delta` site, as Pyro's
``AutoContinuous`` guides do::

    u_i ~ q(u | x_i)                               (guide only; infer={"is_auxiliary": True})
    z_i = T(u_i),  Delta(z_i, log_density = -log|det dT/du (u_i)|)       (the model's sites)

so that the guide's density of the model's latents is ``log q(z_i | x_i) = log q(u_i | x_i)
- log|det dT/du|``: the auxiliary site's ``log_prob`` plus the Deltas' ``log_density``. Every
per-datapoint estimator counts both (:func:`guide_auxiliary_sites` finds them).

Estimators that evaluate the guide at latents it did not draw (AIS from the encoder, the
starting points of HMC) also need the auxiliary value that corresponds to given latents.
A guide declares it with the ``infer`` key :data:`UNCONSTRAINED_OF`: the auxiliary value of
datapoint ``i`` is the concatenation of the *unconstrained* coordinates (in
:class:`~pyro_aevb.poutine.LatentLayout` order and flattening) of the latent sites it names.
:class:`ConditionAuxiliary` runs a guide at such a position. An auxiliary site without the
declaration still works for the bound and IWAE, but not there (a clear error says so).
"""

from __future__ import annotations

import torch
from pyro.poutine.messenger import Messenger

from .layout import LatentLayout
from .plates import ProgramContractError, plate_frame, sample_sites

__all__ = [
    "UNCONSTRAINED_OF",
    "is_auxiliary",
    "guide_auxiliary_sites",
    "ConditionAuxiliary",
]

#: ``infer`` key of an auxiliary guide site: the names of the local latent sites whose
#: unconstrained coordinates its value holds, concatenated in this order (each flattened per
#: datapoint as :meth:`LatentLayout.flatten` does).
UNCONSTRAINED_OF = "unconstrained_of"


def is_auxiliary(site: dict) -> bool:
    """Whether a trace site is a guide-only auxiliary latent (``infer={"is_auxiliary": True}``)
    that is sampled, not observed."""
    infer = site.get("infer") or {}
    return site["type"] == "sample" and bool(infer.get("is_auxiliary")) and not site["is_observed"]


def guide_auxiliary_sites(guide_trace, model_trace, plate_name: str) -> tuple[dict, dict]:
    """``(local, global)``: the guide's auxiliary sites that are not model sites, split into
    those inside the data plate (per datapoint) and those outside it (they parametrise global
    latents, which per-datapoint estimators condition on, so they carry no per-datapoint
    term).

    Raises :class:`~pyro_aevb.poutine.plates.ProgramContractError` naming a guide-only site
    that is not marked auxiliary.
    """
    local, outside = {}, {}
    for name, site in sample_sites(guide_trace):
        if name in model_trace.nodes or site["is_observed"]:
            continue
        if not is_auxiliary(site):
            raise ProgramContractError(
                f"guide site '{name}' is not in the model and not marked auxiliary: mark a "
                f"guide-only variable with infer={{'is_auxiliary': True}} (its log q is then "
                f"counted), or remove it from the guide"
            )
        (local if plate_frame(site, plate_name) is not None else outside)[name] = site
    return local, outside


class ConditionAuxiliary(Messenger):
    """Run a guide at given local latents, in unconstrained coordinates.

    Parameters
    ----------
    layout : LatentLayout
        The model's local latents.
    position : torch.Tensor
        ``(n, D)`` unconstrained coordinates, one row per row of the data plate.
    values : dict of str to torch.Tensor
        The same latents, constrained (:func:`~pyro_aevb.poutine.constrain_in_model`).

    An auxiliary site that declares :data:`UNCONSTRAINED_OF` is set to the position's
    columns of the sites it names, reshaped to its shape, and marked observed; the latent
    sites it covers are left to the guide (their ``Delta`` values follow from it, with their
    log-Jacobians). Every other latent of ``values`` is conditioned as
    :func:`pyro.poutine.condition` does. After a run, :attr:`auxiliary` holds the auxiliary
    sites set and :attr:`covered` the latents set through them.
    """

    def __init__(
        self, layout: LatentLayout, position: torch.Tensor, values: dict[str, torch.Tensor]
    ):
        super().__init__()
        self.layout = layout
        self.position = position
        self.values = values
        self.covered: set[str] = set()
        self.auxiliary: set[str] = set()
        self._sites = {s.name: s for s in layout.sites}

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"]:
            return
        infer = msg.get("infer") or {}
        names = infer.get(UNCONSTRAINED_OF) if infer.get("is_auxiliary") else None
        if names is not None:
            unknown = [n for n in names if n not in self._sites]
            if unknown:
                raise ProgramContractError(
                    f"auxiliary guide site '{msg['name']}' declares the latents {list(names)}, "
                    f"but {unknown} are not local latent sites of the model "
                    f"({list(self.layout.names)})"
                )
            blocks = [
                self.position[:, s.offset : s.offset + s.size]
                for s in (self._sites[n] for n in names)
            ]
            fn = msg["fn"]
            msg["value"] = torch.cat(blocks, dim=-1).reshape(fn.batch_shape + fn.event_shape)
            msg["is_observed"] = True
            self.auxiliary.add(msg["name"])
            self.covered.update(names)
        elif msg["name"] in self.values and msg["name"] not in self.covered:
            msg["value"] = self.values[msg["name"]]
            msg["is_observed"] = True
