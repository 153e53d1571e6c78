"""pyro-aevb: Auto-Encoding Variational Bayes (Kingma & Welling, 2014) for Pyro.

Your own Pyro models with amortized guides (hand-written, or in one line with the encoder
autoguides ``AmortizedNormal``, ``AmortizedMultivariateNormal`` and ``AmortizedIAF``), trained
by SVI with the paper's estimators and evaluated honestly: the paper's VAEs as presets, both
SGVB estimators (A: ``Trace_ELBO``; B: strict analytic KL), a fast minibatch trainer with
exact resume, per-datapoint marginal likelihoods (IWAE, the paper's Appendix-D HMC estimator,
AIS, BDMC) and the paper's baselines.
The flat API below is what most users need; the subpackages hold the rest.
"""

from .autoguide import AmortizedIAF, AmortizedMultivariateNormal, AmortizedNormal
from .data import Dataset, load_dataset
from .evaluate import (
    LogMarginalResult,
    compare_with_mcmc,
    evaluate_bound,
    gap_report,
    log_marginal,
)
from .infer import (
    ELBO,
    IWAE,
    AnalyticKL_ELBO,
    AnalyticKLError,
    MonteCarloEM,
    Objective,
    SemiAmortized,
    WakeSleep,
    elbo_per_datapoint,
    make_elbo,
    refine,
)
from .models import (
    VAE,
    LinearGaussian,
    build_model,
    conv_vae,
    fashion_mnist_conv_vae,
    mlp_vae,
    paper_frey_face_vae,
    paper_mnist_vae,
    paper_vae,
)
from .poutine import PerDatapointProgram
from .train import FitResult, NonFiniteLossError, Run, TrainingInterrupted, fit, load_run
from .train.distributed import init_distributed
from .version import __version__

__all__ = [
    "__version__",
    "fit",
    "FitResult",
    "NonFiniteLossError",
    "TrainingInterrupted",
    "load_run",
    "Run",
    "Objective",
    "ELBO",
    "WakeSleep",
    "MonteCarloEM",
    "SemiAmortized",
    "IWAE",
    "AnalyticKL_ELBO",
    "AnalyticKLError",
    "make_elbo",
    "elbo_per_datapoint",
    "evaluate_bound",
    "log_marginal",
    "LogMarginalResult",
    "refine",
    "gap_report",
    "compare_with_mcmc",
    "PerDatapointProgram",
    "AmortizedNormal",
    "AmortizedMultivariateNormal",
    "AmortizedIAF",
    "VAE",
    "mlp_vae",
    "paper_mnist_vae",
    "paper_frey_face_vae",
    "paper_vae",
    "conv_vae",
    "fashion_mnist_conv_vae",
    "build_model",
    "LinearGaussian",
    "Dataset",
    "load_dataset",
    "init_distributed",
]
