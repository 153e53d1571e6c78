"""The result of a marginal-likelihood estimate: per-datapoint values, errors, diagnostics."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch

__all__ = [
    "LogMarginalResult",
    "logmeanexp_with_stderr",
    "fewer_than_two_effective",
    "importance_ess",
    "pareto_k",
    "to_jsonable",
    "unreliable_collected",
    "warn_unreliable",
    "warn_unreliable_merged",
]

#: Fewer weights than this make the Pareto ``k-hat`` too noisy to warn on.
MIN_DRAWS_FOR_PARETO_K = 100


def logmeanexp_with_stderr(
    log_w: torch.Tensor, dim: int = 0, ess: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``log mean_k w_k`` and its delta-method standard error, along ``dim``.

    With ``m = mean_k w_k`` over ``K`` draws, ``Var(log m) ~= Var(w) / (K m^2)``, so::

        stderr = std_k(w_k / m) / sqrt(K)          (computed as exp(log w - log m))

    in log space, which never overflows. ``ess`` (broadcastable to the result) replaces ``K``
    for correlated draws (e.g. MCMC). ``K = 1`` gives ``nan`` (no spread to measure). The
    standard deviation uses ``K - 1`` degrees of freedom.
    """
    k = log_w.shape[dim]
    log_mean = torch.logsumexp(log_w, dim=dim) - math.log(k)
    if k < 2:
        return log_mean, torch.full_like(log_mean, math.nan)
    ratio = torch.exp(log_w - log_mean.unsqueeze(dim))  # w_k / m, mean 1
    sd = ratio.std(dim=dim, unbiased=True)
    n = log_w.new_tensor(float(k)) if ess is None else ess.to(log_w.dtype)
    return log_mean, sd / n.sqrt()


def fewer_than_two_effective(ess: torch.Tensor) -> torch.Tensor:
    """``ess < 2``, with room for rounding: two equal weights (an exact proposal) give
    :func:`importance_ess` ``2 (1 - 1e-7)`` in float32, which is not a degenerate estimate."""
    return ess < 2.0 - 1e-3


def importance_ess(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``(sum w)^2 / sum w^2`` along ``dim``: how many of the weights carry the mean (1 when
    one weight dominates, all of them when they are equal)."""
    return torch.exp(2 * torch.logsumexp(log_w, dim) - torch.logsumexp(2 * log_w, dim))


_COLLECTED: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "pyro_aevb_unreliable", default=None
)


@contextlib.contextmanager
def unreliable_collected() -> Iterator[list]:
    """Inside, :func:`warn_unreliable` logs nothing: it appends ``(method, checks, advice)``
    (the checks' masks on the CPU) to the yielded list, for a caller that estimates rows in
    blocks to warn once over all rows (:func:`warn_unreliable_merged`)."""
    sink: list = []
    token = _COLLECTED.set(sink)
    try:
        yield sink
    finally:
        _COLLECTED.reset(token)


def warn_unreliable_merged(collected: list[tuple[int, list]], sizes: list[int]) -> None:
    """One :func:`warn_unreliable` over all rows from blocks' collections: ``collected`` holds
    ``(block index, what unreliable_collected gathered)``, ``sizes`` the blocks' rows; a
    flagged row is named by its index among all rows."""
    merged: dict = {}  # (method, what) -> ({block: mask}, advice)
    for k, items in collected:
        for method, checks, advice in items:
            for what, bad in checks:
                masks, _ = merged.setdefault((method, what), ({}, advice))
                masks[k] = bad
    for (method, what), (masks, advice) in merged.items():
        full = torch.cat(
            [masks.get(k, torch.zeros(n, dtype=torch.bool)) for k, n in enumerate(sizes)]
        )
        warn_unreliable(method, full, [(what, full)], advice)


def warn_unreliable(
    method: str, estimate: torch.Tensor, checks: list[tuple[str, torch.Tensor]], advice: str
) -> None:
    """Log a warning (logger ``pyro_aevb``) for each check that flags datapoints: ``checks``
    holds ``(what, (B,) bool)`` pairs, ``advice`` what it means and what may help (inside
    :func:`unreliable_collected`, collected instead)."""
    sink = _COLLECTED.get()
    if sink is not None:
        sink.append((method, [(w, b.detach().bool().cpu()) for w, b in checks], advice))
        return
    logger = logging.getLogger("pyro_aevb")
    for what, bad in checks:
        if bool(bad.any()):
            logger.warning(
                "%s: %d of %d datapoints have %s (first: %s): %s",
                method,
                int(bad.sum()),
                estimate.numel(),
                what,
                bad.nonzero()[:5].flatten().tolist(),
                advice,
            )


def warn_non_finite(method: str, estimate: torch.Tensor) -> None:
    """:func:`warn_unreliable` for estimates that are not numbers (``-inf``, ``NaN``): the
    log-weights behind them are, and no effective-sample check can flag them."""
    warn_unreliable(
        method,
        estimate,
        [("non-finite estimates", ~torch.isfinite(estimate))],
        "the model or guide gives a log-density of -inf or NaN there (a factor of -inf, an "
        "observation outside its support with validation off, an overflow); the mean over "
        "datapoints is then not a number either",
    )


def pareto_k(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    r"""ArviZ's Pareto-smoothed importance sampling tail index ``k-hat`` of ``w``, per column.

    A diagnostic of the delta-method standard error: for ``k-hat > 0.7`` the weights are so
    heavy-tailed that their mean (and its error) is unreliable (Vehtari et al. 2024); with
    fewer than about 100 draws ``k-hat`` itself is noisy. ``log_w`` has the draws along
    ``dim``; returns the other dimension, ``(B,)``.
    """
    import arviz as az

    arr = log_w.movedim(dim, -1).detach().cpu().double().numpy()
    if arr.shape[-1] < 5:
        return torch.full(arr.shape[:-1], math.nan, dtype=log_w.dtype, device=log_w.device)
    with np.errstate(all="ignore"):
        _, k = az.psislw(arr)
    k = torch.as_tensor(np.asarray(k), dtype=log_w.dtype, device=log_w.device)
    # ArviZ reports inf when the tail is too short to fit: unknown, not infinitely bad
    return torch.where(torch.isfinite(k), k, torch.full_like(k, math.nan))


def to_jsonable(obj: Any) -> Any:
    """Tensors, arrays and numpy scalars -> lists and Python numbers, recursively.

    Non-finite floats become ``None`` (JSON has no NaN/inf); objects with no JSON form (an
    ArviZ ``InferenceData``) are dropped by the caller before this.
    """
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, Integral):
        return int(obj)
    if isinstance(obj, Real):
        value = float(obj)
        return value if math.isfinite(value) else None
    if obj is None or isinstance(obj, str):
        return obj
    return repr(obj)


@dataclass
class LogMarginalResult:
    """Per-datapoint estimates of ``log p(x_i)`` with standard errors and diagnostics.

    Attributes
    ----------
    estimate : torch.Tensor
        ``(batch,)`` estimates of ``log p(x_i)`` (for ``"elbo"``: the bound ``L_i``; for
        ``"bdmc"``: the forward-AIS stochastic lower bound).
    stderr : torch.Tensor
        ``(batch,)`` Monte Carlo standard errors of ``estimate``.
    method : str
        ``"elbo"``, ``"iwae"``, ``"appendix_d"``, ``"ais"`` or ``"bdmc"``.
    settings : dict
        Every option the estimate used (JSON-serialisable).
    diagnostics : dict
        Method-specific: acceptance rates, step sizes, ESS, R-hat, and for Pyro's MCMC the
        ArviZ ``InferenceData`` under ``"inference_data"``.
    seconds : float
        Wall time.
    upper, upper_stderr : torch.Tensor or None
        ``"bdmc"`` only: ``(batch,)`` stochastic upper bound from reverse AIS and its error.
    """

    estimate: torch.Tensor
    stderr: torch.Tensor
    method: str
    settings: dict = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)
    seconds: float = 0.0
    upper: torch.Tensor | None = None
    upper_stderr: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.estimate.shape[0])

    def mean(self) -> float:
        """Average of the per-datapoint estimates (the usual reported number)."""
        return float(self.estimate.double().mean())

    def mean_stderr(self) -> float:
        """Monte Carlo standard error of :meth:`mean` (independent per-datapoint errors)."""
        se = self.stderr.double()
        return float(se.pow(2).sum().sqrt() / se.numel())

    def summary(self) -> str:
        """A few human-readable lines for logs and the CLI."""
        lines = [
            f"log p(x) [{self.method}] over {self.batch_size} datapoints: "
            f"mean {self.mean():.4f} +- {self.mean_stderr():.4f} (Monte Carlo s.e.), "
            f"per-datapoint s.e. median {float(self.stderr.double().nanmedian()):.4f}, "
            f"{self.seconds:.1f} s"
        ]
        if self.upper is not None:
            up = self.upper.double()
            up_se = self.upper_stderr.double()
            gap = up - self.estimate.double()
            lines.append(
                f"  BDMC upper bound: mean {float(up.mean()):.4f} +- "
                f"{float(up_se.pow(2).sum().sqrt() / up.numel()):.4f}; "
                f"gap upper - lower: mean {float(gap.mean()):.4f}, max {float(gap.max()):.4f}"
            )
        for key in ("accept_rate", "step_size", "ess_bulk", "r_hat", "ess", "pareto_k"):
            value = self.diagnostics.get(key)
            if isinstance(value, torch.Tensor) and value.numel():
                stats = _tensor_summary(value)
                lines.append(
                    f"  {key}: median {stats['median']:.3g}, min {stats['min']:.3g}, "
                    f"max {stats['max']:.3g}"
                )
        if self.settings:
            shown = ", ".join(f"{k}={v}" for k, v in self.settings.items())
            lines.append(f"  settings: {shown}")
        return "\n".join(lines)

    def to_dict(self, per_datapoint: bool = True) -> dict:
        """JSON-serialisable dict: method, settings, seconds, mean +- s.e., per-datapoint values
        and diagnostics.

        Per-datapoint lists are included unless ``per_datapoint=False``. An ArviZ
        ``InferenceData`` in the diagnostics is replaced by its per-datapoint summary (max
        R-hat, min bulk ESS over the latent coordinates), which is already in the diagnostics.
        """
        diagnostics = {}
        for key, value in self.diagnostics.items():
            if key == "inference_data":
                continue
            if isinstance(value, torch.Tensor) and value.dim() > 0 and not per_datapoint:
                value = _tensor_summary(value)
            diagnostics[key] = value
        out = {
            "method": self.method,
            "num_datapoints": self.batch_size,
            "mean": self.mean(),
            "mean_stderr": self.mean_stderr(),
            "seconds": self.seconds,
            "settings": self.settings,
            "diagnostics": diagnostics,
        }
        if per_datapoint:
            out["estimate"] = self.estimate
            out["stderr"] = self.stderr
        if self.upper is not None:
            out["upper_mean"] = float(self.upper.double().mean())
            se = self.upper_stderr.double()
            out["upper_mean_stderr"] = float(se.pow(2).sum().sqrt() / se.numel())
            if per_datapoint:
                out["upper"] = self.upper
                out["upper_stderr"] = self.upper_stderr
        return to_jsonable(out)


def _tensor_summary(value: torch.Tensor) -> dict:
    """Mean, median, min and max over the finite entries (all NaN if there are none)."""
    v = value.detach().double().flatten()
    v = v[torch.isfinite(v)]
    if not v.numel():
        return dict.fromkeys(("mean", "median", "min", "max"), math.nan)
    return {
        "mean": float(v.mean()),
        "median": float(v.median()),
        "min": float(v.min()),
        "max": float(v.max()),
    }
