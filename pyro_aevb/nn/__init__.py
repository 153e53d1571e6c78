"""Network building blocks that models are composed of: MLP trunks and likelihood heads."""

from .likelihoods import BernoulliLikelihood, GaussianLikelihood, Likelihood, make_likelihood
from .mlp import ACTIVATIONS, MLP, as_hidden_dims, init_normal_

__all__ = [
    "MLP",
    "ACTIVATIONS",
    "as_hidden_dims",
    "init_normal_",
    "Likelihood",
    "BernoulliLikelihood",
    "GaussianLikelihood",
    "make_likelihood",
]
