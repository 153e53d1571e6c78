"""Marginal-likelihood estimation: ``log p(x_i)`` per datapoint, with standard errors.

The entry point is :func:`log_marginal` (methods ``"elbo"``, ``"iwae"``, ``"appendix_d"``,
``"ais"``, ``"bdmc"``), returning a :class:`LogMarginalResult`. The estimators are also
available on their own: :func:`iwae`, :func:`appendix_d` (and its density estimators),
:func:`ais`, :func:`bdmc`; :func:`simulate_data` draws ``(x, z)`` from a model for BDMC.
"""

from .ais import AISResult, ais, annealing_schedule, bdmc, simulate_data
from .appendix_d import appendix_d, appendix_d_from_samples, fit_gaussian, fit_kde
from .bound import evaluate_bound
from .gaps import GapReport, gap_report
from .iwae import elbo_with_stderr, iwae, iwae_log_weights
from .log_marginal import METHOD_OPTIONS, METHODS, log_marginal
from .posterior_shape import PosteriorShapeResult, compare_with_mcmc
from .result import LogMarginalResult, logmeanexp_with_stderr

__all__ = [
    "log_marginal",
    "evaluate_bound",
    "compare_with_mcmc",
    "gap_report",
    "GapReport",
    "PosteriorShapeResult",
    "METHODS",
    "METHOD_OPTIONS",
    "LogMarginalResult",
    "logmeanexp_with_stderr",
    "elbo_with_stderr",
    "iwae",
    "iwae_log_weights",
    "appendix_d",
    "appendix_d_from_samples",
    "fit_gaussian",
    "fit_kde",
    "ais",
    "bdmc",
    "AISResult",
    "annealing_schedule",
    "simulate_data",
]
