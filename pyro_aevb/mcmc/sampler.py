r"""The batched HMC sampler: warm-up with per-chain adaptation, then draws.

:func:`sample` drives the pure kernel of :mod:`pyro_aevb.mcmc.hmc` over ``n`` independent
chains (one or several per datapoint): during warm-up each chain's step size follows dual
averaging toward ``target_accept`` and, in Stan's slow windows, its diagonal inverse mass is
set to the variance of its draws (pooled over a datapoint's chains)
(:mod:`pyro_aevb.mcmc.adaptation`); after warm-up the step sizes and masses are fixed and the
draws are kept. The result carries per-datapoint diagnostics (acceptance, divergences, ArviZ
ESS and R-hat) and converts to an ArviZ ``InferenceData``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from pyro.ops.welford import WelfordCovariance

from ..device import check_generator, resolve_device
from ..validation import check_bool, check_positive_float, check_positive_int
from . import hmc
from .adaptation import (
    check_target_accept,
    step_size_adapt_final,
    step_size_adapt_init,
    step_size_adapt_update,
    warmup_windows,
)
from .diagnostics import ess_rhat
from .hmc import PotentialFn

__all__ = ["BatchedHMCResult", "sample"]


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
        (there is none for one chain).
        """
        out = {
            "accept_rate": self.per_datapoint(self.accept_rate).mean(0),
            "warmup_accept_rate": self.per_datapoint(self.warmup_accept_rate).mean(0),
            "step_size": self.per_datapoint(self.step_size).mean(0),
            "num_divergent": self.per_datapoint(self.diverging.sum(0)).sum(0),
        }
        out.update(ess_rhat(self.by_chain(self.samples), rhat=rhat))
        return out


def _check_positive_tensor(t, name: str, shapes: set, n: int) -> None:
    """A tensor step size or inverse mass: one of ``shapes``, every entry finite and > 0 (a
    zero, negative or NaN entry freezes its chain without any error)."""
    if tuple(t.shape) not in shapes:
        expected = " or ".join(str(s) for s in sorted(shapes, key=len))
        raise ValueError(
            f"{name} must have shape {expected} ({n} chains: num_chains x batch, chain-major), "
            f"got {tuple(t.shape)}"
        )
    bad = ~(torch.isfinite(t) & (t > 0))
    if bool(bad.any()):
        where = tuple(bad.nonzero()[0].tolist())
        raise ValueError(
            f"{name} must be finite and > 0 everywhere, got {float(t[where])} at index {where}"
        )


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
    device=None,
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
    device : str or torch.device, optional
        Where the chains run (default: ``init_position``'s device). ``init_position``,
        ``inverse_mass`` and a tensor ``step_size`` are moved there; ``potential_fn`` must
        compute on it (a :class:`~pyro_aevb.mcmc.potential.PerDatapointPotential` runs where
        its data and model are) and ``generator`` must live on it.

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
    if torch.is_tensor(step_size):
        _check_positive_tensor(step_size, "step_size", {(), (n,)}, n)
    if inverse_mass is not None:
        _check_positive_tensor(inverse_mass, "inverse_mass", {tuple(init_position.shape)}, n)
    max_delta_energy = check_positive_float(max_delta_energy, "max_delta_energy")
    adapt_step_size = check_bool(adapt_step_size, "adapt_step_size")
    adapt_mass = check_bool(adapt_mass, "adapt_mass")
    step_size_jitter = check_positive_float(step_size_jitter, "step_size_jitter", allow_zero=True)
    if step_size_jitter >= 1.0:
        raise ValueError(f"step_size_jitter must be in [0, 1), got {step_size_jitter}")
    device = resolve_device(device) or init_position.device
    init_position = init_position.to(device)
    check_generator(generator, device)
    t_start = time.perf_counter()
    state = hmc.init(potential_fn, init_position)
    eps = torch.as_tensor(
        0.1 if step_size is None else step_size, dtype=init_position.dtype, device=device
    )
    eps = eps.expand(n).clone()
    inv_mass = torch.ones_like(init_position) if inverse_mass is None else inverse_mass.to(device)
    kw = {
        "num_steps": num_steps,
        "generator": generator,
        "max_delta_energy": max_delta_energy,
        "step_size_jitter": step_size_jitter,
    }
    if step_size is None:
        eps = hmc.find_reasonable_step_size(state, potential_fn, eps, inv_mass, generator=generator)
    windows = warmup_windows(num_warmup, adapt_mass) if (adapt_step_size or adapt_mass) else []
    adapt = step_size_adapt_init(eps, target_accept) if adapt_step_size and num_warmup else None
    welford = WelfordCovariance(diagonal=True)
    window = 0
    warmup_accept = torch.zeros_like(state.potential)
    for t in range(num_warmup):
        state, info = hmc.step(state, potential_fn, step_size=eps, inverse_mass=inv_mass, **kw)
        warmup_accept += info.accept_prob
        if adapt is not None:
            adapt = step_size_adapt_update(adapt, info.accept_prob)
            eps = adapt.step_size
        if not windows:
            continue
        slow = adapt_mass and 0 < window < len(windows) - 1
        if slow:
            welford.update(state.position)
        if t == windows[window].end:
            if window == len(windows) - 1:
                if adapt is not None:
                    eps = step_size_adapt_final(adapt)
            elif slow:
                var = welford.get_covariance(regularize=True)
                # pool the variance estimates of one datapoint's chains
                inv_mass = var.reshape(num_chains, -1, var.shape[-1]).mean(0).repeat(num_chains, 1)
                welford.reset()
                if adapt is not None:  # a step size given without adaptation stays fixed
                    eps = hmc.find_reasonable_step_size(
                        state, potential_fn, eps, inv_mass, generator=generator
                    )
                    adapt = step_size_adapt_init(eps, target_accept)
            window += 1
    warmup_accept = warmup_accept / max(num_warmup, 1)

    draws, potentials, accepts, divs = [], [], [], []
    for t in range(num_samples * thin):
        state, info = hmc.step(state, potential_fn, step_size=eps, inverse_mass=inv_mass, **kw)
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
        step_size=eps,
        inverse_mass=inv_mass,
        warmup_accept_rate=warmup_accept,
        num_chains=num_chains,
        settings=settings,
        seconds=time.perf_counter() - t_start,
    )
