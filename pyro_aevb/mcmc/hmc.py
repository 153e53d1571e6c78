r"""Batched Hamiltonian Monte Carlo: one independent chain per row, all rows at once.

Each row ``c`` of an ``(n, D)`` position is its own chain with its own potential ``U_c``
(e.g. one datapoint's ``-log p(x_i, z_i)``, see :mod:`pyro_aevb.mcmc.potential`), its own
step size ``eps_c`` and diagonal inverse mass ``m_c``, and its own Metropolis accept/reject.
A transition (Neal 2011, Section 5.3.2) draws ``r ~ N(0, diag(1/m_c))``, runs ``L``
leapfrog steps of Pyro's :func:`~pyro.ops.integrator.velocity_verlet` (vectorised: the step
size is a ``(n, 1)`` tensor), and accepts the end point with probability::

    a_c = min(1, exp(H_c(u, r) - H_c(u', r'))),   H_c(u, r) = U_c(u) + 1/2 r^T diag(m_c) r.

Rows never interact, so ``n`` chains cost one batched potential-and-gradient evaluation per
leapfrog step instead of ``n``. This is what :class:`pyro.infer.MCMC` cannot do: it has one
step size and one accept/reject for the whole state.

The kernel is a pair of pure functions over a small state, as in NumPyro/BlackJAX::

    state = init(potential_fn, position, step_size)
    state, info = step(state, potential_fn, num_steps=4, generator=g)

Step-size adaptation (:mod:`pyro_aevb.mcmc.adaptation`) is separate from the integrator:
when ``state.adapt`` holds a dual-averaging state, :func:`step` feeds it the acceptance
probabilities and moves ``state.step_size``; :func:`sample` drives the warm-up (step size
and per-chain diagonal mass) and then samples with adaptation off.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from pyro.ops.integrator import velocity_verlet
from pyro.ops.welford import WelfordCovariance

from ..validation import check_positive_float, check_positive_int
from .adaptation import (
    StepSizeAdaptState,
    check_target_accept,
    step_size_adapt_final,
    step_size_adapt_init,
    step_size_adapt_update,
    warmup_windows,
)
from .potential import value_and_grad

__all__ = [
    "HMCState",
    "HMCInfo",
    "BatchedHMCResult",
    "init",
    "step",
    "find_reasonable_step_size",
    "sample",
]

PotentialFn = Callable[[torch.Tensor], torch.Tensor]


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
    step_size : torch.Tensor
        ``(n,)`` leapfrog step sizes.
    inverse_mass : torch.Tensor
        ``(n, D)`` diagonal inverse mass matrices.
    adapt : StepSizeAdaptState or None
        Dual-averaging state while the step size is being adapted, else ``None``.
    """

    position: torch.Tensor
    potential: torch.Tensor
    grad: torch.Tensor
    step_size: torch.Tensor
    inverse_mass: torch.Tensor
    adapt: StepSizeAdaptState | None = None


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


def init(
    potential_fn: PotentialFn,
    position: torch.Tensor,
    step_size: float | torch.Tensor = 0.1,
    inverse_mass: torch.Tensor | None = None,
    adapt: StepSizeAdaptState | None = None,
) -> HMCState:
    """Initial state at ``position`` ``(n, D)``: evaluates the potential and its gradient.

    ``potential_fn`` maps ``(n, D)`` to ``(n,)``, row ``c`` depending on row ``c`` only.
    ``step_size``: a number or ``(n,)``; ``inverse_mass``: ``(n, D)`` (default ones).
    """
    if position.dim() != 2:
        raise ValueError(f"position must have shape (num_chains, D), got {tuple(position.shape)}")
    if not bool(torch.isfinite(position).all()):
        raise ValueError("position contains non-finite values (NaN or inf)")
    n, d = position.shape
    potential, grad = value_and_grad(potential_fn, position)
    if potential.shape != (n,):
        raise ValueError(
            f"potential_fn must return shape (num_chains,) = ({n},), got {tuple(potential.shape)}"
        )
    if not bool(torch.isfinite(potential).all()):
        bad = (~torch.isfinite(potential)).nonzero()[0].item()
        raise ValueError(
            f"the potential is not finite at the initial position of chain {bad}; start the "
            f"chains where the model has positive density"
        )
    step_size = torch.as_tensor(step_size, dtype=position.dtype).expand(n).clone()
    if inverse_mass is None:
        inverse_mass = torch.ones_like(position)
    return HMCState(position.detach(), potential, grad, step_size, inverse_mass, adapt)


def _kinetic(r: torch.Tensor, inverse_mass: torch.Tensor) -> torch.Tensor:
    return 0.5 * (inverse_mass * r * r).sum(-1)


def _leapfrog(state: HMCState, r: torch.Tensor, potential_fn, step_size, num_steps):
    """``num_steps`` vectorised leapfrog steps; ``(u', r', U', grad')`` per chain."""
    last = {}

    def summed_potential(z):
        # velocity_verlet differentiates a scalar; the per-chain values of its last call (the
        # end point) are kept here, so no extra evaluation is needed.
        last["U"] = None
        value = potential_fn(z["u"])
        last["U"] = value.detach()
        return value.sum()

    inverse_mass = state.inverse_mass
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
    num_steps: int = 4,
    generator: torch.Generator | None = None,
    max_delta_energy: float = 1000.0,
    step_size_jitter: float = 0.0,
) -> tuple[HMCState, HMCInfo]:
    """One HMC transition of every chain; returns the new state and an :class:`HMCInfo`.

    Pure: ``state`` is not modified. If ``state.adapt`` is set, the step size is updated by
    dual averaging from this transition's acceptance probabilities. With
    ``step_size_jitter = j > 0`` each chain integrates with ``eps * U(1 - j, 1 + j)``: a
    step size drawn independently of the state keeps the target invariant, and it breaks the
    periodicity of a fixed trajectory length, which on a near-Gaussian posterior (after mass
    adaptation) can make ``L * eps`` close to half a period, so that every transition just
    reflects the chain through the mean and it never explores (Neal 2011, Section 5.4.2.2).
    """
    pos = state.position
    noise = torch.randn(pos.shape, generator=generator, dtype=pos.dtype, device=pos.device)
    r = noise / state.inverse_mass.sqrt()
    h0 = state.potential + _kinetic(r, state.inverse_mass)
    step_size = state.step_size
    if step_size_jitter:
        u = torch.rand(step_size.shape, generator=generator, dtype=pos.dtype, device=pos.device)
        step_size = step_size * (1.0 + step_size_jitter * (2.0 * u - 1.0))
    new_pos, new_r, new_u, new_grad = _leapfrog(state, r, potential_fn, step_size, num_steps)
    h1 = new_u + _kinetic(new_r, state.inverse_mass)
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
    new_state = state._replace(
        position=torch.where(keep, new_pos, pos),
        potential=torch.where(accepted, new_u, state.potential),
        grad=torch.where(keep, new_grad, state.grad),
    )
    if state.adapt is not None:
        adapt = step_size_adapt_update(state.adapt, accept_prob)
        new_state = new_state._replace(adapt=adapt, step_size=adapt.step_size)
    return new_state, HMCInfo(accept_prob, accepted, diverging, delta)


def find_reasonable_step_size(
    state: HMCState,
    potential_fn: PotentialFn,
    *,
    generator: torch.Generator | None = None,
    target_accept: float = 0.8,
    max_doublings: int = 30,
) -> torch.Tensor:
    """Per-chain step-size heuristic of Hoffman & Gelman (2014, Algorithm 4), vectorised.

    From ``state.step_size``, double (or halve) each chain's step size until the acceptance
    probability of one leapfrog step crosses ``target_accept``, as
    ``HMC._find_reasonable_step_size`` in Pyro does for a single chain. Returns ``(n,)``.
    """
    log_target = math.log(target_accept)
    pos = state.position
    noise = torch.randn(pos.shape, generator=generator, dtype=pos.dtype, device=pos.device)
    r = noise / state.inverse_mass.sqrt()
    h0 = state.potential + _kinetic(r, state.inverse_mass)

    def log_accept(step_size):
        _, r1, u1, _ = _leapfrog(state, r, potential_fn, step_size, 1)
        delta = u1 + _kinetic(r1, state.inverse_mass) - h0
        return torch.where(torch.isfinite(delta), -delta, torch.full_like(delta, -math.inf))

    step_size = state.step_size.clone()
    direction = torch.where(log_accept(step_size) > log_target, 1.0, -1.0).to(pos.dtype)
    active = torch.ones_like(step_size, dtype=torch.bool)
    for _ in range(max_doublings):
        step_size = torch.where(active, step_size * 2.0**direction, step_size)
        new_direction = torch.where(log_accept(step_size) > log_target, 1.0, -1.0)
        active = active & (new_direction == direction)
        if not bool(active.any()):
            break
    return step_size


@dataclass
class BatchedHMCResult:
    """Draws and diagnostics of :func:`sample`.

    Rows are chains; with ``num_chains`` chains per datapoint, row ``c * B + i`` is chain
    ``c`` of datapoint ``i`` (use :meth:`by_chain`).

    Attributes
    ----------
    samples : torch.Tensor
        ``(S, n, D)`` unconstrained draws after warm-up.
    potential : torch.Tensor
        ``(S, n)`` potential energies of the draws (``-log p(x, u)`` for a model potential).
    accept_prob : torch.Tensor
        ``(S, n)`` acceptance probability of the transition that produced each kept draw.
    diverging : torch.Tensor
        ``(S, n)`` bool.
    step_size : torch.Tensor
        ``(n,)`` step sizes used for sampling.
    inverse_mass : torch.Tensor
        ``(n, D)`` diagonal inverse mass used for sampling.
    warmup_accept_rate : torch.Tensor
        ``(n,)`` mean acceptance probability during warm-up.
    num_chains : int
        Chains per datapoint.
    settings : dict
        The sampler's settings.
    seconds : float
        Wall time of warm-up plus sampling.
    """

    samples: torch.Tensor
    potential: torch.Tensor
    accept_prob: torch.Tensor
    diverging: torch.Tensor
    step_size: torch.Tensor
    inverse_mass: torch.Tensor
    warmup_accept_rate: torch.Tensor
    num_chains: int
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def accept_rate(self) -> torch.Tensor:
        """``(n,)`` mean acceptance probability while sampling."""
        return self.accept_prob.mean(0)

    @property
    def batch_size(self) -> int:
        """B, the number of datapoints."""
        return self.samples.shape[1] // self.num_chains

    def by_chain(self, tensor: torch.Tensor) -> torch.Tensor:
        """Reshape a ``(S, n, ...)`` tensor to ``(C, S, B, ...)`` (ArviZ's chain, draw order)."""
        s, n = tensor.shape[:2]
        c = self.num_chains
        return tensor.reshape((s, c, n // c) + tuple(tensor.shape[2:])).transpose(0, 1)

    def per_datapoint(self, tensor: torch.Tensor) -> torch.Tensor:
        """Reshape a per-chain ``(n, ...)`` tensor to ``(C, B, ...)``."""
        return tensor.reshape((self.num_chains, -1) + tuple(tensor.shape[1:]))

    def to_inference_data(self, var_name: str = "u"):
        """ArviZ ``InferenceData``: posterior ``var_name`` with dims (chain, draw, datapoint,
        dim) and sample stats ``lp``, ``acceptance_rate``, ``diverging``, ``step_size``."""
        import arviz as az

        def np_(t):
            return t.detach().cpu().numpy()

        s = self.samples.shape[0]
        step = self.per_datapoint(self.step_size).unsqueeze(1).expand(-1, s, -1)
        return az.from_dict(
            posterior={var_name: np_(self.by_chain(self.samples))},
            sample_stats={
                "lp": np_(-self.by_chain(self.potential)),
                "acceptance_rate": np_(self.by_chain(self.accept_prob)),
                "diverging": np_(self.by_chain(self.diverging)),
                "step_size": np_(step),
            },
            dims={
                var_name: ["datapoint", f"{var_name}_dim"],
                "lp": ["datapoint"],
                "acceptance_rate": ["datapoint"],
                "diverging": ["datapoint"],
                "step_size": ["datapoint"],
            },
        )

    def diagnostics(self, rhat: bool = True) -> dict:
        """Per-datapoint summaries: acceptance, step size, divergences, ESS and R-hat.

        ESS (bulk) and split R-hat are ArviZ's, taken per datapoint as the minimum ESS and the
        maximum R-hat over the latent coordinates; R-hat needs at least 2 chains per datapoint
        (or 4 draws for split R-hat of one chain).
        """
        out = {
            "accept_rate": self.per_datapoint(self.accept_rate).mean(0),
            "warmup_accept_rate": self.per_datapoint(self.warmup_accept_rate).mean(0),
            "step_size": self.per_datapoint(self.step_size).mean(0),
            "num_divergent": self.per_datapoint(self.diverging.sum(0)).sum(0),
        }
        out.update(ess_rhat(self.by_chain(self.samples), rhat=rhat))
        return out


def ess_rhat(draws: torch.Tensor, rhat: bool = True) -> dict[str, torch.Tensor]:
    """ArviZ bulk ESS (min over coordinates) and split R-hat (max) per datapoint.

    ``draws``: ``(C, S, B, D)``. Returns ``{"ess_bulk": (B,), "r_hat": (B,)}``; no entries for
    fewer than 4 draws and no R-hat for one chain (or ``rhat=False``).
    """
    import arviz as az

    arr = draws.detach().cpu().double().numpy()
    out = {}
    if arr.shape[1] < 4:
        return out
    ds = az.convert_to_dataset(arr)
    # a chain that never moved has zero variance: ArviZ then divides by zero (-> nan / inf),
    # which is the right answer, so numpy's warnings are silenced
    with np.errstate(all="ignore"), _quiet_arviz():
        ess = az.ess(ds, method="bulk")["x"].values  # (B, D)
        out["ess_bulk"] = torch.as_tensor(_reduce(ess, np.min))
        if rhat and arr.shape[0] > 1:
            r_hat = az.rhat(ds)["x"].values
            out["r_hat"] = torch.as_tensor(_reduce(r_hat, np.max))
    return out


def _reduce(values: np.ndarray, fn) -> np.ndarray:
    """Reduce over the last axis; nan where every entry is nan (without numpy's warning)."""
    filled = np.where(np.isnan(values), np.inf if fn is np.min else -np.inf, values)
    out = fn(filled, axis=-1)
    return np.where(np.isnan(values).all(-1), np.nan, out)


@contextlib.contextmanager
def _quiet_arviz():
    """Silence ArviZ's "Shape validation failed" log line for single-chain ESS."""
    logger = logging.getLogger("arviz")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def sample(
    potential_fn: PotentialFn,
    init_position: torch.Tensor,
    *,
    num_samples: int,
    num_warmup: int = 200,
    num_steps: int = 4,
    target_accept: float = 0.9,
    step_size: float | torch.Tensor | None = None,
    adapt_step_size: bool = True,
    adapt_mass: bool = True,
    inverse_mass: torch.Tensor | None = None,
    num_chains: int = 1,
    thin: int = 1,
    generator: torch.Generator | None = None,
    max_delta_energy: float = 1000.0,
    step_size_jitter: float = 0.5,
) -> BatchedHMCResult:
    """Warm up, then draw ``num_samples`` from ``n`` independent chains at once.

    Parameters
    ----------
    potential_fn : callable
        ``(n, D) -> (n,)`` potential energies, row ``c`` depending on row ``c`` only (e.g. a
        :class:`~pyro_aevb.mcmc.potential.PerDatapointPotential`).
    init_position : torch.Tensor
        ``(n, D)`` starting points (e.g. draws from the encoder).
    num_samples : int
        Draws kept per chain (after thinning).
    num_warmup : int
        Warm-up iterations (discarded), during which step sizes (and, with ``adapt_mass``,
        diagonal masses) are adapted per chain.
    num_steps : int
        Leapfrog steps per transition (the paper: 4).
    target_accept : float
        Target acceptance probability of the step-size adaptation (the paper: 0.9).
    step_size : float or torch.Tensor, optional
        Initial (or, without adaptation, fixed) step size(s); ``None``: found per chain by
        :func:`find_reasonable_step_size` from 0.1.
    adapt_step_size, adapt_mass : bool
        Adapt per-chain step sizes / diagonal inverse masses during warm-up.
    inverse_mass : torch.Tensor, optional
        ``(n, D)`` initial diagonal inverse mass (default ones).
    num_chains : int
        Chains per datapoint (``n = num_chains * B``, chain-major): the mass estimates of a
        datapoint's chains are pooled, and diagnostics are grouped by datapoint.
    thin : int
        Keep every ``thin``-th draw.
    generator : torch.Generator, optional
        Source of all randomness (momenta, accept/reject).
    max_delta_energy : float
        Energy error above which a transition counts as divergent.
    step_size_jitter : float
        Each transition uses ``eps * U(1 - j, 1 + j)`` (see :func:`step`); in [0, 1).

    Returns
    -------
    BatchedHMCResult
    """
    num_samples = check_positive_int(num_samples, "num_samples")
    num_warmup = check_positive_int(num_warmup, "num_warmup", minimum=0)
    num_steps = check_positive_int(num_steps, "num_steps")
    num_chains = check_positive_int(num_chains, "num_chains")
    thin = check_positive_int(thin, "thin")
    target_accept = check_target_accept(target_accept)
    n = init_position.shape[0] if init_position.dim() == 2 else -1
    if init_position.dim() != 2 or n % num_chains:
        raise ValueError(
            f"init_position must have shape (num_chains * batch, D) with num_chains="
            f"{num_chains}, got {tuple(init_position.shape)}"
        )
    if step_size is not None and not torch.is_tensor(step_size):
        check_positive_float(step_size, "step_size")
    step_size_jitter = check_positive_float(step_size_jitter, "step_size_jitter", allow_zero=True)
    if step_size_jitter >= 1.0:
        raise ValueError(f"step_size_jitter must be in [0, 1), got {step_size_jitter}")
    t_start = time.perf_counter()
    find_step = step_size is None
    state = init(potential_fn, init_position, 0.1 if find_step else step_size, inverse_mass)
    kw = {
        "num_steps": num_steps,
        "generator": generator,
        "max_delta_energy": max_delta_energy,
        "step_size_jitter": step_size_jitter,
    }

    if find_step:
        state = state._replace(
            step_size=find_reasonable_step_size(state, potential_fn, generator=generator)
        )
    windows = warmup_windows(num_warmup, adapt_mass) if (adapt_step_size or adapt_mass) else []
    if adapt_step_size and num_warmup:
        state = state._replace(adapt=step_size_adapt_init(state.step_size, target_accept))
    welford = WelfordCovariance(diagonal=True)
    window = 0
    warmup_accept = torch.zeros_like(state.potential)
    for t in range(num_warmup):
        state, info = step(state, potential_fn, **kw)
        warmup_accept += info.accept_prob
        if not windows:
            continue
        slow = adapt_mass and 0 < window < len(windows) - 1
        if slow:
            welford.update(state.position)
        if t == windows[window].end:
            if window == len(windows) - 1:
                if state.adapt is not None:
                    state = state._replace(step_size=step_size_adapt_final(state.adapt))
            elif slow:
                var = welford.get_covariance(regularize=True)
                # pool the variance estimates of one datapoint's chains
                var = var.reshape(num_chains, -1, var.shape[-1]).mean(0).repeat(num_chains, 1)
                welford.reset()
                state = state._replace(inverse_mass=var)
                state = state._replace(
                    step_size=find_reasonable_step_size(state, potential_fn, generator=generator)
                )
                if state.adapt is not None:
                    state = state._replace(
                        adapt=step_size_adapt_init(state.step_size, target_accept)
                    )
            window += 1
    state = state._replace(adapt=None)
    warmup_accept = warmup_accept / max(num_warmup, 1)

    draws, potentials, accepts, divs = [], [], [], []
    for t in range(num_samples * thin):
        state, info = step(state, potential_fn, **kw)
        if (t + 1) % thin == 0:
            draws.append(state.position)
            potentials.append(state.potential)
            accepts.append(info.accept_prob)
            divs.append(info.diverging)
    settings = {
        "num_samples": num_samples,
        "num_warmup": num_warmup,
        "num_steps": num_steps,
        "target_accept": target_accept,
        "adapt_step_size": adapt_step_size,
        "adapt_mass": adapt_mass,
        "num_chains": num_chains,
        "thin": thin,
        "step_size_jitter": step_size_jitter,
    }
    return BatchedHMCResult(
        samples=torch.stack(draws),
        potential=torch.stack(potentials),
        accept_prob=torch.stack(accepts),
        diverging=torch.stack(divs),
        step_size=state.step_size,
        inverse_mass=state.inverse_mass,
        warmup_accept_rate=warmup_accept,
        num_chains=num_chains,
        settings=settings,
        seconds=time.perf_counter() - t_start,
    )
