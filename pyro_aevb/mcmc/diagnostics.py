"""Per-datapoint MCMC diagnostics with ArviZ: bulk ESS and split R-hat."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import torch

__all__ = ["ess_rhat"]


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
