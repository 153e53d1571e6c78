"""pyro-aevb: Auto-Encoding Variational Bayes (Kingma & Welling, 2014) for Pyro.

The paper's variational auto-encoders as ordinary Pyro model/guide pairs, both SGVB
estimators (A: ``Trace_ELBO``; B: strict analytic KL), a fast minibatch trainer with exact
resume, and marginal-likelihood estimation.
"""

__version__ = "0.1.0"

from .data import Dataset, load_dataset  # noqa: E402
from .infer import AnalyticKL_ELBO, AnalyticKLError, elbo_per_datapoint, make_elbo  # noqa: E402
from .infer.fast_vae import evaluate_bound  # noqa: E402
from .infer.trainer import FitResult, NonFiniteLossError, fit  # noqa: E402
from .models import VAE, paper_frey_face_vae, paper_mnist_vae  # noqa: E402

__all__ = [
    "VAE",
    "paper_mnist_vae",
    "paper_frey_face_vae",
    "AnalyticKL_ELBO",
    "AnalyticKLError",
    "make_elbo",
    "elbo_per_datapoint",
    "evaluate_bound",
    "fit",
    "FitResult",
    "NonFiniteLossError",
    "Dataset",
    "load_dataset",
]
