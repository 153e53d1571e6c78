"""Estimators, objectives and trainers."""

from .elbo import AnalyticKL_ELBO, AnalyticKLError, make_elbo
from .per_datapoint import elbo_per_datapoint

__all__ = ["AnalyticKL_ELBO", "AnalyticKLError", "make_elbo", "elbo_per_datapoint"]
