r"""Annealed importance sampling (AIS) with HMC transitions, and bidirectional Monte Carlo.

**AIS (Neal 2001).** For each datapoint, anneal along the geometric path from a normalised
initial density ``p_0(u)`` (the prior ``p(u)``, or the encoder ``q(u | x_i)``) to the
unnormalised posterior ``gamma(u) = p(x_i, u)``, in unconstrained coordinates::

    f_t(u) = p_0(u)^(1 - beta_t) gamma(u)^beta_t,     0 = beta_0 < beta_1 < ... < beta_T = 1.

A chain starts at ``u_0 ~ p_0`` and, for ``t = 1..T``, adds to its log-weight::

    log w += (beta_t - beta_{t-1}) * [log gamma(u) - log p_0(u)]

then moves ``u`` with an HMC transition that leaves ``f_t`` invariant. ``E[w] = p(x_i)``, so
with ``C`` chains per datapoint ``log p(x_i) ~= logmeanexp_c log w_c``: a stochastic lower
bound (Jensen) that becomes exact as ``T`` grows. Its standard error is the delta method on
the mean weight.

**Reverse AIS and BDMC (Grosse et al. 2015).** Started from an *exact* posterior sample
``u_T ~ p(u | x_i)`` (available for data simulated from the model together with its latent)
and run backwards, ``t = T..1``::

    log w_rev += (beta_{t-1} - beta_t) * [log gamma(u) - log p_0(u)],  then move with f_{t-1}

gives ``E[w_rev] = 1 / p(x_i)``, so ``-logmeanexp_c log w_rev`` is a stochastic *upper*
bound. Forward and reverse together sandwich ``log p(x_i)`` on simulated data; the gap bounds
the error of forward AIS run with the same settings.

**Transitions and step sizes.** Each transition is one :func:`pyro_aevb.mcmc.hmc.step`
(``num_leapfrog`` leapfrog steps, per-chain accept/reject, chains x datapoints flattened). AIS
is only unbiased if each transition is a fixed kernel given the temperature, so the step sizes
are *not* adapted on the chains that produce the estimate: a short pilot run (``pilot_chains``
chains per datapoint, step sizes adapted toward ``target_accept`` by a Robbins-Monro update
as they anneal) records a per-datapoint step size for every temperature, and the estimating
runs (forward and reverse) use that schedule, drawn independently of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

from ..device import check_generator, place
from ..mcmc import hmc
from ..mcmc.adaptation import check_target_accept
from ..mcmc.potential import PerDatapointPotential, value_and_grad
from ..mcmc.potentials import make_potential
from ..poutine import as_program, plate_frame
from ..validation import check_choice, check_data, check_positive_int
from .result import (
    fewer_than_two_effective,
    importance_ess,
    logmeanexp_with_stderr,
    warn_non_finite,
    warn_unreliable,
)

__all__ = [
    "AISResult",
    "ais",
    "bdmc",
    "annealing_schedule",
    "simulate_data",
    "INITS",
    "SCHEDULES",
]

INITS = ("prior", "encoder")
SCHEDULES = ("sigmoid", "linear")


def annealing_schedule(num_temps: int, kind: str = "sigmoid", delta: float = 4.0) -> torch.Tensor:
    r"""Inverse temperatures ``beta_0 = 0 < ... < beta_T = 1``, shape ``(T + 1,)``, float64.

    ``"sigmoid"`` (Grosse et al. 2015; Wu et al. 2017): ``beta_t`` proportional to
    ``sigmoid(delta (2t/T - 1))``, rescaled to [0, 1], which spends more steps near both
    ends; ``"linear"``: ``t / T``.
    """
    num_temps = check_positive_int(num_temps, "num_temps")
    check_choice(kind, "schedule", SCHEDULES)
    t = torch.linspace(0.0, 1.0, num_temps + 1, dtype=torch.float64)
    if kind == "linear":
        return t
    s = torch.sigmoid(delta * (2.0 * t - 1.0))
    return (s - s[0]) / (s[-1] - s[0])


class _Annealed:
    """The annealed potentials ``U_beta = -[log p_0 + beta (log gamma - log p_0)]``.

    With a potential that computes its own gradients (``pot.provides_grad``: compiled or
    hand-derived) the parts and their gradients come from it and are combined here, no
    autograd; otherwise everything is differentiated through the traced potential."""

    def __init__(self, pot: PerDatapointPotential, init: str):
        self.pot = pot
        self.init = init
        self.provides_grad = getattr(pot, "provides_grad", False)

    def parts_and_grads(self, u: torch.Tensor, need_value: bool = True):
        """``(log p_0, log gamma - log p_0, their gradients)`` per row (values ``None`` when
        not needed and the potential can skip them)."""
        log_prior, log_lik, g_prior, g_lik = self.pot.parts_and_grads(u, need_value)
        if self.init == "prior":
            return log_prior, log_lik, g_prior, g_lik
        log_q, g_q = self.pot.log_guide_and_grad(u)
        increment = None if log_lik is None else log_prior + log_lik - log_q
        return log_q, increment, g_q, g_prior + g_lik - g_q

    def parts(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p_0(u), log gamma(u) - log p_0(u))``, each ``(n,)``."""
        log_prior, log_lik = self.pot.log_joint_parts(u)
        if self.init == "prior":
            return log_prior, log_lik
        log_q = self.pot.log_guide(u)
        return log_q, log_prior + log_lik - log_q

    def potential(self, beta: float) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.provides_grad:
            return _AnnealedPotential(self, beta)

        def fn(u):
            log_p0, increment = self.parts(u)
            return -(log_p0 + beta * increment)

        return fn

    def evaluate(self, u: torch.Tensor, beta: float):
        """``(U_beta(u), dU_beta/du, log gamma(u) - log p_0(u))`` in one pass."""
        if self.provides_grad:
            log_p0, increment, g_p0, g_inc = self.parts_and_grads(u)
            return -(log_p0 + beta * increment), -(g_p0 + beta * g_inc), increment
        cache = {}

        def fn(v):
            log_p0, increment = self.parts(v)
            cache["inc"] = increment.detach()
            return -(log_p0 + beta * increment)

        value, grad = value_and_grad(fn, u)
        return value, grad, cache["inc"]

    def sample_init(self) -> torch.Tensor:
        if self.init == "prior":
            return self.pot.sample_prior()
        return self.pot.sample_guide()[0]


class _AnnealedPotential:
    """``U_beta`` of an :class:`_Annealed` whose potential provides gradients, in the form
    the HMC kernel integrates without autograd (``provides_grad``)."""

    provides_grad = True

    def __init__(self, annealed: _Annealed, beta: float):
        self.annealed, self.beta = annealed, beta
        #: The parts of the last evaluation with values (a trajectory's end point).
        self.last_parts = None
        #: Whether they are of every row (not when the kernel evaluated the rows apart).
        self.last_parts_whole = False

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        log_p0, increment = self.annealed.parts(u)
        return -(log_p0 + self.beta * increment)

    def potential_and_grad(self, u: torch.Tensor, need_value: bool = True):
        parts = self.annealed.parts_and_grads(u, need_value)
        if need_value:
            self.last_parts, self.last_parts_whole = parts, True
            value, grad, _ = _combine(parts, self.beta)
            return value, grad
        _, _, g_p0, g_inc = parts
        return None, -(g_p0 + self.beta * g_inc)

    def rows_split(self) -> None:
        """Told by the kernel that it evaluated the rows apart (a singular matrix in some
        rows): the last parts are of the last piece's rows only."""
        self.last_parts_whole = False


@dataclass
class AISResult:
    """Per-chain log-weights and per-datapoint estimates of one AIS run.

    Attributes
    ----------
    log_weights : torch.Tensor
        ``(C, B)``: forward ``log w`` (or, for a reverse run, ``log w_rev``).
    estimate, stderr : torch.Tensor
        ``(B,)``: ``logmeanexp_c log w`` (reverse: ``-logmeanexp_c log w_rev``) and its
        delta-method standard error.
    accept_rate : torch.Tensor
        ``(B,)`` mean acceptance probability over chains and temperatures.
    seconds : float
    """

    log_weights: torch.Tensor
    estimate: torch.Tensor
    stderr: torch.Tensor
    accept_rate: torch.Tensor
    seconds: float
    diagnostics: dict = field(default_factory=dict)


def _run(
    annealed: _Annealed,
    start: torch.Tensor,
    betas: torch.Tensor,
    step_sizes: torch.Tensor,
    *,
    num_leapfrog: int,
    generator: torch.Generator,
    reverse: bool,
    num_chains: int,
    adapt: tuple[float, float] | None = None,
):
    """One (forward or reverse) annealing pass of all ``n = C * B`` chains.

    ``step_sizes``: ``(T, B)``, the step size of the transition at each temperature. With
    ``adapt = (target, rate)`` (pilot run) each chain adapts its own step size as it goes,
    ``log eps += rate * (accept - target)``, and the per-datapoint geometric means over
    chains are returned as the new ``(T, B)`` schedule.
    """
    n = start.shape[0]
    batch = n // num_chains
    num_temps = betas.shape[0] - 1
    dtype = start.dtype
    log_w = start.new_zeros(n)
    u = start
    accept_sum = start.new_zeros(n)
    num_moves = 0
    learned = start.new_empty(num_temps, batch)
    eps = step_sizes[0].to(dtype).repeat(num_chains) if adapt else None
    inverse_mass = torch.ones_like(u)
    # forward: weight at beta_t then move with f_t (t = 1..T, no move after the last weight);
    # reverse: weight at beta_{t-1} then move with f_{t-1} (t = T..1, no move after t = 1).
    order = range(1, num_temps + 1) if not reverse else range(num_temps, 0, -1)
    # With a potential that provides its gradients, the parts (log p_0, increment and their
    # gradients) at the chains' positions are kept: a transition ends where its last leapfrog
    # step evaluated them (accepted) or where it started (rejected), so the next temperature
    # recombines them with its beta instead of evaluating the model again.
    parts = None
    for step_index, t in enumerate(order):
        beta_now, beta_prev = (float(betas[t]), float(betas[t - 1]))
        target_beta = beta_now if not reverse else beta_prev
        if annealed.provides_grad:
            if parts is None:
                parts = annealed.parts_and_grads(u)
            value, grad, increment = _combine(parts, target_beta)
        else:
            value, grad, increment = annealed.evaluate(u, target_beta)
        log_w = log_w + (beta_now - beta_prev) * increment * (1.0 if not reverse else -1.0)
        if step_index == num_temps - 1:
            break
        # the transition leaves f at target_beta invariant; its step size is the schedule's
        # entry for that temperature (index t - 1 forward, t - 2 reverse: the f_1..f_{T-1}
        # transitions are indexed 0..T-2 in both directions)
        k = t - 1 if not reverse else t - 2
        if adapt:
            step = eps
        else:
            step = step_sizes[k].to(dtype).repeat(num_chains)
        potential = annealed.potential(target_beta)
        state, info = hmc.step(
            hmc.HMCState(u, value, grad),
            potential,
            step_size=step,
            inverse_mass=inverse_mass,
            num_steps=num_leapfrog,
            generator=generator,
        )
        u = state.position
        if parts is not None:
            # after the rows were evaluated apart, the next temperature evaluates them anew
            whole = potential.last_parts_whole or potential.last_parts is None
            parts = _select(info.accepted, potential.last_parts, parts) if whole else None
        accept_sum += info.accept_prob
        num_moves += 1
        if adapt:
            target, rate = adapt
            learned[k] = torch.exp(torch.log(eps).reshape(num_chains, batch).mean(0))
            eps = eps * torch.exp(rate * (info.accept_prob - target))
    accept = accept_sum / max(num_moves, 1)
    return log_w, accept, learned


def _combine(parts, beta: float):
    """``(U_beta, dU_beta/du, increment)`` from ``(log p_0, increment, their gradients)``:
    the arithmetic of :meth:`_Annealed.evaluate`."""
    log_p0, increment, g_p0, g_inc = parts
    return -(log_p0 + beta * increment), -(g_p0 + beta * g_inc), increment


def _select(accepted: torch.Tensor, new, old):
    """Per chain, the parts at the proposal (accepted) or at the start (rejected)."""
    if new is None:  # the trajectory's last evaluation failed: nothing was accepted
        return old
    out = []
    for a, b in zip(new, old, strict=True):
        keep = accepted if a.dim() == 1 else accepted.unsqueeze(-1)
        out.append(torch.where(keep, a, b))
    return tuple(out)


def _pilot_schedule(
    annealed_factory, betas, num_leapfrog, target_accept, pilot_chains, generator, init_step
):
    """Per-datapoint step sizes for every temperature from an adaptive pilot AIS run."""
    annealed = annealed_factory(pilot_chains)
    start = annealed.sample_init()
    n = start.shape[0]
    batch = n // pilot_chains
    # a starting step size for the first temperature, by the doubling/halving heuristic
    value, grad, _ = annealed.evaluate(start, float(betas[1]))
    eps0 = hmc.find_reasonable_step_size(
        hmc.HMCState(start, value, grad),
        annealed.potential(float(betas[1])),
        start.new_full((n,), init_step),
        generator=generator,
    )
    eps0 = torch.exp(torch.log(eps0).reshape(pilot_chains, batch).mean(0))
    num_temps = betas.shape[0] - 1
    schedule = eps0.unsqueeze(0).expand(max(num_temps - 1, 1), batch)
    _, accept, learned = _run(
        annealed,
        start,
        betas,
        schedule,
        num_leapfrog=num_leapfrog,
        generator=generator,
        reverse=False,
        num_chains=pilot_chains,
        adapt=(target_accept, 0.5),
    )
    return learned[: max(num_temps - 1, 1)], accept


def ais(
    model: Callable,
    guide: Callable | None,
    x: torch.Tensor,
    *,
    num_chains: int = 16,
    num_temps: int = 500,
    num_leapfrog: int = 5,
    init: str = "encoder",
    schedule: str = "sigmoid",
    target_accept: float = 0.8,
    pilot_chains: int = 4,
    plate_name: str = "data",
    generator: torch.Generator | None = None,
    global_values: dict | None = None,
    device=None,
    dtype=None,
    fast: str = "auto",
) -> AISResult:
    """Forward AIS estimate of ``log p(x_i)`` (a stochastic lower bound), per datapoint.

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``fn(x)``; the guide is needed for ``init="encoder"``.
    x : torch.Tensor
        ``(B, data_dim)``.
    num_chains : int
        C, independent annealing chains per datapoint.
    num_temps : int
        T >= 2, the number of annealing steps (``beta_0 = 0`` to ``beta_T = 1``).
    num_leapfrog : int
        Leapfrog steps per HMC transition (one transition per intermediate temperature).
    init : {"encoder", "prior"}
        Initial distribution ``p_0``: the guide ``q(z | x_i)`` or the prior ``p(z)``.
    schedule : {"sigmoid", "linear"}
        Spacing of the ``beta_t`` (:func:`annealing_schedule`).
    target_accept : float
        Acceptance targeted by the pilot run that fixes the step sizes.
    pilot_chains : int
        Chains per datapoint of the pilot run (its cost is ``pilot_chains / num_chains`` of
        the main run's).
    plate_name : str
        Name of the data plate.
    generator : torch.Generator, optional
        Source of the HMC randomness, on the device the chains run on; initial draws use
        torch's global RNG (Pyro's).
    device, dtype : optional
        Where and in which precision to run: ``x`` and the modules owning the programs (a
        ``VAE``'s ``model``/``guide``) are moved there in place (see
        :func:`pyro_aevb.device.place`); default: where the modules are.
    fast : {"auto", "on", "off"}
        The potential (:func:`~pyro_aevb.mcmc.potentials.make_potential`): hand-derived for
        the paper's VAE, recorded once for other models, or traced at every evaluation
        (``"off"``). All datapoints x chains are evaluated together, in row chunks of bounded
        memory. The potentials agree to float rounding; with the same seed the estimates
        agree to rounding for short runs and, as HMC amplifies a rounding difference along
        the chains, within their Monte Carlo error for long ones (measured by
        ``benchmarks/marginal_likelihood.py``).

    Returns
    -------
    AISResult
    """
    t_start = time.perf_counter()
    run = _AISRun(
        model,
        guide,
        x,
        num_chains,
        num_temps,
        num_leapfrog,
        init,
        schedule,
        target_accept,
        pilot_chains,
        plate_name,
        generator,
        global_values,
        device,
        dtype,
        fast,
    )
    result = run.estimate()
    result.seconds = time.perf_counter() - t_start
    return result


def bdmc(
    model: Callable,
    guide: Callable | None,
    x: torch.Tensor,
    z: torch.Tensor | dict,
    *,
    num_chains: int = 16,
    num_temps: int = 500,
    num_leapfrog: int = 5,
    init: str = "encoder",
    schedule: str = "sigmoid",
    target_accept: float = 0.8,
    pilot_chains: int = 4,
    plate_name: str = "data",
    generator: torch.Generator | None = None,
    global_values: dict | None = None,
    device=None,
    dtype=None,
    fast: str = "auto",
) -> tuple[AISResult, AISResult]:
    """Bidirectional Monte Carlo: forward AIS (lower bound) and reverse AIS from exact
    posterior samples (upper bound), with the same step-size schedule and settings.

    Parameters
    ----------
    z : torch.Tensor or dict
        Exact posterior samples for ``x``: for data simulated from the model, the latents it
        was simulated with (see :func:`simulate_data`). Either a dict of constrained site
        values (each with batch ``B`` along the data plate), or an unconstrained flat ``(B, D)``
        tensor in the :class:`~pyro_aevb.mcmc.potential.LatentLayout` order. Every reverse
        chain of datapoint ``i`` starts from this one sample.
    (others)
        As for :func:`ais`.

    Returns
    -------
    (forward, reverse) : tuple of AISResult
        ``forward.estimate <= log p(x_i) <= reverse.estimate`` in expectation. The reverse
        bound is an expectation over the exact sample ``z`` too, and every reverse chain of a
        datapoint starts from the same one: its standard error is the spread of the chains
        *given* that ``z`` and leaves out how ``z`` moves the bound. With few temperatures a
        datapoint's upper bound can therefore lie below ``log p(x_i)`` by many of its
        standard errors (a negative ``gap``); the sandwich is meant for the mean over many
        simulated datapoints, and tightens as ``num_temps`` grows.
    """
    t_start = time.perf_counter()
    run = _AISRun(
        model,
        guide,
        x,
        num_chains,
        num_temps,
        num_leapfrog,
        init,
        schedule,
        target_accept,
        pilot_chains,
        plate_name,
        generator,
        global_values,
        device,
        dtype,
        fast,
    )
    z_flat = _flat_exact_sample(run.annealed.pot, z, run.x.shape[0])
    t_pilot = time.perf_counter()
    forward = run.estimate()
    forward.seconds = time.perf_counter() - t_start
    t_rev = time.perf_counter()
    reverse = run.estimate(reverse_from=z_flat.repeat(run.num_chains, 1))
    reverse.seconds = time.perf_counter() - t_rev + (t_pilot - t_start)
    return forward, reverse


class _AISRun:
    """Validated settings, the pilot step-size schedule, and forward/reverse passes."""

    def __init__(
        self,
        model,
        guide,
        x,
        num_chains,
        num_temps,
        num_leapfrog,
        init,
        schedule,
        target_accept,
        pilot_chains,
        plate_name,
        generator,
        global_values=None,
        device=None,
        dtype=None,
        fast="auto",
    ):
        x, device = place(check_data(x, "x"), (model, guide), device=device, dtype=dtype)
        check_generator(generator, device)
        self.x = x
        self.num_chains = check_positive_int(num_chains, "num_chains")
        num_temps = check_positive_int(num_temps, "num_temps", minimum=2)
        self.num_leapfrog = check_positive_int(num_leapfrog, "num_leapfrog")
        check_choice(init, "init", INITS)
        self.target_accept = check_target_accept(target_accept)
        self.pilot_chains = check_positive_int(pilot_chains, "pilot_chains")
        if init == "encoder" and guide is None:
            raise ValueError(
                "init='encoder' anneals from the guide q(z|x): pass a guide, or use init='prior'"
            )
        self.betas = annealing_schedule(num_temps, schedule)
        self.generator = generator

        program = as_program(
            model, guide, self.x, plate_name=plate_name, global_values=global_values
        )
        self.program = program

        def factory(chains):
            return _Annealed(make_potential(program, self.x, num_chains=chains, fast=fast), init)

        self.step_sizes, self.pilot_accept = _pilot_schedule(
            factory,
            self.betas,
            self.num_leapfrog,
            self.target_accept,
            self.pilot_chains,
            generator,
            0.1,
        )
        self.annealed = factory(self.num_chains)

    def estimate(self, reverse_from: torch.Tensor | None = None) -> AISResult:
        reverse = reverse_from is not None
        with torch.no_grad():
            start = self.annealed.sample_init() if not reverse else reverse_from
        log_w, accept, _ = _run(
            self.annealed,
            start,
            self.betas,
            self.step_sizes,
            num_leapfrog=self.num_leapfrog,
            generator=self.generator,
            reverse=reverse,
            num_chains=self.num_chains,
        )
        log_w = log_w.reshape(self.num_chains, -1)
        estimate, stderr = logmeanexp_with_stderr(log_w, dim=0)
        if reverse:
            estimate = -estimate
        accept = accept.reshape(self.num_chains, -1).mean(0)
        warn_non_finite("bdmc (reverse AIS)" if reverse else "ais", estimate)
        if self.num_chains > 1:
            # one chain carrying the mean: the stderr then reads ~1 nat whatever the error
            bound = (
                "upper bounds) may sit well above"
                if reverse
                else "lower bounds) may sit well below"
            )
            start_hint = self.annealed.init == "prior" and not reverse
            warn_unreliable(
                "bdmc (reverse AIS)" if reverse else "ais",
                estimate,
                [
                    (
                        "fewer than 2 effective chains",
                        fewer_than_two_effective(importance_ess(log_w)),
                    )
                ],
                f"their standard errors are not to be trusted, and their estimates (stochastic "
                f"{bound} log p(x); more temperatures (num_temps) or chains"
                + (", or init='encoder' with a guide" if start_hint else ""),
            )
        diagnostics = {
            "accept_rate": accept,
            "pilot_accept_rate": self.pilot_accept.reshape(self.pilot_chains, -1).mean(0),
            "step_size_first": self.step_sizes[0],
            "step_size_last": self.step_sizes[-1],
            "log_weight_std": log_w.std(0) if self.num_chains > 1 else torch.zeros_like(estimate),
            "ess": importance_ess(log_w),  # effective chains, out of num_chains
            "potential": self.annealed.pot.path,
        }
        return AISResult(log_w, estimate, stderr, accept, 0.0, diagnostics)


def _flat_exact_sample(pot: PerDatapointPotential, z, batch: int) -> torch.Tensor:
    if isinstance(z, dict):
        missing = [s for s in pot.layout.names if s not in z]
        if missing:
            raise ValueError(f"z must hold a value for every latent site; missing {missing}")
        flat = pot.flatten({s: z[s] for s in pot.layout.names})
    elif isinstance(z, torch.Tensor):
        flat = z
    else:
        raise TypeError(
            f"z must be a dict of latent site values or a (batch, D) tensor, got {type(z).__name__}"
        )
    if flat.shape != (batch, pot.dim):
        raise ValueError(
            f"z must give one exact posterior sample per datapoint: expected unconstrained "
            f"shape (batch, D) = {(batch, pot.dim)}, got {tuple(flat.shape)}"
        )
    if not bool(torch.isfinite(flat).all()):
        raise ValueError("z contains non-finite values (NaN or inf)")
    return flat.to(device=pot.x.device, dtype=pot.dtype)


@torch.no_grad()
def simulate_data(
    model: Callable,
    x_template: torch.Tensor,
    *,
    obs_site: str | None = None,
    plate_name: str = "data",
    global_values: dict | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Simulate ``(x, z)`` from the model: latents from the prior, observations given them.

    Runs ``model(x_template)`` under :func:`pyro.poutine.uncondition`, so every observed site
    is sampled; ``x_template`` only fixes the batch size and shape. The latents are exact
    posterior samples for the simulated ``x`` (what :func:`bdmc` needs). Global latents
    (outside the data plate) are drawn from the prior too, or fixed at ``global_values``; they
    are returned in ``z`` as well, and :func:`~pyro_aevb.evaluate.log_marginal` with
    ``method="bdmc"`` conditions on them. Uses torch's global RNG.

    Parameters
    ----------
    obs_site : str, optional
        The observed site whose value is the data (default: the only observed site inside the
        data plate with the shape of ``x_template``).
    global_values : dict, optional
        Values of global latents to simulate with.

    Returns
    -------
    (x, z)
        ``x`` with the shape of ``x_template``; ``z`` a dict of latent site values (local
        ones with the data plate's batch, global ones as drawn).
    """
    x_template = check_data(x_template, "x_template")
    simulator = poutine.uncondition(model)
    if global_values:
        # outside uncondition, or it would turn the given values back into draws
        simulator = poutine.condition(simulator, data=global_values)
    with poutine.block():
        trace = poutine.trace(simulator).get_trace(x_template)
    observed, latents = [], {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        local = plate_frame(site, plate_name) is not None
        if global_values and name in global_values:
            latents[name] = site["value"]
        elif site["infer"].get("was_observed"):
            if local:
                observed.append(name)
        elif not site["is_observed"] and not site["infer"].get("_do_not_trace"):
            latents[name] = site["value"]
    if obs_site is None:
        candidates = [n for n in observed if trace.nodes[n]["value"].shape == x_template.shape]
        if len(candidates) != 1:
            raise ValueError(
                f"cannot tell which observed site is the data: candidates {candidates} among "
                f"observed sites {observed}; pass obs_site="
            )
        obs_site = candidates[0]
    elif obs_site not in observed:
        raise ValueError(f"obs_site '{obs_site}' is not an observed site of the model: {observed}")
    x = trace.nodes[obs_site]["value"].to(x_template.dtype)
    latents = {k: v for k, v in latents.items() if k != obs_site}
    return x, latents
