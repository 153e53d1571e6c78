r"""Set a model's local latents from an unconstrained position as the model runs.

A latent whose support has tensor bounds (``z ~ Uniform(0, s)`` with ``s`` another latent,
``Uniform(0, x_i)`` with bounds from the data) has a transform ``z = T(u)`` that is known only
when the model reaches the site, after the latents it depends on have their values. Taking
``T = biject_to(support)`` from the site's distribution there is what makes the potential::

    log p(x_i, u_i) = sum_sites [log p(z_s | ...) + log |det dT_s/du_s (u_s)|] + log p(x_i | z_i)

exact for such models (NumPyro does the same); a transform built once from a first trace
would keep that trace's bounds (other rows, other values of ``s``). Sites with fixed
supports use the layout's transform, so for them this is
:meth:`~pyro_aevb.poutine.LatentLayout.unflatten` done inside the run.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from torch.distributions import biject_to
from torch.distributions.constraints import Constraint

from .layout import LatentLayout

__all__ = ["UnconstrainedCondition", "constrain_in_model", "flatten_in_model"]


class UnconstrainedCondition(Messenger):
    """Condition the layout's latent sites on ``T(u)`` of their columns of ``position``.

    Parameters
    ----------
    layout : LatentLayout
        The model's local latents.
    position : torch.Tensor
        ``(n, D)`` unconstrained coordinates, one row per row of the data plate.

    Each latent site of the layout gets the value ``z = T(u)`` and is marked observed, as
    :func:`pyro.poutine.condition` does; ``T`` is ``biject_to`` of the site's support where it
    runs for a :attr:`~pyro_aevb.poutine.LatentSite.runtime` site, else the layout's. After a
    run, :attr:`values` and :attr:`log_jac` hold each site's ``z`` and ``log|det dT/du|``
    (batch shape of the site, event dims summed).
    """

    def __init__(self, layout: LatentLayout, position: torch.Tensor):
        super().__init__()
        self.layout = layout
        self.position = position
        self.values: dict[str, torch.Tensor] = {}
        self.log_jac: dict[str, torch.Tensor] = {}
        self._sites = {s.name: s for s in layout.sites}

    def _pyro_sample(self, msg) -> None:
        site = self._sites.get(msg["name"])
        if site is None or msg["is_observed"]:
            return
        transform = biject_to(msg["fn"].support) if site.runtime else None
        z, ladj = site.constrain(site.block(self.position), transform)
        msg["value"] = z
        msg["is_observed"] = True
        self.values[site.name] = z
        self.log_jac[site.name] = ladj


def constrain_in_model(
    model: Callable, x: torch.Tensor, layout: LatentLayout, position: torch.Tensor
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(values, log_jac)`` of ``position`` ``(n, D)``, taking each site's transform where
    ``model(x)`` runs it (``x`` has the ``n`` rows). Equal to ``layout.unflatten(position)``
    for a layout without runtime sites, which need no model run."""
    if not layout.runtime:
        return layout.unflatten(position)
    cond = UnconstrainedCondition(layout, position)
    with poutine.block():
        cond(model)(x)
    missing = [n for n in layout.names if n not in cond.values]
    if missing:
        raise ValueError(f"latent sites {missing} did not appear when running {model!r}")
    return cond.values, cond.log_jac


def supports_at(
    model: Callable, x: torch.Tensor, values: dict[str, torch.Tensor]
) -> dict[str, Constraint]:
    """Each latent site's support where ``model(x)`` runs with its latents at ``values``."""
    with poutine.block():
        trace = poutine.trace(poutine.condition(model, data=values)).get_trace(x)
    return {n: trace.nodes[n]["fn"].support for n in values if n in trace.nodes}


def flatten_in_model(
    model: Callable, x: torch.Tensor, layout: LatentLayout, values: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Constrained ``values`` -> ``(n, D)`` unconstrained position, runtime sites through
    their support at these values in ``model(x)``; ``layout.flatten(values)`` otherwise."""
    if not layout.runtime:
        return layout.flatten(values)
    return layout.flatten(values, supports=supports_at(model, x, values))
