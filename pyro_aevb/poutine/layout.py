r"""The layout of a model's local latents: one flat unconstrained vector per datapoint.

For a model whose per-datapoint latents ``z_i`` live inside ``pyro.plate(plate_name)``, every
latent site is mapped to its unconstrained coordinates ``u = T^{-1}(z)`` with
``T = biject_to(site support)`` (the transform Pyro's HMC uses), and all sites of one
datapoint are concatenated into one row::

    z = T(u),      log p(x_i, u_i) = log p(x_i, z_i = T(u_i)) + log |det dT/du (u_i)|

Several latent sites of any event shape become one ``(n, D)`` matrix, datapoint-major: row
``r`` holds every unconstrained latent of one row of the data plate. This is what HMC, AIS,
MCEM's chains and the encoder autoguides work in.

**Supports that depend on values.** A support whose bounds are tensors (``Uniform(0, s)``
with ``s`` another latent, ``Uniform(0, x_i)`` with bounds from the data) has a transform
that is known only when the model reaches the site: such a site is marked
:attr:`LatentSite.runtime`, and the potentials take its transform from the site's own
distribution as the model runs (:class:`~pyro_aevb.poutine.unconstrained.UnconstrainedCondition`).
Outside a model run (:meth:`LatentLayout.flatten`, :meth:`LatentLayout.unflatten`) a
runtime site needs its support given, unless all its bounds are one number
(:attr:`LatentSite.fixed`, e.g. ``Uniform(torch.zeros(n), torch.ones(n))``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from pyro.distributions.util import sum_rightmost
from torch.distributions import biject_to
from torch.distributions.constraints import Constraint
from torch.distributions.transforms import Transform

from .plates import ProgramContractError, global_latent_error, latent_sites, plate_frame

__all__ = [
    "LatentSite",
    "LatentLayout",
    "fixed_support",
    "same_support",
    "support_has_tensors",
    "support_tensors",
]


def support_tensors(constraint: Constraint):
    """The tensor parameters of ``constraint`` (bounds), through nested constraints
    (``independent(interval(a, b), 1)``)."""
    for value in vars(constraint).values():
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, Constraint):
            yield from support_tensors(value)


def support_has_tensors(constraint: Constraint) -> bool:
    """Whether ``constraint`` has tensor parameters: its transform may differ per row, per
    evaluation (bounds from other latents, the data, parameters)."""
    return any(True for _ in support_tensors(constraint))


def same_support(a: Constraint, b: Constraint) -> bool:
    """Whether two supports of one site (from two runs) are of one type with equal bounds."""
    if type(a) is not type(b):
        return False
    ta, tb = list(support_tensors(a)), list(support_tensors(b))
    return len(ta) == len(tb) and all(
        x.shape == y.shape and torch.equal(x.detach(), y.detach()) for x, y in zip(ta, tb)
    )


def fixed_support(constraint: Constraint, plate_dim: int | None = None) -> Constraint | None:
    """``constraint`` with bounds that hold for every row of the data plate, or ``None`` if
    some tensor bound differs between rows (bounds per row).

    A bound that holds one value becomes that value (a 0-dim tensor). With ``plate_dim`` (the
    negative position of the data plate in the site's value), a bound that differs only
    along other dimensions (per-coordinate bounds, the same for every row, e.g.
    ``Uniform(torch.tensor([0., -1.]), torch.tensor([1., 1.]))``) keeps them, with its
    data-plate dimension, if it has one, cut to size 1. Either way the transform built from
    the result fits any number of rows: ``Uniform(torch.zeros(n), torch.ones(n))`` has
    bounds of shape ``(n,)``, whose transform, built once, would not fit another batch.
    """
    found = list(support_tensors(constraint))
    if not found:
        return constraint
    if all(_one_value(t) for t in found):
        return _with_bounds(constraint, lambda t: t.detach().reshape(-1)[0].clone())
    if plate_dim is None or not all(_same_per_row(t, plate_dim) for t in found):
        return None
    return _with_bounds(constraint, lambda t: _first_row(t, plate_dim).detach().clone())


def _one_value(t: torch.Tensor) -> bool:
    flat = t.detach().reshape(-1)
    return flat.numel() > 0 and bool((flat == flat[0]).all())


def _first_row(t: torch.Tensor, plate_dim: int) -> torch.Tensor:
    """``t`` with its data-plate dimension (if it has one) cut to its first entry, kept."""
    return t if t.dim() < -plate_dim else t.narrow(plate_dim, 0, 1)


def _same_per_row(t: torch.Tensor, plate_dim: int) -> bool:
    return t.numel() > 0 and bool((t.detach() == _first_row(t.detach(), plate_dim)).all())


def _with_bounds(constraint: Constraint, bound) -> Constraint:
    out = copy.copy(constraint)  # shallow: bounds may be non-leaf tensors (no deepcopy)
    for key, value in vars(constraint).items():
        if isinstance(value, torch.Tensor):
            setattr(out, key, bound(value))
        elif isinstance(value, Constraint):
            setattr(out, key, _with_bounds(value, bound))
    return out


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
    runtime : bool
        The support has tensor bounds, so the potentials take the transform from the site's
        distribution as the model runs; ``transform`` is then the first trace's.
    fixed : bool
        ``transform`` holds for every row and evaluation: false for a runtime site whose
        bounds differed between the rows of the first trace (``Uniform(0, s)``).
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
    runtime: bool = False
    fixed: bool = True

    def __post_init__(self):
        if self.u_plate_dim is None:
            object.__setattr__(self, "u_plate_dim", self.plate_dim)

    def block(self, position: torch.Tensor) -> torch.Tensor:
        """This site's columns of ``position`` ``(n, D)``, as its unconstrained value (data
        plate at :attr:`u_plate_dim`)."""
        n = position.shape[0]
        u = position[:, self.offset : self.offset + self.size]
        return u.reshape((n,) + self.unconstrained_shape).movedim(0, self.u_plate_dim)

    def constrain(
        self, u: torch.Tensor, transform: Transform | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z = T(u), log|det dT/du|)`` with the site's batch shape (event dims summed).

        ``transform``: the one the site has where it runs (a runtime site); default
        :attr:`transform`.
        """
        t = self.transform if transform is None else transform
        z = t(u)
        ladj = t.log_abs_det_jacobian(u, z)
        # the transform may act on fewer event dims than the site has: sum the rest
        return z, sum_rightmost(ladj, self.event_dim - t.codomain.event_dim)

    def require_fixed(self, what: str) -> None:
        """Raise, naming the site, if its transform is known only where the model runs."""
        if not self.fixed:
            raise ProgramContractError(
                f"latent site '{self.name}' has a support whose bounds differ per row (they "
                f"come from another latent or from the data, e.g. Uniform(0, s)), so its "
                f"transform to unconstrained space is known only where the model runs; "
                f"{what}"
            )


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
            runtime = support_has_tensors(fn.support)
            value = site["value"]
            event_dim = fn.event_dim
            plate_dim = frame.dim - event_dim
            fixed = fixed_support(fn.support, plate_dim)
            transform = biject_to(fn.support if fixed is None else fixed)
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
                    runtime,
                    fixed is not None,
                )
            )
            offset += size
        if not sites:
            raise ValueError(
                "the model has no local latent sample site, so there is no posterior to sample "
                "and log p(x) is just the log-likelihood"
            )
        return cls(sites, plate_name)

    @property
    def runtime(self) -> bool:
        """Whether some site's transform is taken where the model runs (tensor bounds)."""
        return any(s.runtime for s in self.sites)

    def flatten(
        self, values: dict[str, torch.Tensor], supports: dict[str, Constraint] | None = None
    ) -> torch.Tensor:
        """Constrained site values -> unconstrained flat position, shape ``(n, D)``.

        ``supports``: each runtime site's support at these values (from a trace of the model
        conditioned on them); required for a site without a fixed transform.
        """
        blocks = []
        for s in self.sites:
            if supports is not None and s.runtime:
                transform = biject_to(supports[s.name])
            else:
                s.require_fixed("pass its support at these values (supports=)")
                transform = s.transform
            u = transform.inv(values[s.name])
            u = u.movedim(s.u_plate_dim, 0)
            blocks.append(u.reshape(u.shape[0], -1))
        return torch.cat(blocks, dim=-1)

    def unflatten(
        self, position: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Flat unconstrained ``(n, D)`` -> (constrained values, per-site ``log|det J|``).

        The log-Jacobians have the site's batch shape (event dimensions summed out), ready to
        be added to the site's ``log_prob``. Every site needs a fixed transform; where one
        does not, constrain inside a model run
        (:class:`~pyro_aevb.poutine.unconstrained.UnconstrainedCondition`).
        """
        values, log_jac = {}, {}
        for s in self.sites:
            s.require_fixed("run the model under UnconstrainedCondition to constrain it")
            values[s.name], log_jac[s.name] = s.constrain(s.block(position))
        return values, log_jac

    def unflatten_constrained(self, position: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat unconstrained ``(n, D)`` -> constrained site values (no Jacobian)."""
        return self.unflatten(position)[0]
