"""Estimators (the paper's A and B as Pyro ELBOs, the per-datapoint bound) and the training
objectives built on them (:mod:`pyro_aevb.infer.objectives`)."""

from .elbo import AnalyticKL_ELBO, AnalyticKLError, make_elbo
from .objectives import (
    ALGORITHMS,
    ELBO,
    IWAE,
    MonteCarloEM,
    Objective,
    SemiAmortized,
    WakeSleep,
)
from .per_datapoint import elbo_per_datapoint
from .refine import RefinedGuide, refine, supports_refinement

__all__ = [
    "AnalyticKL_ELBO",
    "AnalyticKLError",
    "make_elbo",
    "elbo_per_datapoint",
    "Objective",
    "ELBO",
    "WakeSleep",
    "MonteCarloEM",
    "SemiAmortized",
    "IWAE",
    "ALGORITHMS",
    "refine",
    "RefinedGuide",
    "supports_refinement",
]
