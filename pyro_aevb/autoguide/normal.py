r"""The amortized diagonal Gaussian: a mean-field encoder for every local latent site.

For each local site ``k`` of the model (see :mod:`~pyro_aevb.autoguide.base`) a linear head
on the shared trunk's features ``h = trunk(x_i)`` gives the mean and log variance of a
diagonal Gaussian in the site's unconstrained space, pushed through
``T_k = biject_to(support_k)``::

    [mu_k, log sigma_k^2] = W_k h + b_k
    u_k ~ N(mu_k, diag sigma_k^2),   z_k = T_k(u_k)
    log q(z_k | x_i) = log N(u_k; mu_k, sigma_k^2) - log |det dT_k/du (u_k)|

so LogNormal-, simplex- or interval-supported latents work as well as real ones. A site with
real support gets ``Normal(mu, sigma)`` itself (``.to_event`` over its event dims): with the
VAE's ``N(0, I)`` prior this is exactly the paper's encoder (Appendix C), and estimator B
applies. A positive site gets ``TransformedDistribution(Normal, ExpTransform)``, which has a
closed-form KL against a ``LogNormal`` prior too. Sites are independent given ``x``; every
site is a model site sampled directly (no auxiliary variable).
"""

from __future__ import annotations

import pyro
import torch
from torch import nn

from .base import AmortizedGuide, register_autoguide

__all__ = ["AmortizedNormal"]


@register_autoguide
class AmortizedNormal(AmortizedGuide):
    """Amortized diagonal Gaussian over each local latent site's unconstrained value.

    ``AmortizedNormal(model)`` is a guide for ``model``, usable with stock ``SVI``,
    ``Predictive`` and :func:`pyro_aevb.fit`; see :class:`~pyro_aevb.autoguide.base.AmortizedGuide`
    for the options (encoder trunk, data plate, global latents). The heads are
    ``nets["heads"][k]``: ``nn.Linear(F, 2 size_k)`` giving ``[mu, log sigma^2]`` for the
    ``k``-th local site (in the model's order), the layout of the VAE's encoder output, so
    the paper's encoder copies into trunk and head one layer for one.
    """

    family = "normal"

    def _build_heads(self, nets: nn.ModuleDict, feature_dim: int) -> None:
        nets["heads"] = nn.ModuleList(
            nn.Linear(feature_dim, 2 * site.size) for site in self.local_sites
        )

    def _site_params(self, h: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for site, head in zip(self.local_sites, self.nets["heads"]):
            loc, log_var = head(h).split(site.size, dim=-1)
            out.append((loc, torch.exp(0.5 * log_var)))
        return out

    def encode(self, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{site: (mu, sigma)}``, each ``(batch, size)``: the flat unconstrained Gaussian of
        each local site (in :class:`~pyro_aevb.poutine.LatentLayout` order)."""
        params = self._site_params(self.features(x))
        return {site.name: p for site, p in zip(self.local_sites, params)}

    def _params_from_features(self, h: torch.Tensor, nets: nn.ModuleDict):
        out = {}
        for site, head in zip(self.local_sites, nets["heads"]):
            out[f"{site.name}.loc"], out[f"{site.name}.log_var"] = head(h).split(site.size, -1)
        return out

    def _sample_from_params(self, params: dict[str, torch.Tensor], nets: nn.ModuleDict):
        out = {}
        for site in self.local_sites:
            loc = params[f"{site.name}.loc"]
            scale = torch.exp(0.5 * params[f"{site.name}.log_var"])
            fn = site.normal(site.shaped(loc), site.shaped(scale))
            with site.plates(self._call_plates):
                out[site.name] = pyro.sample(site.name, fn)
        return out

    def _local_center(self, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([loc for loc, _ in self._site_params(h)], dim=-1)
