r"""A linear-Gaussian latent variable model (probabilistic PCA) with everything exact.

Model, for each datapoint in the plate ``"data"``::

    z_i ~ N(0, I_K)                        (site "z", MultivariateNormal, event (K,))
    x_i ~ N(W z_i + b, sigma^2 I_D)        (site "x", event (D,))

Its marginal and posterior are Gaussian and known in closed form::

    p(x)       = N(x; b, W W^T + sigma^2 I)
    p(z | x)   = N(S W^T (x - b) / sigma^2, S),   S = (I + W^T W / sigma^2)^{-1}

so it is the reference model on which every bound and estimator of this library is checked
against the truth (``log_marginal``, ``posterior``). Two guides are provided: ``guide``, an
amortised diagonal Gaussian with a linear encoder (the VAE's recognition model in miniature),
and ``exact_guide``, the true posterior (with it the ELBO equals ``log p(x)``).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..validation import check_data, check_num_data, check_positive_int

__all__ = ["LinearGaussian"]


class LinearGaussian(nn.Module):
    """Probabilistic PCA with a linear amortised Gaussian guide.

    Parameters
    ----------
    data_dim, latent_dim : int
        D and K.
    sigma : float
        Initial observation noise standard deviation.
    init_scale : float
        Entries of ``W`` are drawn from ``N(0, init_scale^2)``; the encoder starts at zero.
    """

    def __init__(self, data_dim: int, latent_dim: int, sigma: float = 0.5, init_scale: float = 1.0):
        super().__init__()
        self.data_dim = check_positive_int(data_dim, "data_dim")
        self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        self.W = nn.Parameter(init_scale * torch.randn(data_dim, latent_dim))
        self.b = nn.Parameter(torch.zeros(data_dim))
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma)))
        # Guide: q(z|x) = N(A (x - c) , diag exp(log_var)).
        self.enc_A = nn.Parameter(torch.zeros(latent_dim, data_dim))
        self.enc_c = nn.Parameter(torch.zeros(data_dim))
        self.enc_log_var = nn.Parameter(torch.zeros(latent_dim))

    @property
    def sigma(self) -> torch.Tensor:
        return self.log_sigma.exp()

    def _plate(self, batch: int, num_data: int | None):
        num_data = check_num_data(num_data, batch)
        if num_data == batch:
            return pyro.plate("data", batch)
        return pyro.plate("data", num_data, subsample=torch.arange(batch))

    def prior(self, batch: int) -> dist.Distribution:
        loc = self.W.new_zeros(batch, self.latent_dim)
        return dist.MultivariateNormal(loc, scale_tril=torch.eye(self.latent_dim, dtype=loc.dtype))

    def model(self, x=None, num_data=None, batch_size=None):
        pyro.module("linear_gaussian", self)
        if x is not None:
            check_data(x, "x", self.data_dim)
            batch_size = x.shape[0]
        batch_size = batch_size or 1
        with self._plate(batch_size, num_data):
            z = pyro.sample("z", self.prior(batch_size))
            loc = z @ self.W.T + self.b
            pyro.sample("x", dist.Normal(loc, self.sigma.expand_as(loc)).to_event(1), obs=x)
        return z

    def guide(self, x, num_data=None, batch_size=None):
        """Amortised diagonal Gaussian ``q(z|x)`` (a linear encoder)."""
        pyro.module("linear_gaussian", self)
        check_data(x, "x", self.data_dim)
        loc = (x - self.enc_c) @ self.enc_A.T
        scale = torch.exp(0.5 * self.enc_log_var).expand_as(loc)
        with self._plate(x.shape[0], num_data):
            return pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def local_params(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The guide's per-datapoint parameters ``{"loc": (B, K), "log_var": (B, K)}``
        (see :func:`pyro_aevb.infer.refine.refine`)."""
        check_data(x, "x", self.data_dim)
        loc = (x - self.enc_c) @ self.enc_A.T
        return {"loc": loc, "log_var": self.enc_log_var.expand_as(loc)}

    def local_guide(self, params: dict[str, torch.Tensor]):
        """The diagonal guide with ``q(z | x_i) = N(loc_i, diag exp(log_var_i))`` per row."""

        def guide(x, num_data=None, batch_size=None):
            check_data(x, "x", self.data_dim)
            scale = torch.exp(0.5 * params["log_var"])
            with self._plate(x.shape[0], num_data):
                return pyro.sample("z", dist.Normal(params["loc"], scale).to_event(1))

        return guide

    def exact_guide(self, x, num_data=None, batch_size=None):
        """The exact posterior ``p(z|x)`` as a guide."""
        check_data(x, "x", self.data_dim)
        mean, cov = self.posterior(x)
        with self._plate(x.shape[0], num_data):
            return pyro.sample("z", dist.MultivariateNormal(mean, covariance_matrix=cov))

    def marginal(self) -> dist.MultivariateNormal:
        """``p(x) = N(b, W W^T + sigma^2 I)`` (batch shape ())."""
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(self.data_dim, dtype=self.W.dtype)
        return dist.MultivariateNormal(self.b, covariance_matrix=cov)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x_i)``, shape ``(batch,)``."""
        return self.marginal().log_prob(x)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact posterior mean ``(batch, K)`` and covariance ``(K, K)`` (shared by all x)."""
        s2 = self.sigma**2
        eye = torch.eye(self.latent_dim, dtype=self.W.dtype)
        cov = torch.linalg.inv(eye + self.W.T @ self.W / s2)
        mean = (x - self.b) @ self.W @ cov / s2
        return mean, cov

    def analytic_elbo(
        self, x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        """Exact ELBO ``E_q[log p(x, z) - log q(z)]``, ``q = N(loc, diag scale^2)``; ``(batch,)``.

        ``E_q log p(x|z) = log N(x; W loc + b, s^2 I) - tr(W^T W diag(scale^2)) / (2 s^2)``.
        """
        s2 = self.sigma**2
        q = dist.Normal(loc, scale).to_event(1)
        recon = dist.Normal(loc @ self.W.T + self.b, self.sigma).to_event(1).log_prob(x)
        recon = recon - (scale**2 * (self.W**2).sum(0)).sum(-1) / (2 * s2)
        return recon - torch.distributions.kl_divergence(q, self.prior(x.shape[0]))
