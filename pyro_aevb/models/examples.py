"""Pyro's example VAE (``examples/vae/vae.py`` in Pyro's repository), written the ordinary
Pyro way: a ``model(x)`` and a hand-written ``guide(x)``, networks registered with
``pyro.module``, a plate sized from ``x``, no pyro-aevb keyword anywhere.

It is the reference user model of the benchmarks (the autoguide against its hand-written
guide, the compiled path against stock Pyro and a hand-written PyTorch loop of the same
networks) and of the tests of user-model support::

    p(z) = N(0, I_J),   p(x | z) = Bernoulli(sigmoid(W2 softplus(W1 z + b1) + b2))
    q(z | x) = N(mu(x), diag sigma(x)^2),  [mu, log sigma] from one softplus hidden layer
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PyroExampleVAE", "ExampleEncoder", "ExampleDecoder"]


class ExampleEncoder(nn.Module):
    """``x (batch, ...) -> (mu, sigma)``, each ``(batch, z_dim)``: one softplus layer."""

    def __init__(self, z_dim: int, hidden_dim: int, data_dim: int = 784):
        super().__init__()
        self.fc1 = nn.Linear(data_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.data_dim = data_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = F.softplus(self.fc1(x.reshape(-1, self.data_dim)))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class ExampleDecoder(nn.Module):
    """``z (batch, z_dim) -> `` Bernoulli means ``(batch, data_dim)``."""

    def __init__(self, z_dim: int, hidden_dim: int, data_dim: int = 784):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, data_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc21(F.softplus(self.fc1(z))))


class PyroExampleVAE(nn.Module):
    """Pyro's example VAE: ``model(x)`` and ``guide(x)`` for rows ``x`` ``(batch, data_dim)``
    (or images that flatten to it).

    Parameters
    ----------
    z_dim, hidden_dim, data_dim : int
        Latent size, hidden units of each network, pixels per row (Pyro's 50 / 400 / 784).
    plate : str
        The data plate's name.
    prefix : str
        Prepended to the ``pyro.module`` names ``"decoder"`` and ``"encoder"`` (several
        instances in one param store).
    """

    def __init__(
        self,
        z_dim: int = 50,
        hidden_dim: int = 400,
        data_dim: int = 784,
        plate: str = "data",
        prefix: str = "",
    ):
        super().__init__()
        self.encoder = ExampleEncoder(z_dim, hidden_dim, data_dim)
        self.decoder = ExampleDecoder(z_dim, hidden_dim, data_dim)
        self.z_dim, self.data_dim, self.plate, self.prefix = z_dim, data_dim, plate, prefix

    def model(self, x: torch.Tensor) -> torch.Tensor:
        pyro.module(self.prefix + "decoder", self.decoder)
        with pyro.plate(self.plate, x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample(
                "obs",
                dist.Bernoulli(loc_img, validate_args=False).to_event(1),
                obs=x.reshape(-1, self.data_dim),
            )
            return loc_img

    def guide(self, x: torch.Tensor) -> None:
        pyro.module(self.prefix + "encoder", self.encoder)
        with pyro.plate(self.plate, x.shape[0]):
            z_loc, z_scale = self.encode(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The guide's ``(mu, sigma)`` for rows ``x``."""
        return self.encoder(x)
