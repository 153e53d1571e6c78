r"""Per-chain warm-up adaptation for batched HMC: step size and diagonal mass.

**Step size (dual averaging, Hoffman & Gelman 2014, Section 3.2).** Each chain ``c`` has its
own log step size ``x_c``, driven toward a target acceptance probability ``delta`` by the
statistic ``g_{c,t} = delta - a_{c,t}`` (``a`` the Metropolis acceptance probability of the
latest transition)::

    gbar_t = (1 - 1/(t + t0)) gbar_{t-1} + g_t / (t + t0)
    x_t    = mu - sqrt(t) / gamma * gbar_t,          mu = log(10 * eps_0)
    xbar_t = (1 - t^-kappa) xbar_{t-1} + t^-kappa x_t

with ``eps_t = exp(x_t)`` used during warm-up and ``exp(xbar)`` after it. The arithmetic is
Pyro's :class:`~pyro.ops.dual_averaging.DualAveraging`, which is elementwise, so one instance
with ``(n,)`` tensors adapts ``n`` chains at once. The state here is an immutable NamedTuple:
:func:`step_size_adapt_update` returns a new state (a shallow copy of the Pyro object, whose
``step`` rebinds rather than mutates its tensors) and never changes its input.

**Diagonal mass (Stan's windowed adaptation).** Warm-up is split into Stan's windows
(Pyro's :class:`~pyro.infer.mcmc.adaptation.WarmupAdapter` schedule): an initial fast window
(step size only), slow windows doubling in length at whose ends the inverse mass is set to the
regularised per-chain variance of the window's draws (Pyro's
:class:`~pyro.ops.welford.WelfordCovariance`, elementwise too) and the step size search is
restarted, and a final fast window.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from pyro.infer.mcmc.adaptation import WarmupAdapter, adapt_window
from pyro.ops.dual_averaging import DualAveraging

from ..validation import check_positive_int

__all__ = [
    "StepSizeAdaptState",
    "step_size_adapt_init",
    "step_size_adapt_update",
    "step_size_adapt_final",
    "warmup_windows",
    "check_target_accept",
    "MIN_WARMUP_FOR_MASS",
]


class StepSizeAdaptState(NamedTuple):
    """Dual-averaging state of ``n`` chains.

    Attributes
    ----------
    scheme : pyro.ops.dual_averaging.DualAveraging
        Holds ``(n,)`` tensors; treat as read-only.
    target_accept : float
        The target acceptance probability ``delta``.
    step_size : torch.Tensor
        ``(n,)`` current step sizes ``exp(x_t)``.
    """

    scheme: DualAveraging
    target_accept: float
    step_size: torch.Tensor


def check_target_accept(target_accept) -> float:
    """``target_accept`` must be a number in (0, 1)."""
    if isinstance(target_accept, bool) or not isinstance(target_accept, int | float):
        raise TypeError(f"target_accept must be a number in (0, 1), got {target_accept!r}")
    target_accept = float(target_accept)
    if not 0.0 < target_accept < 1.0:
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept}")
    return target_accept


def step_size_adapt_init(
    step_size: torch.Tensor,
    target_accept: float = 0.9,
    *,
    t0: float = 10.0,
    kappa: float = 0.75,
    gamma: float = 0.05,
) -> StepSizeAdaptState:
    """Start dual averaging at step sizes ``step_size`` (``(n,)``), prox-center ``log(10 eps)``.

    ``t0``, ``kappa``, ``gamma`` are Hoffman & Gelman's (and Pyro's) defaults.
    """
    target_accept = check_target_accept(target_accept)
    scheme = DualAveraging(prox_center=torch.log(10 * step_size), t0=t0, kappa=kappa, gamma=gamma)
    return StepSizeAdaptState(scheme, target_accept, step_size)


def step_size_adapt_update(
    state: StepSizeAdaptState, accept_prob: torch.Tensor
) -> StepSizeAdaptState:
    """One dual-averaging update from the latest acceptance probabilities ``(n,)``."""
    scheme = copy.copy(state.scheme)
    # A NaN acceptance (a diverged trajectory) is a rejection: it must shrink the step size.
    accept_prob = torch.nan_to_num(accept_prob, nan=0.0)
    scheme.step(state.target_accept - accept_prob)
    log_step_size, _ = scheme.get_state()
    return state._replace(scheme=scheme, step_size=torch.exp(log_step_size))


def step_size_adapt_final(state: StepSizeAdaptState) -> torch.Tensor:
    """The step sizes to sample with after warm-up: ``exp(xbar_t)``, shape ``(n,)``."""
    if state.scheme._t == 0:  # never updated
        return state.step_size
    _, log_step_size_avg = state.scheme.get_state()
    return torch.exp(log_step_size_avg)


#: Below this many warm-up iterations the mass is not adapted (see :func:`warmup_windows`).
MIN_WARMUP_FOR_MASS = 100


def warmup_windows(num_warmup: int, adapt_mass: bool = True) -> list[adapt_window]:
    """Stan's warm-up windows for ``num_warmup`` iterations, as Pyro builds them.

    ``[(start, end), ...]`` inclusive; the first and last are fast (step size only) windows,
    the ones between are slow (mass) windows. With ``adapt_mass=False``, or fewer than
    :data:`MIN_WARMUP_FOR_MASS` iterations, one window covers the whole warm-up: Pyro's
    schedule would then leave a final window of a handful of iterations, too few for the
    step size to settle after the mass changes. Empty for ``num_warmup == 0``.
    """
    num_warmup = check_positive_int(num_warmup, "num_warmup", minimum=0)
    if num_warmup == 0:
        return []
    if not adapt_mass or num_warmup < MIN_WARMUP_FOR_MASS:
        return [adapt_window(0, num_warmup - 1)]
    adapter = WarmupAdapter(adapt_step_size=True, adapt_mass_matrix=True)
    adapter.configure(num_warmup, initial_step_size=1.0, mass_matrix_shape={("u",): (1,)})
    return list(adapter.adaptation_schedule)
