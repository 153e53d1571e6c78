"""Encoder and decoder networks of the paper (Appendix C) as plain ``torch.nn`` modules.

All networks are tanh MLPs: ``h_{k+1} = tanh(W_k h_k + b_k)`` followed by one linear output
layer. The output layer of each network is fused: the encoder's single ``Linear(H, 2J)`` yields
``(mu, log sigma^2)`` and the Gaussian decoder's ``Linear(H, 2D)`` yields
``(mu_x, log sigma_x^2)``; this is the paper's pair of heads ``W2 h + b2``, ``W3 h + b3`` stacked
into one matrix, so one matmul serves both.

The modules hold parameters only; the Pyro programs that use them live in
:mod:`pyro_aevb.models`. Layers are kept as ``hidden`` (a ``ModuleList`` of ``Linear``) and
``out`` (a ``Linear``) so that :mod:`pyro_aevb.infer.fast_vae` can run them without autograd.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "GaussianMLPEncoder",
    "BernoulliMLPDecoder",
    "GaussianMLPDecoder",
    "init_normal_",
    "as_hidden_dims",
]


def as_hidden_dims(hidden_dims: int | Sequence[int]) -> tuple[int, ...]:
    """Normalise ``hidden_dims`` (an int or a sequence of positive ints) to a tuple."""
    dims = (hidden_dims,) if isinstance(hidden_dims, int) else tuple(hidden_dims)
    if not dims or not all(isinstance(h, int) and h > 0 for h in dims):
        raise ValueError(
            f"hidden_dims must be a positive int or a non-empty sequence of positive ints, "
            f"got {hidden_dims!r}"
        )
    return dims


def _check_dim(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def init_normal_(module: nn.Module, std: float) -> nn.Module:
    """Initialise every parameter of ``module`` (weights and biases) from ``N(0, std^2)``.

    The paper initialises all parameters "by random sampling from N(0, 0.01)". In its notation
    ``N(mu, sigma^2)`` the second argument is the variance, so the paper's setting is
    ``std = 0.1`` (the default of :class:`~pyro_aevb.models.VAE`). Reading 0.01 as the standard
    deviation instead trains measurably slower: with the benchmark's settings the MNIST test
    bound after 10^6 samples is about -120 nats instead of -116.
    """
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module


class _TanhMLP(nn.Module):
    """``in_dim -> hidden_dims (tanh) -> out_dim (linear)``."""

    activation = "tanh"

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], out_dim: int):
        super().__init__()
        dims = (in_dim, *hidden_dims)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(dims[-1], out_dim)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        h = inputs
        for layer in self.hidden:
            h = torch.tanh(layer(h))
        return self.out(h)


class GaussianMLPEncoder(_TanhMLP):
    """Recognition model ``q_phi(z|x) = N(mu, diag sigma^2)`` (Appendix C.2).

    ``forward(x)`` maps ``x`` of shape ``(batch, data_dim)`` to ``(loc, log_var)``, each of shape
    ``(batch, latent_dim)``, with ``sigma = exp(log_var / 2)``.
    """

    def __init__(self, data_dim: int, hidden_dims: int | Sequence[int], latent_dim: int):
        self.data_dim = _check_dim("data_dim", data_dim)
        self.latent_dim = _check_dim("latent_dim", latent_dim)
        super().__init__(data_dim, as_hidden_dims(hidden_dims), 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_var = super().forward(x).chunk(2, dim=-1)
        return loc, log_var


class BernoulliMLPDecoder(_TanhMLP):
    """Bernoulli MLP decoder (Appendix C.1): ``y = sigmoid(W5 tanh(W4 z + b4) + b5)``.

    ``forward(z)`` maps ``(batch, latent_dim)`` to the logits of ``y``, shape
    ``(batch, data_dim)``; :meth:`mean` returns ``y`` itself.
    """

    likelihood = "bernoulli"

    def __init__(self, latent_dim: int, hidden_dims: int | Sequence[int], data_dim: int):
        self.data_dim = _check_dim("data_dim", data_dim)
        self.latent_dim = _check_dim("latent_dim", latent_dim)
        super().__init__(latent_dim, as_hidden_dims(hidden_dims), data_dim)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(z))


class GaussianMLPDecoder(_TanhMLP):
    """Gaussian MLP decoder (Appendix C.2): ``p(x|z) = N(mu_x, diag sigma_x^2)``.

    ``forward(z)`` maps ``(batch, latent_dim)`` to ``(mean, log_var)``, each
    ``(batch, data_dim)``. With ``sigmoid_mean=True`` (the paper's Frey Face setting) the mean
    is squashed into (0, 1) by a sigmoid.
    """

    likelihood = "gaussian"

    def __init__(
        self,
        latent_dim: int,
        hidden_dims: int | Sequence[int],
        data_dim: int,
        sigmoid_mean: bool = False,
    ):
        self.data_dim = _check_dim("data_dim", data_dim)
        self.latent_dim = _check_dim("latent_dim", latent_dim)
        self.sigmoid_mean = bool(sigmoid_mean)
        super().__init__(latent_dim, as_hidden_dims(hidden_dims), 2 * data_dim)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = super().forward(z).chunk(2, dim=-1)
        if self.sigmoid_mean:
            mean = torch.sigmoid(mean)
        return mean, log_var

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        return self(z)[0]
