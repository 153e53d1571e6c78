"""Ordinary Pyro models as users write them, shared by the tests of user-model support.

None of them knows about pyro-aevb: no ``num_data`` keyword, plates sized from ``x``,
parameters in ``pyro.module``/``pyro.param``.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_aevb.models import examples


class PyroExampleVAE(examples.PyroExampleVAE):
    """Pyro's example VAE (:class:`pyro_aevb.models.PyroExampleVAE`), optionally with a
    ``pyro.param`` temperature on the guide's scale (a parameter outside any network)."""

    def __init__(self, z_dim=50, hidden_dim=400, plate="data", temperature=False):
        super().__init__(z_dim, hidden_dim, plate=plate)
        self.temperature = temperature

    def encode(self, x):
        z_loc, z_scale = super().encode(x)
        if self.temperature:
            t = pyro.param("temperature", torch.tensor(1.0), constraint=dist.constraints.positive)
            z_scale = z_scale * t
        return z_loc, z_scale


class GlobalNoiseModel(nn.Module):
    """A global noise scale outside the plate and local latents inside it::

        sigma ~ LogNormal(0, 1)                  (global)
        z_i ~ N(0, I_k),  x_i ~ N(W z_i + b, sigma^2 I_d)

    with a guide that has a linear encoder for ``z`` and ``pyro.param`` for ``sigma``."""

    def __init__(self, d=6, k=2, plate="data"):
        super().__init__()
        self.W = nn.Parameter(0.5 * torch.randn(d, k))
        self.b = nn.Parameter(torch.zeros(d))
        self.enc = nn.Linear(d, 2 * k)
        self.d, self.k, self.plate = d, k, plate

    def model(self, x):
        pyro.module("noise_model", self)
        sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        with pyro.plate(self.plate, x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.k), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, sigma).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("noise_model", self)
        loc = pyro.param("sigma_loc", torch.tensor(0.0))
        scale = pyro.param("sigma_scale", torch.tensor(0.5), constraint=dist.constraints.positive)
        pyro.sample("sigma", dist.LogNormal(loc, scale))
        with pyro.plate(self.plate, x.shape[0]):
            mu, log_var = self.enc(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(mu, torch.exp(0.5 * log_var)).to_event(1))

    def exact_log_marginal(self, x, sigma):
        """``log p(x_i | sigma)``: ``N(b, W W^T + sigma^2 I)``."""
        cov = self.W @ self.W.T + sigma**2 * torch.eye(self.d, dtype=x.dtype)
        return dist.MultivariateNormal(self.b, cov).log_prob(x)


class TwoLatentModel(nn.Module):
    """Two local latents, one positive::

    z_i ~ N(0, I_k),  s_i ~ LogNormal(0, 0.5),  x_i ~ N(W z_i + b, (s_i * 0.3)^2 I_d)
    """

    def __init__(self, d=5, k=2, plate="data"):
        super().__init__()
        self.W = nn.Parameter(0.3 * torch.randn(d, k))
        self.b = nn.Parameter(torch.zeros(d))
        self.enc = nn.Linear(d, 2 * k + 2)
        self.d, self.k, self.plate = d, k, plate

    def model(self, x):
        pyro.module("two_latent", self)
        with pyro.plate(self.plate, x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.k), 1.0).to_event(1))
            s = pyro.sample("s", dist.LogNormal(x.new_zeros(x.shape[0]), 0.5))
            loc = z @ self.W.T + self.b
            pyro.sample("x", dist.Normal(loc, 0.3 * s.unsqueeze(-1)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("two_latent", self)
        out = self.enc(x)
        k = self.k
        with pyro.plate(self.plate, x.shape[0]):
            pyro.sample(
                "z", dist.Normal(out[:, :k], torch.exp(0.5 * out[:, k : 2 * k])).to_event(1)
            )
            pyro.sample("s", dist.LogNormal(out[:, 2 * k], torch.exp(0.5 * out[:, 2 * k + 1])))


class TinyConvVAE(nn.Module):
    """A small convolutional VAE on image-shaped data ``(N, 1, 28, 28)``; the decoder
    reshapes with ``reshape(-1, ...)`` and the guide concatenates features with ``torch.cat``
    (user code that an extra particle dimension would break)."""

    def __init__(self, z_dim=4):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 4, stride=4)  # (4, 7, 7)
        self.enc = nn.Linear(4 * 49 + 1, 2 * z_dim)
        self.dec = nn.Linear(z_dim, 4 * 49)
        self.deconv = nn.ConvTranspose2d(4, 1, 4, stride=4)
        self.z_dim = z_dim

    def model(self, x):
        pyro.module("conv_vae", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1))
            h = torch.tanh(self.dec(z)).reshape(-1, 4, 7, 7)
            logits = self.deconv(h)
            pyro.sample("x", dist.Bernoulli(logits=logits, validate_args=False).to_event(3), obs=x)

    def guide(self, x):
        pyro.module("conv_vae", self)
        h = torch.tanh(self.conv(x)).reshape(x.shape[0], -1)
        h = torch.cat([h, x.mean((1, 2, 3)).unsqueeze(-1)], dim=-1)
        mu, log_var = self.enc(h).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(mu, torch.exp(0.5 * log_var)).to_event(1))


class LogLinearGaussian:
    """Two local sites, one positive, whose posterior is Gaussian in unconstrained space::

        z_i ~ N(0, 1),  s_i ~ LogNormal(0, 1),  x_i ~ N(W [z_i, log s_i] + b, sigma^2 I_d)

    In the unconstrained coordinates ``u_i = (z_i, log s_i)`` (the layout's order) it is
    probabilistic PCA with ``k = 2``, so ``log p(x_i)`` and the posterior of ``u_i`` are
    exact (:meth:`posterior`, :meth:`log_marginal`); float64, no parameters."""

    def __init__(self, d=4, sigma=0.5, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(d, 2, generator=g, dtype=torch.float64)
        self.b = torch.randn(d, generator=g, dtype=torch.float64)
        self.sigma, self.d = sigma, d

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0]), 1.0))
            s = pyro.sample("s", dist.LogNormal(x.new_zeros(x.shape[0]), 1.0))
            u = torch.stack([z, s.log()], -1)
            pyro.sample("x", dist.Normal(u @ self.W.T + self.b, self.sigma).to_event(1), obs=x)

    def posterior(self, x):
        """Exact posterior of ``u = (z, log s)``: mean ``(B, 2)``, covariance ``(2, 2)``."""
        prec = torch.eye(2, dtype=x.dtype) + self.W.T @ self.W / self.sigma**2
        cov = torch.linalg.inv(prec)
        return (x - self.b) @ self.W @ cov / self.sigma**2, cov

    def log_marginal(self, x):
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(self.d, dtype=x.dtype)
        return dist.MultivariateNormal(self.b, cov).log_prob(x)

    def simulate(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        u = torch.randn(n, 2, generator=g, dtype=torch.float64)
        noise = torch.randn(n, self.d, generator=g, dtype=torch.float64)
        return u @ self.W.T + self.b + self.sigma * noise


class GammaScaleGlobalNoise(nn.Module):
    """A positive local latent and a global one, with nothing but the model written::

    sigma ~ LogNormal(0, 1)                        (global noise scale)
    z_i ~ N(0, I_k),  r_i ~ Gamma(4, 4)            (local; r_i > 0 scales the loading)
    x_i ~ N(r_i W z_i + b, sigma^2 I_d)
    """

    def __init__(self, d=6, k=2):
        super().__init__()
        self.W = nn.Parameter(0.5 * torch.randn(d, k))
        self.b = nn.Parameter(torch.zeros(d))
        self.d, self.k = d, k

    def model(self, x):
        pyro.module("gamma_scale", self)
        sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.k), 1.0).to_event(1))
            r = pyro.sample("r", dist.Gamma(x.new_full((x.shape[0],), 4.0), 4.0))
            loc = r.unsqueeze(-1) * (z @ self.W.T) + self.b
            pyro.sample("x", dist.Normal(loc, sigma).to_event(1), obs=x)


def counting(cls):
    """A subclass of ``cls`` whose ``model`` counts its own calls in ``self.calls``: Python
    state the program changes itself while it runs."""

    class Counting(cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.calls = 0

        def model(self, x):
            self.calls += 1
            super().model(x)

    return Counting


def bounded_by_latent(x):
    """``z ~ Uniform(0, s)`` with ``s`` another latent: z's support differs per row and draw."""
    with pyro.plate("data", x.shape[0]):
        s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
        z = pyro.sample("z", dist.Uniform(0.0, s))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def bounded_by_data(x):
    """``z ~ Uniform(0, |x_i| + 1)``: z's support differs per row, from the data."""
    n = x.shape[0]
    with pyro.plate("data", n):
        z = pyro.sample("z", dist.Uniform(torch.zeros(n), x.abs() + 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def concentrated_gamma_poisson():
    """``(model, prior_guide, x, exact log p(x))``: a Gamma-Poisson row whose posterior is far
    narrower than the prior, which is also the guide (a collapsed-weight proposal), and one
    ordinary row."""
    import math

    a, b = 2.0, 1.0

    def model(x):
        with pyro.plate("data", x.shape[0]):
            lam = pyro.sample("lam", dist.Gamma(x.new_full((x.shape[0],), a), b))
            pyro.sample("x", dist.Poisson(lam.unsqueeze(-1).expand(x.shape)).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("lam", dist.Gamma(x.new_full((x.shape[0],), a), b))

    x = torch.tensor([[50.0, 49, 49, 50, 50], [3, 5, 3, 3, 0]], dtype=torch.float64)
    s, d = x.sum(-1), x.shape[1]
    exact = (
        -torch.lgamma(x + 1).sum(-1)
        + a * math.log(b)
        - math.lgamma(a)
        + torch.lgamma(a + s)
        - (a + s) * math.log(b + d)
    )
    return model, guide, x, exact
