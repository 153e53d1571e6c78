r"""Batched Hamiltonian Monte Carlo kernel: one independent chain per row, all rows at once.

Each row ``c`` of an ``(n, D)`` position is its own chain with its own potential ``U_c``
(e.g. one datapoint's ``-log p(x_i, z_i)``, see :mod:`pyro_aevb.mcmc.potential`), its own
step size ``eps_c`` and diagonal inverse mass ``m_c``, and its own Metropolis accept/reject.
A transition (Neal 2011, Section 5.3.2) draws ``r ~ N(0, diag(1/m_c))``, runs ``L``
leapfrog steps of Pyro's :func:`~pyro.ops.integrator.velocity_verlet` (vectorised: the step
size is a ``(n, 1)`` tensor), and accepts the end point with probability::

    a_c = min(1, exp(H_c(u, r) - H_c(u', r'))),   H_c(u, r) = U_c(u) + 1/2 r^T diag(m_c) r.

Rows never interact, so ``n`` chains cost one batched potential-and-gradient evaluation per
leapfrog step instead of ``n``. A potential that computes its own gradient (``provides_grad``,
see :mod:`pyro_aevb.mcmc.potential`) is integrated with the same velocity Verlet steps
without autograd, and asked for its value only at the end of each trajectory.

This is what :class:`pyro.infer.MCMC` cannot do: it has one step size and one accept/reject
for the whole state.

The kernel is a pair of pure functions over a small state, in BlackJAX's shape: the state is
the position with its potential and gradient, and the step size and mass are arguments::

    state = init(potential_fn, position)
    state, info = step(state, potential_fn, step_size=eps, inverse_mass=m, num_steps=4,
                       generator=g)

Adaptation (step size, mass) lives outside the kernel: :mod:`pyro_aevb.mcmc.adaptation`
holds the rules and :func:`pyro_aevb.mcmc.sampler.sample` the warm-up loop; AIS and Monte
Carlo EM call :func:`step` with step sizes of their own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from pyro.ops.integrator import velocity_verlet

from .potential import value_and_grad

__all__ = [
    "NonFinitePotentialError",
    "HMCState",
    "HMCInfo",
    "PotentialFn",
    "init",
    "step",
    "find_reasonable_step_size",
]

PotentialFn = Callable[[torch.Tensor], torch.Tensor]


class NonFinitePotentialError(ValueError):
    """The potential is not finite where chains start (the model has no density there)."""


class HMCState(NamedTuple):
    """State of ``n`` independent HMC chains.

    Attributes
    ----------
    position : torch.Tensor
        ``(n, D)`` unconstrained positions.
    potential : torch.Tensor
        ``(n,)`` potential energies ``U_c(position_c)``.
    grad : torch.Tensor
        ``(n, D)`` gradients ``dU_c / du_c``.
    """

    position: torch.Tensor
    potential: torch.Tensor
    grad: torch.Tensor


class HMCInfo(NamedTuple):
    """What one transition did, per chain (each ``(n,)``).

    Attributes
    ----------
    accept_prob : torch.Tensor
        Metropolis acceptance probability (0 for a non-finite end point).
    accepted : torch.Tensor
        bool, whether the proposal was accepted.
    diverging : torch.Tensor
        bool, energy error above ``max_delta_energy`` or non-finite.
    energy_change : torch.Tensor
        ``H(end) - H(start)`` (``inf`` if non-finite).
    """

    accept_prob: torch.Tensor
    accepted: torch.Tensor
    diverging: torch.Tensor
    energy_change: torch.Tensor


def init(potential_fn: PotentialFn, position: torch.Tensor) -> HMCState:
    """Initial state at ``position`` ``(n, D)``: evaluates the potential and its gradient.

    ``potential_fn`` maps ``(n, D)`` to ``(n,)``, row ``c`` depending on row ``c`` only.
    """
    if position.dim() != 2:
        raise ValueError(f"position must have shape (num_chains, D), got {tuple(position.shape)}")
    if not bool(torch.isfinite(position).all()):
        raise ValueError("position contains non-finite values (NaN or inf)")
    n = position.shape[0]
    potential, grad = value_and_grad(potential_fn, position)
    if potential.shape != (n,):
        raise ValueError(
            f"potential_fn must return shape (num_chains,) = ({n},), got {tuple(potential.shape)}"
        )
    if not bool(torch.isfinite(potential).all()):
        bad = (~torch.isfinite(potential)).nonzero()[0].item()
        raise NonFinitePotentialError(
            f"the potential is not finite at the initial position of chain {bad}; start the "
            f"chains where the model has positive density"
        )
    return HMCState(position.detach(), potential, grad)


def _per_chain(value, n: int, like: torch.Tensor) -> torch.Tensor:
    """A number or ``(n,)`` tensor as an ``(n,)`` tensor of ``like``'s dtype and device."""
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).expand(n)


def _kinetic(r: torch.Tensor, inverse_mass: torch.Tensor) -> torch.Tensor:
    return 0.5 * (inverse_mass * r * r).sum(-1)


def _singular(err: Exception) -> bool:
    """The numerical errors Pyro's integrator turns into a rejected (NaN) end point."""
    msg = str(err)
    return isinstance(err, RuntimeError) and (
        "singular" in msg or "input is not positive-definite" in msg
    )


def _rows_apart(
    evaluate, z: torch.Tensor, safe: torch.Tensor, fills: tuple[float, ...], on_split=None
):
    """``evaluate(z)``, a tuple of per-row outputs (``None`` entries allowed), with the rows
    kept apart when it raises a singular/not-positive-definite error: the rows are evaluated
    again in halves, the others held at ``safe`` (positions that evaluated fine: the chains'
    current states), down to the rows that fail alone, whose outputs are ``fills`` (a NaN
    potential: a rejected end point; a zero gradient). Rows never interact, so one datapoint's
    numerical failure must not reject every chain's move. Differentiable in ``z``.
    ``on_split()`` is called once the rows were evaluated apart: state the potential kept of
    its last evaluation (AIS's parts) holds only that piece's rows."""
    try:
        return evaluate(z)
    except Exception as err:  # noqa: BLE001 -- re-raised unless singular
        if not _singular(err):
            raise
    pieces = []

    def attempt(rows: torch.Tensor) -> None:
        if rows.numel() == 0:
            return
        trial = safe.detach().index_put((rows,), z[rows])
        try:
            pieces.append((rows, evaluate(trial)))
        except Exception as err:  # noqa: BLE001
            if not _singular(err):
                raise
            if rows.numel() > 1:
                half = rows.numel() // 2
                attempt(rows[:half])
                attempt(rows[half:])

    rows = torch.arange(z.shape[0], device=z.device)
    attempt(rows[: rows.numel() // 2])
    attempt(rows[rows.numel() // 2 :])
    if on_split is not None:
        on_split()
    outputs = []
    for k, fill in enumerate(fills):
        parts = [(idx, out[k]) for idx, out in pieces if out[k] is not None]
        if not parts and pieces:
            outputs.append(None)  # not asked for (a value inside a trajectory)
            continue
        if not parts:
            # no row evaluated alone: the potential's (n,) values, then the gradient, shaped
            # like z; still a function of z, for a caller that differentiates the sum
            like = z[:, 0] if k == 0 else z
            outputs.append(like * 0.0 + fill)
            continue
        like = parts[0][1]
        out = torch.full((z.shape[0], *like.shape[1:]), fill, dtype=like.dtype, device=like.device)
        for idx, part in parts:
            out = out.index_put((idx,), part[idx])
        outputs.append(out)
    return tuple(outputs)


def _leapfrog_own_grad(state: HMCState, r, potential, step_size, inverse_mass, num_steps):
    """Pyro's velocity Verlet, operation for operation, for a potential that computes its
    own gradient (``potential.potential_and_grad(u, need_value)``): no autograd, and the
    potential's value only at the end of the trajectory, where the accept test needs it."""
    eps = step_size.unsqueeze(-1)
    z, grad = state.position, state.grad
    value = None
    for k in range(num_steps):
        r = r + 0.5 * eps * (-grad)  # r(n + 1/2)
        z = z + eps * (inverse_mass * r)  # z(n + 1)
        last = k == num_steps - 1
        value, grad = _rows_apart(
            lambda u, last=last: potential.potential_and_grad(u, need_value=last),
            z,
            state.position,
            (math.nan, 0.0),
            on_split=getattr(potential, "rows_split", None),
        )
        r = r + 0.5 * eps * (-grad)  # r(n + 1)
    return z, r, value, grad


def _leapfrog(state: HMCState, r, potential_fn, step_size, inverse_mass, num_steps):
    """``num_steps`` vectorised leapfrog steps; ``(u', r', U', grad')`` per chain."""
    if getattr(potential_fn, "provides_grad", False):
        return _leapfrog_own_grad(state, r, potential_fn, step_size, inverse_mass, num_steps)
    last = {}

    def summed_potential(z):
        # velocity_verlet differentiates a scalar; the per-chain values of its last call (the
        # end point) are kept here, so no extra evaluation is needed. A row that fails alone
        # gets a NaN potential (and, as a constant, no gradient): the other rows go on.
        last["U"] = None
        (value,) = _rows_apart(lambda u: (potential_fn(u),), z["u"], state.position, (math.nan,))
        last["U"] = value.detach()
        return value.sum()

    z, r_new, grads, _ = velocity_verlet(
        {"u": state.position},
        {"u": r},
        summed_potential,
        lambda rr: {"u": inverse_mass * rr["u"]},
        step_size.unsqueeze(-1),
        num_steps,
        {"u": state.grad},
    )
    potential = last["U"]
    if potential is None:  # the potential raised an error Pyro's integrator handles
        potential = torch.full_like(state.potential, math.nan)
    return z["u"].detach(), r_new["u"], potential, grads["u"]


def step(
    state: HMCState,
    potential_fn: PotentialFn,
    *,
    step_size: float | torch.Tensor,
    inverse_mass: torch.Tensor | None = None,
    num_steps: int = 4,
    generator: torch.Generator | None = None,
    max_delta_energy: float = 1000.0,
    step_size_jitter: float = 0.0,
) -> tuple[HMCState, HMCInfo]:
    """One HMC transition of every chain; returns the new state and an :class:`HMCInfo`.

    Pure: ``state`` is not modified. ``step_size``: a number or ``(n,)``; ``inverse_mass``:
    ``(n, D)`` diagonal inverse masses (default ones). With ``step_size_jitter = j > 0`` each
    chain integrates with ``eps * U(1 - j, 1 + j)``: a step size drawn independently of the
    state keeps the target invariant, and it breaks the periodicity of a fixed trajectory
    length, which on a near-Gaussian posterior (after mass adaptation) can make ``L * eps``
    close to half a period, so that every transition just reflects the chain through the mean
    and it never explores (Neal 2011, Section 5.4.2.2).
    """
    # plain-number checks only: this runs once per transition (tensor arguments are checked
    # by sample(), which owns them)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if not 0.0 <= step_size_jitter < 1.0:
        raise ValueError(f"step_size_jitter must be in [0, 1), got {step_size_jitter!r}")
    pos = state.position
    n = pos.shape[0]
    step_size = _per_chain(step_size, n, pos)
    if inverse_mass is None:
        inverse_mass = torch.ones_like(pos)
    noise = torch.randn(pos.shape, generator=generator, dtype=pos.dtype, device=pos.device)
    r = noise / inverse_mass.sqrt()
    h0 = state.potential + _kinetic(r, inverse_mass)
    if step_size_jitter:
        u = torch.rand(step_size.shape, generator=generator, dtype=pos.dtype, device=pos.device)
        step_size = step_size * (1.0 + step_size_jitter * (2.0 * u - 1.0))
    new_pos, new_r, new_u, new_grad = _leapfrog(
        state, r, potential_fn, step_size, inverse_mass, num_steps
    )
    h1 = new_u + _kinetic(new_r, inverse_mass)
    delta = h1 - h0
    finite = (
        torch.isfinite(delta) & torch.isfinite(new_pos).all(-1) & torch.isfinite(new_grad).all(-1)
    )
    delta = torch.where(finite, delta, torch.full_like(delta, math.inf))
    accept_prob = torch.exp(torch.clamp(-delta, max=0.0))
    uniform = torch.rand(delta.shape, generator=generator, dtype=pos.dtype, device=pos.device)
    accepted = uniform < accept_prob
    diverging = delta > max_delta_energy
    keep = accepted.unsqueeze(-1)
    new_state = HMCState(
        position=torch.where(keep, new_pos, pos),
        potential=torch.where(accepted, new_u, state.potential),
        grad=torch.where(keep, new_grad, state.grad),
    )
    return new_state, HMCInfo(accept_prob, accepted, diverging, delta)


def find_reasonable_step_size(
    state: HMCState,
    potential_fn: PotentialFn,
    step_size: float | torch.Tensor,
    inverse_mass: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    target_accept: float = 0.8,
    max_doublings: int = 30,
) -> torch.Tensor:
    """Per-chain step-size heuristic of Hoffman & Gelman (2014, Algorithm 4), vectorised.

    From ``step_size``, double (or halve) each chain's step size until the acceptance
    probability of one leapfrog step crosses ``target_accept``, as
    ``HMC._find_reasonable_step_size`` in Pyro does for a single chain. Returns ``(n,)``.
    """
    log_target = math.log(target_accept)
    pos = state.position
    if inverse_mass is None:
        inverse_mass = torch.ones_like(pos)
    noise = torch.randn(pos.shape, generator=generator, dtype=pos.dtype, device=pos.device)
    r = noise / inverse_mass.sqrt()
    h0 = state.potential + _kinetic(r, inverse_mass)

    def log_accept(eps):
        _, r1, u1, _ = _leapfrog(state, r, potential_fn, eps, inverse_mass, 1)
        delta = u1 + _kinetic(r1, inverse_mass) - h0
        return torch.where(torch.isfinite(delta), -delta, torch.full_like(delta, -math.inf))

    step_size = _per_chain(step_size, pos.shape[0], pos).clone()
    direction = torch.where(log_accept(step_size) > log_target, 1.0, -1.0).to(pos.dtype)
    active = torch.ones_like(step_size, dtype=torch.bool)
    for _ in range(max_doublings):
        step_size = torch.where(active, step_size * 2.0**direction, step_size)
        new_direction = torch.where(log_accept(step_size) > log_target, 1.0, -1.0)
        active = active & (new_direction == direction)
        if not bool(active.any()):
            break
    return step_size
