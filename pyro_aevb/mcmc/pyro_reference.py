r"""Reference posterior sampler: Pyro's own :class:`~pyro.infer.MCMC` (HMC or NUTS), one
datapoint at a time.

Pyro's MCMC has one step size, one mass matrix and one accept/reject for its whole state, so
the only way to sample each datapoint's posterior ``p(z_i | x_i)`` as its own problem (with
its own adaptation) is one ``MCMC`` run per datapoint (and per chain). That is slow, and is
why :mod:`pyro_aevb.mcmc.hmc` exists; this module is the independent reference it is checked
against, and a fallback for models the batched path cannot handle.

Each run conditions the model on one row ``x[i:i+1]``; sites outside the data plate that are
not latent (e.g. the VAE's ``"weight_prior"`` factor) are hidden with ``poutine.block``: they
are constant in ``z`` and not part of ``log p(x_i)``. Chains are run one after another, each
as ``MCMC(..., num_chains=1)``, so runs are reproducible and no worker processes are spawned.
The draws come back both in the model's constrained space and flattened to the unconstrained
``(D,)`` layout of :class:`~pyro_aevb.mcmc.potential.LatentLayout`, plus an ArviZ
``InferenceData`` (posterior with a ``datapoint`` dimension, divergences, acceptance) from
which R-hat and ESS are computed when several chains run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyro.poutine as poutine
import torch
from pyro.infer import HMC, MCMC, NUTS

from ..device import fork_rng
from ..poutine import LatentLayout, as_program, flatten_in_model, plate_frame, replicate_rows
from ..poutine.layout import same_support
from ..validation import check_choice, check_data, check_positive_int, check_seed
from .adaptation import check_target_accept
from .diagnostics import ess_rhat

__all__ = ["PyroMCMCResult", "sample_posterior_pyro", "KERNELS"]

KERNELS = ("nuts", "hmc")

logger = logging.getLogger("pyro_aevb")


@dataclass
class PyroMCMCResult:
    """Posterior draws of :func:`sample_posterior_pyro`.

    Attributes
    ----------
    samples : torch.Tensor
        ``(C, S, B, D)`` unconstrained draws in the layout's flat order.
    constrained : dict of str to torch.Tensor
        Per latent site, ``(C, S, B) + site_shape_per_datapoint`` constrained draws.
    inference_data : arviz.InferenceData
        Posterior (constrained sites, dims ``chain, draw, datapoint, ...``) and sample stats
        (``diverging``).
    accept_rate, step_size, num_divergent : torch.Tensor
        ``(C, B)`` per run: Pyro's acceptance rate, the adapted step size, divergent draws.
    seconds : float
        Total wall time of all runs.
    layout : LatentLayout
        The flat layout of ``samples``.
    settings : dict
    """

    samples: torch.Tensor
    constrained: dict
    inference_data: object
    accept_rate: torch.Tensor
    step_size: torch.Tensor
    num_divergent: torch.Tensor
    seconds: float
    layout: LatentLayout
    settings: dict = field(default_factory=dict)

    @property
    def seconds_per_datapoint(self) -> float:
        return self.seconds / self.samples.shape[2]

    def diagnostics(self) -> dict:
        """Per-datapoint acceptance, step size, divergences, and ArviZ ESS / R-hat.

        ESS is ArviZ's bulk ESS (minimum over a datapoint's latent coordinates); R-hat (the
        maximum) is only reported with at least 2 chains per datapoint. Both are taken on the
        unconstrained draws the chains move in (:attr:`samples`): ESS is the same on the
        constrained draws of :attr:`inference_data` (rank-normalised), R-hat's folded part
        can differ a little there for a constrained latent (``log``/``logit`` change the
        folding).
        """
        out = {
            "accept_rate": self.accept_rate.mean(0),
            "step_size": self.step_size.mean(0),
            "num_divergent": self.num_divergent.sum(0),
        }
        out.update(ess_rhat(self.samples, rhat=self.samples.shape[0] > 1))
        return out


def _local_only(model: Callable, plate_name: str) -> Callable:
    """Hide non-latent sites outside the data plate (constants in z, not in log p(x_i))."""

    def hide(msg):
        return (
            msg["type"] == "sample" and msg["is_observed"] and plate_frame(msg, plate_name) is None
        )

    return poutine.block(model, hide_fn=hide)


def _stack_samples(values: torch.Tensor, plate_dim: int) -> torch.Tensor:
    """``(S,) + site_shape`` (plate size 1) -> the site shape with the plate dim of size S."""
    return torch.cat(list(values), dim=plate_dim)


def _bounds_following_latents(model: Callable, x: torch.Tensor, names: list) -> list:
    """The sites among ``names`` (latents whose support has tensor bounds) whose bounds change
    between two runs of ``model`` on the same ``x`` with other draws: bounds that follow
    another latent. Bounds from the data or the parameters are the same in both runs (and
    per datapoint, Pyro's transform built once is right for them)."""
    if not names:
        return []
    with poutine.block(), torch.no_grad(), fork_rng():
        first, second = (poutine.trace(model).get_trace(x) for _ in range(2))
    return [
        n
        for n in names
        if not same_support(first.nodes[n]["fn"].support, second.nodes[n]["fn"].support)
    ]


def sample_posterior_pyro(
    model: Callable,
    x: torch.Tensor,
    *,
    kernel: str = "nuts",
    num_samples: int = 50,
    num_warmup: int = 200,
    num_chains: int = 1,
    target_accept: float = 0.9,
    num_steps: int = 4,
    trajectory_length: float | None = None,
    max_tree_depth: int = 10,
    adapt_mass: bool = True,
    guide: Callable | None = None,
    initial_positions: torch.Tensor | None = None,
    plate_name: str = "data",
    seed: int = 0,
    global_values: dict | None = None,
) -> PyroMCMCResult:
    """Sample each datapoint's posterior with :class:`pyro.infer.MCMC`, one run per datapoint
    and chain.

    Parameters
    ----------
    model : callable
        Pyro model called as ``model(x)``, local latents in ``pyro.plate(plate_name)``.
    x : torch.Tensor
        ``(B, data_dim)`` observations.
    kernel : {"nuts", "hmc"}
        Pyro's :class:`~pyro.infer.NUTS` or :class:`~pyro.infer.HMC`.
    num_samples, num_warmup : int
        Draws kept and warm-up iterations per chain.
    num_chains : int
        Chains per datapoint (run sequentially).
    target_accept : float
        Pyro's ``target_accept_prob`` for step-size adaptation (the paper: 0.9).
    num_steps, trajectory_length : int, float
        HMC only. ``num_steps`` leapfrog steps per transition whatever the adapted step size
        (the paper's 4; Pyro's own ``HMC(num_steps=...)`` would instead keep the trajectory
        length ``step_size * num_steps`` fixed and take ``int(4 / step_size)`` steps once the
        step size shrinks); or ``trajectory_length``, Pyro's way, which then sets the number
        of steps from the adapted step size.
    max_tree_depth : int
        NUTS only.
    adapt_mass : bool
        Pyro's diagonal mass-matrix adaptation.
    guide : callable, optional
        If given, each chain starts at a draw from ``guide(x_i)`` (else Pyro's
        ``init_to_uniform``).
    initial_positions : torch.Tensor, optional
        ``(num_chains, B, D)`` starting points in the flat unconstrained layout of
        :class:`~pyro_aevb.mcmc.potential.LatentLayout` (e.g. from
        :func:`~pyro_aevb.mcmc.initialization.importance_resampled_init`); overrides
        ``guide``.
    plate_name : str
        Name of the data plate.
    seed : int
        Run ``(i, c)`` seeds torch's RNG with ``seed``, ``i`` and ``c`` inside
        :func:`torch.random.fork_rng`, so the caller's RNG state is untouched.
    global_values : dict, optional
        Values of global latents to condition on (default: the guide's point estimate; see
        :class:`~pyro_aevb.poutine.PerDatapointProgram`).

    Returns
    -------
    PyroMCMCResult
    """
    x = check_data(x, "x")
    check_choice(kernel, "kernel", KERNELS)
    num_samples = check_positive_int(num_samples, "num_samples")
    num_warmup = check_positive_int(num_warmup, "num_warmup", minimum=0)
    num_chains = check_positive_int(num_chains, "num_chains")
    num_steps = check_positive_int(num_steps, "num_steps")
    target_accept = check_target_accept(target_accept)
    seed = check_seed(seed)
    batch = x.shape[0]

    program = as_program(model, guide, x, plate_name=plate_name, global_values=global_values)
    layout = program.layout
    model, guide = program.model, program.guide
    if initial_positions is not None:
        expected = (num_chains, batch, layout.dim)
        if tuple(initial_positions.shape) != expected:
            raise ValueError(
                f"initial_positions must have shape (num_chains, batch, D) = {expected}, got "
                f"{tuple(initial_positions.shape)}"
            )
    local_model = _local_only(model, plate_name)
    following = _bounds_following_latents(model, x, [s.name for s in layout.sites if not s.fixed])
    if following:
        raise ValueError(
            f"the support bounds of latent site(s) {following} follow another latent "
            f"(Uniform(0, s)): Pyro's MCMC builds each site's transform once, from its first "
            f"trace, so its draws would not come from the posterior. Use pyro-aevb's own "
            f"sampler (sampler='hmc' in appendix_d, pyro_aevb.mcmc.sample), which takes the "
            f"transform where the model runs"
        )
    draws = {s.name: [] for s in layout.sites}
    flat = []
    accept = torch.zeros(num_chains, batch)
    step_sizes = torch.zeros(num_chains, batch)
    divergent = torch.zeros(num_chains, batch, dtype=torch.long)
    diverging = np.zeros((num_chains, num_samples, batch), dtype=bool)
    t_start = time.perf_counter()
    for c in range(num_chains):
        site_draws = {s.name: [] for s in layout.sites}
        chain_flat = []
        for i in range(batch):
            xi = x[i : i + 1]
            with fork_rng():
                torch.manual_seed(_run_seed(seed, i, c))
                if initial_positions is not None:
                    initial_params = _unflatten_unconstrained(initial_positions[c, i], layout)
                elif guide is not None:
                    initial_params = _initial_params(model, guide, xi, layout)
                else:
                    initial_params = None
                kern = _make_kernel(
                    kernel,
                    local_model,
                    target_accept,
                    num_steps,
                    trajectory_length,
                    max_tree_depth,
                    adapt_mass,
                )
                mcmc = MCMC(
                    kern,
                    num_samples=num_samples,
                    warmup_steps=num_warmup,
                    num_chains=1,
                    initial_params=initial_params,
                    disable_progbar=True,
                )
                mcmc.run(xi)
            samples = mcmc.get_samples()
            values = {}
            for s in layout.sites:
                v = samples[s.name]  # (S,) + site shape with plate size 1
                site_draws[s.name].append(v)
                values[s.name] = _stack_samples(v, s.plate_dim)
            rows = replicate_rows(xi, num_samples)
            chain_flat.append(flatten_in_model(model, rows, layout, values))  # (S, D)
            diag = mcmc.diagnostics()
            accept[c, i] = float(diag["acceptance rate"]["chain 0"])
            divs = list(diag["divergences"]["chain 0"])
            divergent[c, i] = len(divs)
            diverging[c, divs, i] = True
            step_sizes[c, i] = float(kern.step_size)
        for s in layout.sites:
            # (S, B) + per-datapoint site shape, with the plate dim moved next to S
            stacked = torch.stack(site_draws[s.name], dim=1)  # (S, B) + site shape (plate=1)
            stacked = stacked.squeeze(s.plate_dim)
            draws[s.name].append(stacked)
        flat.append(torch.stack(chain_flat, dim=1))  # (S, B, D)
    seconds = time.perf_counter() - t_start
    constrained = {name: torch.stack(v) for name, v in draws.items()}  # (C, S, B, ...)
    samples = torch.stack(flat)  # (C, S, B, D)
    settings = {
        "kernel": kernel,
        "num_samples": num_samples,
        "num_warmup": num_warmup,
        "num_chains": num_chains,
        "target_accept": target_accept,
        "adapt_mass": adapt_mass,
    }
    if kernel == "hmc":
        settings["num_steps"] = num_steps
        settings["trajectory_length"] = trajectory_length
    else:
        settings["max_tree_depth"] = max_tree_depth
    return PyroMCMCResult(
        samples=samples,
        constrained=constrained,
        inference_data=_inference_data(constrained, diverging),
        accept_rate=accept,
        step_size=step_sizes,
        num_divergent=divergent,
        seconds=seconds,
        layout=layout,
        settings=settings,
    )


def _run_seed(seed: int, i: int, c: int) -> int:
    return int(np.random.SeedSequence([seed, i, c]).generate_state(1)[0])


def _make_kernel(kernel, model, target_accept, num_steps, trajectory_length, depth, adapt_mass):
    if kernel == "nuts":
        return NUTS(
            model,
            target_accept_prob=target_accept,
            max_tree_depth=depth,
            adapt_mass_matrix=adapt_mass,
        )
    if trajectory_length is not None:
        return HMC(
            model,
            trajectory_length=trajectory_length,
            target_accept_prob=target_accept,
            adapt_mass_matrix=adapt_mass,
        )
    return FixedStepsHMC(
        model,
        num_steps=num_steps,
        target_accept_prob=target_accept,
        adapt_mass_matrix=adapt_mass,
    )


class FixedStepsHMC(HMC):
    """Pyro's :class:`~pyro.infer.mcmc.HMC` with ``num_steps`` leapfrog steps per transition
    at every step size (Pyro's keeps ``step_size * num_steps`` fixed while it adapts the step
    size, so its number of steps grows as the step size shrinks)."""

    def __init__(self, model, num_steps: int, **kwargs):
        super().__init__(model, step_size=1.0, num_steps=num_steps, **kwargs)
        self._fixed_num_steps = num_steps

    @property
    def num_steps(self) -> int:
        return self._fixed_num_steps


@torch.no_grad()
def _initial_params(model, guide, xi, layout: LatentLayout) -> dict[str, torch.Tensor]:
    """A draw from the guide at one datapoint, in Pyro MCMC's unconstrained space."""
    with poutine.block():
        trace = poutine.trace(guide).get_trace(xi)
    values = {s.name: trace.nodes[s.name]["value"] for s in layout.sites}
    return _unflatten_unconstrained(flatten_in_model(model, xi, layout, values)[0], layout)


def _unflatten_unconstrained(position: torch.Tensor, layout: LatentLayout) -> dict:
    """A flat ``(D,)`` unconstrained position as Pyro MCMC's per-site ``initial_params``."""
    return {s.name: s.block(position[None]) for s in layout.sites}


def _inference_data(constrained: dict, diverging: np.ndarray):
    import arviz as az

    posterior, dims = {}, {}
    for name, v in constrained.items():
        arr = v.detach().cpu().numpy()  # (C, S, B, ...)
        posterior[name] = arr
        dims[name] = ["datapoint"] + [f"{name}_dim_{k}" for k in range(arr.ndim - 3)]
    return az.from_dict(
        posterior=posterior,
        sample_stats={"diverging": diverging},
        dims={**dims, "diverging": ["datapoint"]},
    )
