r"""The amortized full-covariance Gaussian (the course notes' construction).

One linear head on the trunk's features ``h = trunk(x_i)`` gives, for the flat unconstrained
row ``u_i`` of all local latents (``D`` coordinates, :class:`~pyro_aevb.poutine.LatentLayout`
order), a mean, log variances and the strictly lower triangle of a Cholesky factor::

    [mu, log sigma^2, l] = W h + b                      (D + D + D (D - 1) / 2 numbers)
    U = I + mask * l / sqrt(D)                          (unit lower triangular)
    L = U diag(sigma)                                   (lower triangular, diagonal sigma)
    u = mu + L eps,  eps ~ N(0, I_D),    log |det du/deps| = sum_j log sigma_j

i.e. ``Sigma = U diag(sigma^2) U^T`` (the LDL^T form of the Cholesky factor, or
``u_i = mu_i + sigma_i eps_i + sum_{j<i} U_ij sigma_j eps_j``: ``sigma_i^2`` is the variance
of ``u_i`` given the coordinates before it). The strictly lower triangle is filled row by
row (``torch.tril_indices(D, D, -1)`` order) and its rows of the head start at zero, so a
new guide is the diagonal one.

This is the course notes' family (``L = mask * L' + diag(sigma)``) written with
``L'_ij = U_ij sigma_j``; the two differ only in how an optimiser's step moves them. In the
course notes' form each off-diagonal entry is an absolute scale: Adam moves every weight of
the head by about ``lr`` per step, so each of the ``D (D - 1) / 2`` entries moves by up to
``lr * ||h||_1`` (about 0.3 with 500 tanh units and ``lr = 1e-3``), far more than the
posterior standard deviations (about 0.1) they add to. On the paper's MNIST VAE
(784-500-20, Adam 1e-3) that form ended 3.3 nats *below* the diagonal encoder at 3e5 samples;
the relative entries ``U_ij``, scaled by ``1 / sqrt(D)`` (which keeps the variance that a
row's ``D - 1`` entries add independent of ``D``), end above it (``benchmarks/encoders.py``;
in a one-off comparison at 1e5 samples, scales from 0.03 to 0.25 all did).

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

__all__ = ["AmortizedMultivariateNormal", "head_outputs", "scale_tril"]


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
        return params["loc"], scale_tril(params["log_var"], params["lower"])

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


def scale_tril(log_var: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """The Cholesky factor ``L = U diag(sigma)`` ``(..., D, D)`` of the head's outputs
    ``log_var`` ``(..., D)`` and ``lower`` ``(..., D (D - 1) / 2)`` (see the module)."""
    sigma = torch.exp(0.5 * log_var)
    d = sigma.shape[-1]
    if d == 1:
        return sigma.unsqueeze(-1)
    rows, cols = torch.tril_indices(d, d, -1, device=sigma.device)
    unit = torch.diag_embed(torch.ones_like(sigma))
    unit[..., rows, cols] = lower * d**-0.5
    return unit * sigma.unsqueeze(-2)


def head_outputs(tril: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_var, lower)``: the head outputs that give the Cholesky factor ``tril``
    ``(..., D, D)`` (lower triangular, positive diagonal); the inverse of :func:`scale_tril`."""
    sigma = tril.diagonal(dim1=-2, dim2=-1)
    d = sigma.shape[-1]
    rows, cols = torch.tril_indices(d, d, -1, device=tril.device)
    unit = tril / sigma.unsqueeze(-2)
    return 2 * sigma.log(), unit[..., rows, cols] * d**0.5
