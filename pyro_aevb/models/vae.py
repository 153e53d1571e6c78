r"""The variational auto-encoder as a Pyro model/guide pair (Section 3, Appendix C), composed of
an encoder network, a decoder network and a likelihood head.

Generative model, for each datapoint ``i`` in the plate ``"data"``::

    z_i ~ N(0, I_J)                              (site "z", event shape (J,))
    x_i ~ p_theta(x | z_i)                       (site "x", event shape = the data's)

with ``p_theta(x|z)`` given by the likelihood head (:mod:`pyro_aevb.nn.likelihoods`) on the
decoder's output. Recognition model (guide)::

    z_i ~ q_phi(z | x_i) = N(mu(x_i), diag sigma^2(x_i)),   [mu, log sigma^2] = encoder(x_i).

The networks are any ``nn.Module``: the paper's tanh MLPs (:func:`pyro_aevb.models.mlp_vae`,
the presets in :mod:`pyro_aevb.models.presets`), convolutional trunks, or the user's own. The
encoder maps ``x`` of shape ``(batch, *event_shape)`` to ``2 J`` numbers per row, the decoder
maps ``z`` of shape ``(..., J)`` to ``k * D`` numbers per row (``D`` = the number of data
values, ``k`` the head's parameters per value).

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

import math
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..distributions import lazy_factor
from ..nn.likelihoods import Likelihood, make_likelihood
from ..validation import check_data, check_num_data, check_positive_int

__all__ = ["VAE", "program_override"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
# VAE members that its Pyro programs never call: a subclass may override these and keep the
# hand-derived paths, which reproduce the programs' arithmetic.
_NOT_IN_PROGRAMS = frozenset(
    {
        "__init__",
        "config",
        "log_prior",
        "log_joint",
        "local_params",
        "local_guide",
        "decode",
        "sample",
        "reconstruct",
    }
)


def _event_shape(event_shape) -> tuple[int, ...]:
    shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
    if not shape or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(
            f"event_shape must be a positive int or a tuple of positive ints (the shape of one "
            f"datapoint, e.g. (784,) or (1, 28, 28)), got {event_shape!r}"
        )
    return shape


class VAE(nn.Module):
    """Variational auto-encoder: an encoder, a decoder and a likelihood head.

    Parameters
    ----------
    encoder : nn.Module
        ``x (batch, *event_shape) -> (batch, 2 J)``: ``[mu, log sigma^2]`` of ``q(z | x)``.
    decoder : nn.Module
        ``z (..., J) -> (..., k D)``: the likelihood head's parameters (any trailing shape
        with ``k D`` numbers per row, e.g. a convolution's ``(k C, H, W)``).
    likelihood : {"bernoulli", "gaussian"} or Likelihood
        The head turning the decoder output into ``p(x | z)``.
    latent_dim : int
        J = N_z, the size of ``z``.
    event_shape : int or tuple of int
        The shape of one datapoint: ``(D,)`` for flat rows, ``(C, H, W)`` for images.
    weight_prior_std : float or None
        Standard deviation ``s`` of the N(0, s^2 I) MAP prior on all parameters; ``None``
        turns the prior off (plain maximum likelihood).
    name : str
        Prefix under which ``pyro.module`` registers the parameters in Pyro's param store.
    validate : bool
        Check ``x`` (shape, dtype, finiteness, range) on every call of ``model``/``guide``.

    Attributes
    ----------
    config : dict or None
        How to rebuild this model (set by the presets of :mod:`pyro_aevb.models.presets`;
        ``None`` for a VAE composed by hand, which :func:`pyro_aevb.load_run` then needs
        passed in).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        likelihood: str | Likelihood,
        latent_dim: int,
        event_shape,
        *,
        weight_prior_std: float | None = 1.0,
        name: str = "vae",
        validate: bool = True,
    ):
        super().__init__()
        if not isinstance(encoder, nn.Module) or not isinstance(decoder, nn.Module):
            raise TypeError(
                f"encoder and decoder must be nn.Modules, got {type(encoder).__name__} and "
                f"{type(decoder).__name__}"
            )
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = make_likelihood(likelihood)
        self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        self.event_shape = _event_shape(event_shape)
        self.data_dim = math.prod(self.event_shape)
        if weight_prior_std is not None and not (
            isinstance(weight_prior_std, int | float) and 0 < weight_prior_std < math.inf
        ):
            raise ValueError(
                f"weight_prior_std must be a finite number > 0, or None, got {weight_prior_std!r}"
            )
        self.weight_prior_std = None if weight_prior_std is None else float(weight_prior_std)
        self.name = name
        self.validate = validate
        self.preset: tuple[str, dict[str, Any]] | None = None

    # ------------------------------------------------------------------ configuration
    @property
    def config(self) -> dict[str, Any] | None:
        """``{"preset": name, **options}`` for a preset-built VAE, else ``None``."""
        if self.preset is None:
            return None
        name, options = self.preset
        return {"preset": name, **options}

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def _device(self) -> torch.device:
        # tensors the programs create go where the parameters are (the model follows .to())
        return next(self.parameters()).device

    # ------------------------------------------------------------------ Pyro programs
    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        if self.validate:
            check_data(x, "x", self.event_shape, unit_interval=self.likelihood.unit_interval)
        # data of another floating dtype (float64 from numpy, say) is converted at the
        # boundary, so it meets the networks in their own dtype
        dtype = self._dtype
        return x if x.dtype == dtype else x.to(dtype)

    def _plate(self, batch_size: int, num_data: int | None) -> pyro.plate:
        num_data = check_num_data(num_data, batch_size)
        if num_data == batch_size:
            return pyro.plate("data", batch_size)
        # The rows are already the minibatch; the subsample indices only set the N/M scale.
        return pyro.plate("data", num_data, subsample=torch.arange(batch_size, device=self._device))

    def log_weight_prior(self) -> torch.Tensor:
        """``log N(theta; 0, s^2 I)`` up to a constant: ``-sum theta^2 / (2 s^2)``; scalar."""
        sq = sum(p.pow(2).sum() for p in self.parameters())
        return -0.5 * sq / self.weight_prior_std**2

    def decoder_output(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's output for ``z`` ``(..., J)``, flattened to ``(..., k D)``."""
        out = self.decoder(z)
        return out.reshape(*z.shape[:-1], -1)

    def likelihood_dist(self, z: torch.Tensor) -> dist.Distribution:
        """``p_theta(x | z)`` with batch shape ``z.shape[:-1]`` and the data's event shape."""
        return self.likelihood.dist(self.decoder_output(z), self.event_shape)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """``log N(z; 0, I)``, shape ``z.shape[:-1]``."""
        return -0.5 * (z * z).sum(-1) - self.latent_dim * _HALF_LOG_2PI

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``log p(z) + log p(x | z)`` per datapoint, shape ``z.shape[:-1]`` (no weight prior)."""
        return self.log_prior(z) + self.likelihood_dist(z).log_prob(x)

    def model(
        self,
        x: torch.Tensor | None = None,
        num_data: int | None = None,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """Generative model ``p(z) p(x|z)``; returns ``z`` of shape ``(batch, J)``.

        ``x``: ``(batch, *event_shape)`` observations, or ``None`` to generate ``batch_size``
        new datapoints (site ``"x"`` is then sampled). ``num_data``: the full data set size N.
        """
        pyro.module(self.name, self)
        if x is not None:
            x = self._check_x(x)
            batch_size = x.shape[0]
        else:
            batch_size = 1 if batch_size is None else check_positive_int(batch_size, "batch_size")
        if self.weight_prior_std is not None:
            lazy_factor("weight_prior", self.log_weight_prior, self._dtype, self._device)
        loc = torch.zeros(batch_size, self.latent_dim, dtype=self._dtype, device=self._device)
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
            raise ValueError("guide(x) needs observations x of shape (batch, *event_shape)")
        pyro.module(self.name, self)
        x = self._check_x(x)
        loc, scale = self.encode(x)
        with self._plate(x.shape[0], num_data):
            return pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # ------------------------------------------------------------------ refinement
    def local_params(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The guide's per-datapoint parameters ``{"loc": (B, J), "log_var": (B, J)}``
        (see :func:`pyro_aevb.infer.refine.refine`)."""
        loc, scale = self.encode(self._check_x(x))
        return {"loc": loc, "log_var": 2 * torch.log(scale)}

    def local_guide(self, params: dict[str, torch.Tensor]):
        """The guide with ``q(z | x_i) = N(loc_i, diag exp(log_var_i))`` given per row."""

        def guide(x, num_data=None, batch_size=None):
            x = self._check_x(x)
            loc, log_var = params["loc"], params["log_var"]
            with self._plate(x.shape[0], num_data):
                return pyro.sample("z", dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1))

        return guide

    # ------------------------------------------------------------------ conveniences
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, sigma)`` of ``q(z|x)``, each ``(batch, J)``."""
        out = self.encoder(x).reshape(x.shape[0], -1)
        if out.shape[-1] != 2 * self.latent_dim:
            raise ValueError(
                f"the encoder gives {out.shape[-1]} outputs per datapoint; a Gaussian q(z|x) "
                f"with latent_dim={self.latent_dim} needs 2 x {self.latent_dim}"
            )
        loc, log_var = out.chunk(2, dim=-1)
        return loc, torch.exp(0.5 * log_var)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean of ``p(x|z)``, shape ``z.shape[:-1] + event_shape``: the paper's Figure 4 and 5
        images."""
        return self.likelihood.mean(self.decoder_output(z), self.event_shape)

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Means of ``p(x|z)`` for ``z ~ N(0, I)``; shape ``(num_samples, *event_shape)``."""
        num_samples = check_positive_int(num_samples, "num_samples")
        # drawn where the generator lives (a CPU generator for a model on a GPU, say), then moved
        where = generator.device if generator is not None else self._device
        z = torch.randn(
            num_samples, self.latent_dim, generator=generator, dtype=self._dtype, device=where
        )
        return self.decode(z.to(self._device))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean: ``E[x | z = mu(x)]``, shape ``(batch, *event_shape)``."""
        x = self._check_x(x)
        return self.decode(self.encode(x)[0])


def program_override(vae: VAE) -> str | None:
    """``None`` if ``vae``'s Pyro programs are :class:`VAE`'s own, else what replaces them.

    The library's hand-derived paths (fast training, the direct IWAE, the hand-derived
    potential) reproduce the arithmetic of ``VAE.model`` and ``VAE.guide`` and of every
    method and property they call (``_check_x``, ``encode``, ``likelihood_dist``, ...). A
    subclass or an instance that replaces any member :class:`VAE` defines -- except the
    conveniences the programs never call (``decode``, ``sample``, ``reconstruct``, ...) --
    may compute something else, so those paths must not run it: deny by default, so that a
    member added to ``VAE`` later is covered too.
    """
    cls = type(vae)
    for name, member in vars(VAE).items():
        if name in _NOT_IN_PROGRAMS or name.startswith("__"):
            continue
        if not (callable(member) or isinstance(member, property | staticmethod | classmethod)):
            continue
        if getattr(cls, name, None) is not getattr(VAE, name):
            return f"{cls.__name__} overrides VAE.{name}"
        if name in vars(vae):
            return f"the instance replaces VAE.{name}"
    return None
