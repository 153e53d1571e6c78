r"""Where does the ELBO lose? The approximation and amortization gaps (Cremer et al. 2018).

For each datapoint, with ``q`` the encoder's distribution and ``q*`` the best member of the
same family for that datapoint (found by :func:`~pyro_aevb.infer.refine.refine`)::

    log p(x_i) - L_i[q]  =  [log p(x_i) - L_i[q*]]  +  [L_i[q*] - L_i[q]]
                         =   approximation gap       +   amortization gap

The approximation gap is ``KL(q* || p(z | x_i))``: the family cannot do better. The
amortization gap is what one encoder shared by all datapoints loses against the family's best
per datapoint. ``log p(x_i)`` is estimated by AIS (or IWAE with a stated K) with ``q*`` as its
proposal / initial distribution, the two bounds by many guide draws (estimator A), each with
its Monte Carlo standard error; the gaps' errors combine them (independent draws).

Why ``q*`` for ``log p(x)``: both estimators are stochastic lower bounds whose looseness grows
with the distance from the proposal to the posterior. With the encoder's ``q`` as proposal,
a poor encoder makes the ``log p(x)`` estimate looser than ``L[q*]`` itself (a negative
"approximation gap", measured on an MNIST VAE with a full-covariance encoder); with ``q*``,
IWAE's estimate is at least ``L[q*]`` in expectation, so the approximation gap is not
negative but for Monte Carlo error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..device import fork_rng
from ..infer.refine import RefinedGuide, refine
from ..poutine import PerDatapointProgram
from ..validation import check_data, check_positive_int, check_seed
from .iwae import elbo_with_stderr
from .log_marginal import log_marginal
from .result import LogMarginalResult, to_jsonable

__all__ = ["GapReport", "gap_report"]


def _mean_se(values: torch.Tensor, stderr: torch.Tensor) -> tuple[float, float]:
    n = values.numel()
    return float(values.double().mean()), float(stderr.double().pow(2).sum().sqrt() / n)


@dataclass
class GapReport:
    """Per-datapoint gaps with standard errors; see the module docstring.

    Attributes
    ----------
    log_marginal : LogMarginalResult
        ``log p(x_i)`` and how it was estimated.
    elbo, elbo_stderr : torch.Tensor
        ``(B,)``: ``L_i[q]`` of the encoder.
    refined_elbo, refined_elbo_stderr : torch.Tensor
        ``(B,)``: ``L_i[q*]`` after refinement.
    refined_guide : RefinedGuide
        The refined guide (its ``diagnostics`` say which datapoints converged).
    settings : dict
    """

    log_marginal: LogMarginalResult
    elbo: torch.Tensor
    elbo_stderr: torch.Tensor
    refined_elbo: torch.Tensor
    refined_elbo_stderr: torch.Tensor
    refined_guide: RefinedGuide
    settings: dict = field(default_factory=dict)

    @property
    def approximation_gap(self) -> torch.Tensor:
        return self.log_marginal.estimate - self.refined_elbo

    @property
    def approximation_gap_stderr(self) -> torch.Tensor:
        return (self.log_marginal.stderr.pow(2) + self.refined_elbo_stderr.pow(2)).sqrt()

    @property
    def amortization_gap(self) -> torch.Tensor:
        return self.refined_elbo - self.elbo

    @property
    def amortization_gap_stderr(self) -> torch.Tensor:
        return (self.refined_elbo_stderr.pow(2) + self.elbo_stderr.pow(2)).sqrt()

    def table(self) -> dict[str, tuple[float, float]]:
        """Means over the datapoints with their standard errors (Cremer et al.'s Table 2)."""
        lm = self.log_marginal
        return {
            "log p(x)": _mean_se(lm.estimate, lm.stderr),
            "L[q*]": _mean_se(self.refined_elbo, self.refined_elbo_stderr),
            "L[q]": _mean_se(self.elbo, self.elbo_stderr),
            "approximation gap": _mean_se(self.approximation_gap, self.approximation_gap_stderr),
            "amortization gap": _mean_se(self.amortization_gap, self.amortization_gap_stderr),
        }

    def summary(self) -> str:
        lines = [
            f"gaps over {self.elbo.numel()} datapoints (log p(x) by "
            f"{self.log_marginal.method}; nats per datapoint, +- Monte Carlo s.e.)"
        ]
        for name, (mean, se) in self.table().items():
            lines.append(f"  {name:>18}: {mean:10.3f} +- {se:.3f}")
        converged = self.refined_guide.diagnostics.get("converged")
        if converged is not None:
            lines.append(
                f"  refinement converged for {int(converged.sum())} of {converged.numel()} "
                f"datapoints ({self.refined_guide.diagnostics['steps']} steps)"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return to_jsonable(
            {
                "table": {k: {"mean": m, "stderr": s} for k, (m, s) in self.table().items()},
                "log_marginal": self.log_marginal.estimate,
                "log_marginal_stderr": self.log_marginal.stderr,
                "elbo": self.elbo,
                "elbo_stderr": self.elbo_stderr,
                "refined_elbo": self.refined_elbo,
                "refined_elbo_stderr": self.refined_elbo_stderr,
                "approximation_gap": self.approximation_gap,
                "amortization_gap": self.amortization_gap,
                "refine": self.refined_guide.diagnostics,
                "settings": self.settings,
            }
        )


def gap_report(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    refine_options: dict | None = None,
    log_marginal_method: str = "ais",
    log_marginal_options: dict | None = None,
    num_particles: int = 1000,
    plate_name: str = "data",
    global_values: dict | None = None,
    seed: int = 0,
) -> GapReport:
    """Per-datapoint ``log p(x)``, ``L[q*]``, ``L[q]`` and the two gaps, with errors.

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``fn(x)``; ``guide`` must be refinable
        (:func:`~pyro_aevb.infer.refine.supports_refinement`).
    x : torch.Tensor
        ``(B, *event_shape)``.
    refine_options : dict, optional
        Passed to :func:`~pyro_aevb.infer.refine.refine` (``steps``, ``lr``, ...).
    log_marginal_method, log_marginal_options
        The ``log p(x)`` estimator (:func:`~pyro_aevb.evaluate.log_marginal`): ``"ais"``
        (default) or ``"iwae"`` with a stated ``num_particles``, ..., run with the refined
        ``q*`` as its proposal or initial distribution.
    num_particles : int
        Guide draws per datapoint for each of the two bounds.
    seed : int
        Seeds every draw; the caller's RNG is left untouched.
    """
    x = check_data(x, "x")
    num_particles = check_positive_int(num_particles, "num_particles", minimum=2)
    seed = check_seed(seed)
    with fork_rng():
        torch.manual_seed(seed)
        program = PerDatapointProgram(
            model, guide, x, plate_name=plate_name, global_values=global_values
        )
        refined = refine(
            model,
            guide,
            x,
            plate_name=plate_name,
            global_values=program.global_values or None,
            **(refine_options or {}),
        )
        elbo, elbo_se = elbo_with_stderr(
            program, None, x, estimator="A", num_particles=num_particles
        )
        refined_program = PerDatapointProgram(
            model, refined, x, plate_name=plate_name, global_values=program.global_values or None
        )
        r_elbo, r_se = elbo_with_stderr(
            refined_program, None, x, estimator="A", num_particles=num_particles
        )
        # q* as the proposal (IWAE) or initial distribution (AIS): see the module docstring
        lm = log_marginal(
            refined_program,
            None,
            x,
            log_marginal_method,
            seed=seed,
            **(log_marginal_options or {}),
        )
    return GapReport(
        log_marginal=lm,
        elbo=elbo,
        elbo_stderr=elbo_se,
        refined_elbo=r_elbo,
        refined_elbo_stderr=r_se,
        refined_guide=refined,
        settings={
            "refine": refine_options or {},
            "log_marginal_method": log_marginal_method,
            "log_marginal_options": log_marginal_options or {},
            "num_particles": num_particles,
            "seed": seed,
            **program.settings,
        },
    )
