"""Estimators (the paper's A and B as Pyro ELBOs, the per-datapoint bound) and the training
objectives built on them (:mod:`pyro_aevb.infer.objectives`)."""

from .elbo import AnalyticKL_ELBO, AnalyticKLError, make_elbo
from .objectives import ALGORITHMS, ELBO, IWAE, MonteCarloEM, Objective, WakeSleep
from .per_datapoint import elbo_per_datapoint

__all__ = [
    "AnalyticKL_ELBO",
    "AnalyticKLError",
    "make_elbo",
    "elbo_per_datapoint",
    "Objective",
    "ELBO",
    "WakeSleep",
    "MonteCarloEM",
    "IWAE",
    "ALGORITHMS",
]
