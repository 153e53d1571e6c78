r"""The layout of a model's local latents: one flat unconstrained vector per datapoint.

For a model whose per-datapoint latents ``z_i`` live inside ``pyro.plate(plate_name)``, every
latent site is mapped to its unconstrained coordinates ``u = T^{-1}(z)`` with
``T = biject_to(site support)`` (the transform Pyro's HMC uses), and all sites of one
datapoint are concatenated into one row::

    z = T(u),      log p(x_i, u_i) = log p(x_i, z_i = T(u_i)) + log |det dT/du (u_i)|

Several latent sites of any event shape become one ``(n, D)`` matrix, datapoint-major: row
``r`` holds every unconstrained latent of one row of the data plate. This is what HMC, AIS,
MCEM's chains and the encoder autoguides work in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pyro.distributions.util import sum_rightmost
from torch.distributions import biject_to
from torch.distributions.transforms import Transform

from .plates import ProgramContractError, global_latent_error, latent_sites, plate_frame

__all__ = ["LatentSite", "LatentLayout"]


@dataclass(frozen=True)
class LatentSite:
    """How one latent sample site maps to columns of the flat unconstrained position.

    Attributes
    ----------
    name : str
        Site name.
    transform : torch.distributions.transforms.Transform
        ``biject_to(support)``: unconstrained -> constrained.
    unconstrained_shape : tuple of int
        Shape of one datapoint's unconstrained block (the data-plate dimension removed), e.g.
        ``(J,)`` for the VAE's ``"z"``.
    shape : tuple of int
        Shape of one datapoint's constrained value (the data-plate dimension removed).
    plate_dim : int
        Negative position of the data-plate dimension in the site's value tensor (batch dims
        followed by event dims).
    event_dim : int
        Event dimension of the site's distribution.
    offset, size : int
        Columns ``offset : offset + size`` of the flat position hold this site.
    u_plate_dim : int
        Negative position of the data-plate dimension in the unconstrained value (differs
        from ``plate_dim`` when the transform changes the number of event dimensions, e.g.
        a Cholesky factor of a correlation matrix ``(d, d)`` <- ``(d (d - 1) / 2,)``).
    """

    name: str
    transform: Transform
    unconstrained_shape: tuple[int, ...]
    shape: tuple[int, ...]
    plate_dim: int
    event_dim: int
    offset: int
    size: int
    u_plate_dim: int | None = None

    def __post_init__(self):
        if self.u_plate_dim is None:
            object.__setattr__(self, "u_plate_dim", self.plate_dim)


class LatentLayout:
    """Flatten/unflatten the local latent sites of a model to an ``(n, D)`` matrix.

    Build it with :meth:`from_trace` from a trace of the model; ``n`` (the number of rows of
    the data plate: datapoints, or chains times datapoints) may differ between calls.
    """

    def __init__(self, sites: list[LatentSite], plate_name: str):
        self.sites = tuple(sites)
        self.plate_name = plate_name
        self.dim = sum(s.size for s in sites)
        self.names = tuple(s.name for s in sites)

    def __repr__(self) -> str:
        parts = ", ".join(f"{s.name}: {s.shape} -> {s.size}" for s in self.sites)
        return f"LatentLayout({parts}; D={self.dim}, plate={self.plate_name!r})"

    @classmethod
    def from_trace(cls, trace, plate_name: str = "data") -> LatentLayout:
        """The layout of the latent sites of ``trace``, which must all be in ``plate_name``.

        Raises ``ValueError`` naming a latent site outside the data plate (a global latent:
        condition it first, see :class:`~pyro_aevb.poutine.PerDatapointProgram`), a latent
        without a data-plate dimension, or if the model has no latent site.
        """
        sites = []
        offset = 0
        for name, site in latent_sites(trace).items():
            frame = plate_frame(site, plate_name)
            if frame is None:
                raise global_latent_error(name, plate_name, "a per-datapoint posterior")
            fn = site["fn"]
            if fn.support.is_discrete:
                raise ProgramContractError(
                    f"latent site '{name}' is discrete ({type(fn).__name__}): HMC, AIS and the "
                    f"unconstrained layout need continuous latents; enumerate it out in the "
                    f"model, or use estimators that only sample the guide (elbo, iwae)"
                )
            transform = biject_to(fn.support)
            value = site["value"]
            event_dim = fn.event_dim
            plate_dim = frame.dim - event_dim
            if value.dim() < -plate_dim or value.shape[plate_dim] != frame.size:
                raise ValueError(
                    f"latent site '{name}' has value shape {tuple(value.shape)}, which has no "
                    f"dimension of size {frame.size} for the plate '{plate_name}' (dim "
                    f"{frame.dim}, event dims {event_dim}); local latents must be expanded "
                    f"along the data plate"
                )
            u_shape = list(transform.inverse_shape(value.shape))
            # the batch dims are the same in both spaces; the event dims may differ in number
            u_plate_dim = frame.dim - (event_dim + len(u_shape) - value.dim())
            del u_shape[len(u_shape) + u_plate_dim]
            z_shape = list(value.shape)
            del z_shape[len(z_shape) + plate_dim]
            size = math.prod(u_shape)
            sites.append(
                LatentSite(
                    name,
                    transform,
                    tuple(u_shape),
                    tuple(z_shape),
                    plate_dim,
                    event_dim,
                    offset,
                    size,
                    u_plate_dim,
                )
            )
            offset += size
        if not sites:
            raise ValueError(
                "the model has no local latent sample site, so there is no posterior to sample "
                "and log p(x) is just the log-likelihood"
            )
        return cls(sites, plate_name)

    def flatten(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Constrained site values -> unconstrained flat position, shape ``(n, D)``."""
        blocks = []
        for s in self.sites:
            u = s.transform.inv(values[s.name])
            u = u.movedim(s.u_plate_dim, 0)
            blocks.append(u.reshape(u.shape[0], -1))
        return torch.cat(blocks, dim=-1)

    def unflatten(
        self, position: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Flat unconstrained ``(n, D)`` -> (constrained values, per-site ``log|det J|``).

        The log-Jacobians have the site's batch shape (event dimensions summed out), ready to
        be added to the site's ``log_prob``.
        """
        values, log_jac = {}, {}
        n = position.shape[0]
        for s in self.sites:
            u = position[:, s.offset : s.offset + s.size].reshape((n,) + s.unconstrained_shape)
            u = u.movedim(0, s.u_plate_dim)
            z = s.transform(u)
            ladj = s.transform.log_abs_det_jacobian(u, z)
            # the transform may act on fewer event dims than the site has: sum the rest
            ladj = sum_rightmost(ladj, s.event_dim - s.transform.codomain.event_dim)
            values[s.name] = z
            log_jac[s.name] = ladj
        return values, log_jac

    def unflatten_constrained(self, position: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat unconstrained ``(n, D)`` -> constrained site values (no Jacobian)."""
        return self.unflatten(position)[0]
