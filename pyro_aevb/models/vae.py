r"""The paper's variational auto-encoder as a Pyro model/guide pair (Section 3, Appendix C).

Generative model, for each datapoint ``i`` in the plate ``"data"``::

    z_i ~ N(0, I_J)                              (site "z", event shape (J,))
    x_i ~ p_theta(x | z_i)                       (site "x", event shape (D,))

with ``p_theta(x|z)`` a Bernoulli MLP (binary or [0, 1] data) or a Gaussian MLP (real data).
Recognition model (guide)::

    z_i ~ q_phi(z | x_i) = N(mu(x_i), diag sigma^2(x_i)).

**Minibatches (eq. 8).** ``model(x, num_data=N)`` and ``guide(x, num_data=N)`` on a minibatch
of ``M`` rows scale every per-datapoint term by ``N / M`` through a subsampled ``pyro.plate``,
so ``Trace_ELBO`` on the minibatch is an unbiased estimate of the full-data bound
``sum_{i=1}^N L(theta, phi; x_i)``.

**MAP weight prior.** With ``weight_prior_std = s`` (the paper's ``s = 1``) the model adds,
outside the data plate and unscaled, the factor ``"weight_prior"``::

    log p(theta, phi) = -1/(2 s^2) * sum_k theta_k^2     (+ a constant we drop)

over every parameter of the encoder and decoder (weights and biases). The SVI loss on a
minibatch is then ``-(N/M) sum_{i in batch} L_i - log p(theta, phi)``, an unbiased estimate
of ``-[sum_i L_i + log p(theta, phi)]``; divided by ``N`` it is the per-datapoint objective
``-(1/N) sum_i L_i - log p(theta, phi) / N``, i.e. weight decay of strength ``1 / (N s^2)``
per datapoint. The per-datapoint bound :meth:`VAE.elbo` never includes the prior term.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..distributions import FractionalBernoulli, lazy_factor
from ..nets import (
    BernoulliMLPDecoder,
    GaussianMLPDecoder,
    GaussianMLPEncoder,
    as_hidden_dims,
    init_normal_,
)
from ..validation import check_choice, check_data, check_num_data, check_positive_int

__all__ = ["VAE", "paper_mnist_vae", "paper_frey_face_vae"]

LIKELIHOODS = ("bernoulli", "gaussian")


class VAE(nn.Module):
    """Variational auto-encoder with an MLP encoder and a Bernoulli or Gaussian MLP decoder.

    Parameters
    ----------
    data_dim : int
        D, the size of one flattened datapoint.
    latent_dim : int
        J = N_z, the size of ``z``.
    hidden_dims : int or sequence of int
        Hidden tanh layer sizes of both encoder and decoder (the paper: one layer, 500 for
        MNIST and 200 for Frey Face).
    likelihood : {"bernoulli", "gaussian"}
        Decoder family. Bernoulli requires data in [0, 1].
    sigmoid_mean : bool
        Gaussian decoder only: squash the mean through a sigmoid (the paper's Frey Face setup).
    weight_prior_std : float or None
        Standard deviation ``s`` of the N(0, s^2 I) MAP prior on all parameters; ``None``
        turns the prior off (plain maximum likelihood).
    init_std : float or None
        Initialise every parameter from N(0, init_std^2); the default 0.1 is the paper's
        N(0, 0.01) (variance 0.01). ``None`` keeps PyTorch's default.
    name : str
        Prefix under which ``pyro.module`` registers the parameters in Pyro's param store.
    validate : bool
        Check ``x`` (shape, dtype, finiteness, range) on every call of ``model``/``guide``.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden_dims: int | Sequence[int] = 500,
        likelihood: str = "bernoulli",
        sigmoid_mean: bool = False,
        weight_prior_std: float | None = 1.0,
        init_std: float | None = 0.1,
        name: str = "vae",
        validate: bool = True,
    ):
        super().__init__()
        check_choice(likelihood, "likelihood", LIKELIHOODS)
        self.data_dim = check_positive_int(data_dim, "data_dim")
        self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        self.hidden_dims = as_hidden_dims(hidden_dims)
        self.likelihood = likelihood
        self.sigmoid_mean = bool(sigmoid_mean)
        if sigmoid_mean and likelihood != "gaussian":
            raise ValueError("sigmoid_mean=True applies to likelihood='gaussian' only")
        if weight_prior_std is not None and not weight_prior_std > 0:
            raise ValueError(f"weight_prior_std must be > 0 or None, got {weight_prior_std!r}")
        self.weight_prior_std = None if weight_prior_std is None else float(weight_prior_std)
        self.init_std = None if init_std is None else float(init_std)
        self.name = name
        self.validate = validate

        self.encoder = GaussianMLPEncoder(data_dim, self.hidden_dims, latent_dim)
        if likelihood == "bernoulli":
            self.decoder = BernoulliMLPDecoder(latent_dim, self.hidden_dims, data_dim)
        else:
            self.decoder = GaussianMLPDecoder(latent_dim, self.hidden_dims, data_dim, sigmoid_mean)
        if init_std is not None:
            init_normal_(self, init_std)

    # ------------------------------------------------------------------ configuration
    @property
    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments; ``VAE(**vae.config)`` rebuilds the net."""
        return {
            "data_dim": self.data_dim,
            "latent_dim": self.latent_dim,
            "hidden_dims": list(self.hidden_dims),
            "likelihood": self.likelihood,
            "sigmoid_mean": self.sigmoid_mean,
            "weight_prior_std": self.weight_prior_std,
            "init_std": self.init_std,
            "name": self.name,
        }

    # ------------------------------------------------------------------ Pyro programs
    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        if self.validate:
            check_data(x, "x", self.data_dim, unit_interval=self.likelihood == "bernoulli")
        return x

    def _plate(self, batch_size: int, num_data: int | None) -> pyro.plate:
        num_data = check_num_data(num_data, batch_size)
        if num_data == batch_size:
            return pyro.plate("data", batch_size)
        # The rows are already the minibatch; the subsample indices only set the N/M scale.
        return pyro.plate("data", num_data, subsample=torch.arange(batch_size))

    def log_weight_prior(self) -> torch.Tensor:
        """``log N(theta; 0, s^2 I)`` up to a constant: ``-sum theta^2 / (2 s^2)``; scalar."""
        sq = sum(p.pow(2).sum() for p in self.parameters())
        return -0.5 * sq / self.weight_prior_std**2

    def likelihood_dist(self, z: torch.Tensor) -> dist.Distribution:
        """``p_theta(x | z)`` with batch shape ``z.shape[:-1]`` and event shape ``(D,)``."""
        if self.likelihood == "bernoulli":
            return FractionalBernoulli(logits=self.decoder(z)).to_event(1)
        mean, log_var = self.decoder(z)
        return dist.Normal(mean, torch.exp(0.5 * log_var)).to_event(1)

    def model(
        self,
        x: torch.Tensor | None = None,
        num_data: int | None = None,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """Generative model ``p(z) p(x|z)``; returns ``z`` of shape ``(batch, J)``.

        ``x``: ``(batch, D)`` observations, or ``None`` to generate ``batch_size`` new
        datapoints (site ``"x"`` is then sampled). ``num_data``: the full data set size N.
        """
        pyro.module(self.name, self)
        if x is not None:
            x = self._check_x(x)
            batch_size = x.shape[0]
        else:
            batch_size = 1 if batch_size is None else check_positive_int(batch_size, "batch_size")
        if self.weight_prior_std is not None:
            lazy_factor("weight_prior", self.log_weight_prior, self._dtype)
        loc = torch.zeros(batch_size, self.latent_dim, dtype=self._dtype)
        with self._plate(batch_size, num_data):
            z = pyro.sample("z", dist.Normal(loc, torch.ones_like(loc)).to_event(1))
            pyro.sample("x", self.likelihood_dist(z), obs=x)
        return z

    def guide(
        self,
        x: torch.Tensor,
        num_data: int | None = None,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """Recognition model ``q_phi(z|x)``; returns ``z`` of shape ``(batch, J)``.

        ``batch_size`` is accepted (and ignored) so that model and guide share a signature.
        """
        if x is None:
            raise ValueError("guide(x) needs observations x of shape (batch, data_dim)")
        pyro.module(self.name, self)
        x = self._check_x(x)
        loc, scale = self.encode(x)
        with self._plate(x.shape[0], num_data):
            return pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # ------------------------------------------------------------------ conveniences
    @property
    def _dtype(self) -> torch.dtype:
        return self.encoder.out.weight.dtype

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, sigma)`` of ``q(z|x)``, each ``(batch, J)``."""
        loc, log_var = self.encoder(x)
        return loc, torch.exp(0.5 * log_var)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean of ``p(x|z)``, shape ``z.shape[:-1] + (D,)``: the paper's Figure 4 and 5 images."""
        return self.decoder.mean(z)

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Means of ``p(x|z)`` for ``z ~ N(0, I)``; shape ``(num_samples, D)``."""
        num_samples = check_positive_int(num_samples, "num_samples")
        z = torch.randn(num_samples, self.latent_dim, generator=generator, dtype=self._dtype)
        return self.decode(z)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean: ``E[x | z = mu(x)]``, shape ``(batch, D)``."""
        x = self._check_x(x)
        return self.decode(self.encode(x)[0])

    def elbo(self, x: torch.Tensor, estimator: str = "B", num_particles: int = 1) -> torch.Tensor:
        """Per-datapoint lower bound ``L(theta, phi; x_i)`` (no weight prior); ``(batch,)``.

        ``estimator="B"`` uses the analytic KL (eq. 7) and ``"A"`` the generic estimator
        (eq. 6), each averaged over ``num_particles`` draws of ``z``. Gradients flow; wrap in
        ``torch.no_grad()`` for evaluation, or use :func:`pyro_aevb.evaluate_bound` for a
        whole data set in batches (on the fast path).
        """
        from ..infer.per_datapoint import elbo_per_datapoint

        return elbo_per_datapoint(
            self.model, self.guide, x, estimator=estimator, num_particles=num_particles
        )


def paper_mnist_vae(latent_dim: int = 20, hidden_dims: int = 500, **kwargs) -> VAE:
    """The paper's MNIST model: 784-500-J Bernoulli VAE, N(0, 0.01) init, N(0, I) weight prior."""
    return VAE(28 * 28, latent_dim, hidden_dims, likelihood="bernoulli", **kwargs)


def paper_frey_face_vae(latent_dim: int = 2, hidden_dims: int = 200, **kwargs) -> VAE:
    """The paper's Frey Face model: 560-200-J Gaussian VAE with a sigmoid mean."""
    kwargs.setdefault("sigmoid_mean", True)
    return VAE(28 * 20, latent_dim, hidden_dims, likelihood="gaussian", **kwargs)
