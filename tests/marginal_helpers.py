"""Models shared by the tests of ``pyro_aevb.mcmc`` and ``pyro_aevb.evaluate``.

* :class:`PPCA`: probabilistic PCA, a linear-Gaussian latent-variable model whose marginal
  ``log p(x) = log N(x; b, W W^T + sigma^2 I)`` and posterior are exact, with a global factor
  outside the data plate (like the VAE's weight prior) that must not enter ``log p(x)``.
* :func:`trained_mnist_vae`: a small VAE (Nz = 3, 100 hidden units) trained on real MNIST,
  cached for the session (imported once by both test directories' conftests).
"""

from __future__ import annotations

import functools
import os

import pyro
import pyro.distributions as dist
import pytest
import torch

GLOBAL_FACTOR = -123.0


class PPCA:
    """``z ~ N(0, I_k)``, ``x | z ~ N(W z + b, sigma^2 I_d)`` inside ``pyro.plate("data")``."""

    def __init__(self, d=5, k=2, sigma=0.5, seed=0, dtype=torch.float64):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(d, k, generator=g, dtype=dtype)
        self.b = torch.randn(d, generator=g, dtype=dtype)
        self.sigma, self.d, self.k, self.dtype = sigma, d, k, dtype

    def model(self, x):
        batch = x.shape[0]
        # a global, non-latent term: not part of any datapoint's log p(x_i)
        pyro.factor("global_const", torch.tensor(GLOBAL_FACTOR, dtype=self.dtype))
        with pyro.plate("data", batch):
            loc = torch.zeros(batch, self.k, dtype=self.dtype)
            z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.sigma).to_event(1), obs=x)

    def posterior(self, x):
        """Exact posterior ``N(mean (B, k), cov (k, k))``."""
        prec = torch.eye(self.k, dtype=self.dtype) + self.W.T @ self.W / self.sigma**2
        cov = torch.linalg.inv(prec)
        mean = (x - self.b) @ self.W @ cov / self.sigma**2
        return mean, cov

    def log_marginal(self, x):
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(self.d, dtype=self.dtype)
        return dist.MultivariateNormal(self.b, cov).log_prob(x)

    def guide_dist(self, x, shift=0.1, scale=0.9):
        """An inexact diagonal Gaussian encoder, like a trained one: its mean is off by about
        half a posterior standard deviation, it ignores the posterior correlation, and it is
        narrower than the posterior (mode-seeking)."""
        mean, cov = self.posterior(x)
        return dist.Normal(mean + shift, scale * cov.diagonal().sqrt()).to_event(1)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.guide_dist(x))

    def exact_guide(self, x):
        mean, cov = self.posterior(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(mean, cov))

    def elbo(self, x):
        """Exact ELBO of :meth:`guide`: ``log p(x) - KL(q || posterior)``."""
        mean, cov = self.posterior(x)
        q = self.guide_dist(x)
        q_mvn = dist.MultivariateNormal(q.base_dist.loc, torch.diag_embed(q.base_dist.scale**2))
        post = dist.MultivariateNormal(mean, cov)
        return self.log_marginal(x) - torch.distributions.kl_divergence(q_mvn, post)

    def simulate(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.k, generator=g, dtype=self.dtype)
        noise = torch.randn(n, self.d, generator=g, dtype=self.dtype)
        return z @ self.W.T + self.b + self.sigma * noise


@functools.lru_cache(maxsize=1)
def mnist():
    """The real MNIST data set (needs ``PYRO_AEVB_DATA``)."""
    from pyro_aevb.data import load_dataset

    return load_dataset("mnist")


@functools.lru_cache(maxsize=1)
def trained_mnist_vae(num_samples: int = 100_000):
    """A VAE with Nz = 3 and 100 hidden units trained on ``num_samples`` MNIST images."""
    from pyro_aevb import fit, mlp_vae

    vae = mlp_vae(784, 3, 100, name="vae_marginal_tests")
    fit(
        vae,
        mnist().train,
        num_samples=num_samples,
        seed=0,
        progress=False,
        eval_every=num_samples,
        eval_size=100,
    )
    vae.eval()
    return vae


requires_data = pytest.mark.skipif(
    not os.environ.get("PYRO_AEVB_DATA"),
    reason="real-MNIST test: set PYRO_AEVB_DATA to a directory holding mnist/ "
    "(e.g. ../shared/data)",
)


def bound_objective(objective, module, num_data, x=None, fast="auto", guide=None, plate="data"):
    """``objective`` bound to a model object's programs for a data set of ``num_data`` rows
    (set up on the minibatch ``x`` if given), as the trainer binds it."""
    from pyro_aevb.poutine import TrainingProgram
    from pyro_aevb.train.trainer import resolve_programs

    model, guide_fn, _ = resolve_programs(module, guide)
    program = TrainingProgram(model, guide_fn, num_data=num_data, plate_name=plate)
    bound = objective.bind(program, fast)
    if x is not None:
        bound.setup(x)
    return bound
