r"""The amortized full-covariance Gaussian (the course notes' construction).

One linear head on the trunk's features ``h = trunk(x_i)`` gives, for the flat unconstrained
row ``u_i`` of all local latents (``D`` coordinates, :class:`~pyro_aevb.poutine.LatentLayout`
order), a mean, log variances and the strictly lower triangle of a Cholesky factor::

    [mu, log sigma^2, l] = W h + b                      (D + D + D (D - 1) / 2 numbers)
    L = diag(sigma) + mask * L'(l)                      (lower triangular, positive diagonal)
    u = mu + L eps,  eps ~ N(0, I_D),    log |det du/deps| = sum_j log sigma_j

and every local site is ``z_k = T_k(u_k)``, ``T_k = biject_to(support_k)``. The lower
triangle is filled row by row (``torch.tril_indices(D, D, -1)`` order) and its rows of the
head start at zero, so a new guide is the diagonal one.

When the model has a single local site that is one vector per datapoint, the
``MultivariateNormal`` (pushed through ``T``) is put on that site directly, and estimator B
applies against a ``Normal`` or ``MultivariateNormal`` prior
(:func:`~pyro_aevb.distributions.kl_mvn_diagonal_normal`). Otherwise the row ``u`` is an
auxiliary site and the model's sites are set from it through ``Delta`` sites
(:mod:`pyro_aevb.poutine.auxiliary`): estimator A, IWAE and every per-datapoint estimator
count it exactly; estimator B refuses it.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from .base import AmortizedGuide, register_autoguide

__all__ = ["AmortizedMultivariateNormal"]


@register_autoguide
class AmortizedMultivariateNormal(AmortizedGuide):
    """Amortized full-covariance Gaussian over all local latents' unconstrained coordinates.

    Options as :class:`~pyro_aevb.autoguide.base.AmortizedGuide`. The head is
    ``nets["head"]``, ``nn.Linear(F, 2 D + D (D - 1) / 2)``.
    """

    family = "multivariate_normal"

    def _build_heads(self, nets: nn.ModuleDict, feature_dim: int) -> None:
        d = self.layout.dim
        nets["head"] = nn.Linear(feature_dim, 2 * d + d * (d - 1) // 2)

    def _init_heads(self, nets: nn.ModuleDict) -> None:
        d = self.layout.dim
        with torch.no_grad():  # start diagonal: the off-diagonal outputs are zero
            nets["head"].weight[2 * d :].zero_()
            nets["head"].bias[2 * d :].zero_()

    def _params_from_features(self, h: torch.Tensor, nets: nn.ModuleDict):
        d = self.layout.dim
        loc, log_var, lower = nets["head"](h).split([d, d, d * (d - 1) // 2], dim=-1)
        return {"loc": loc, "log_var": log_var, "lower": lower}

    def _loc_and_tril_of(self, params: dict[str, torch.Tensor]):
        tril = torch.diag_embed(torch.exp(0.5 * params["log_var"]))
        if self.layout.dim > 1:
            tril = _fill_lower(tril, params["lower"])
        return params["loc"], tril

    def _loc_and_tril(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._loc_and_tril_of(self._params_from_features(h, self.nets))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, L)``: ``(batch, D)`` and ``(batch, D, D)``, the Gaussian of the flat
        unconstrained row of local latents (covariance ``L L^T``)."""
        return self._loc_and_tril(self.features(x))

    def _sample_from_params(self, params: dict[str, torch.Tensor], nets: nn.ModuleDict):
        loc, tril = self._loc_and_tril_of(params)
        if self.samples_site_directly:
            (site,) = self.local_sites
            fn = site.distribution(dist.MultivariateNormal(loc, scale_tril=tril))
            return {site.name: pyro.sample(site.name, fn)}
        n, d = loc.shape
        batch = self._row_batch(n)
        aux = dist.MultivariateNormal(loc.reshape(*batch, d), scale_tril=tril.reshape(*batch, d, d))
        return self._sample_auxiliary(aux, n)

    def _local_center(self, h: torch.Tensor) -> torch.Tensor:
        return self._loc_and_tril(h)[0]


def _fill_lower(tril: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """``tril`` plus the strictly lower triangle filled from ``lower`` ``(..., D(D-1)/2)``,
    row by row."""
    d = tril.shape[-1]
    rows, cols = torch.tril_indices(d, d, -1, device=tril.device)
    full = torch.zeros_like(tril)
    full[..., rows, cols] = lower
    return tril + full
