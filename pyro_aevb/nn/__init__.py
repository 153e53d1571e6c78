"""Network building blocks that models are composed of: MLP and convolutional trunks and
likelihood heads."""

from .conv import ConvDecoder, ConvEncoder, image_shape_of
from .likelihoods import BernoulliLikelihood, GaussianLikelihood, Likelihood, make_likelihood
from .mlp import ACTIVATIONS, MLP, MLPTrunk, as_hidden_dims, init_normal_

__all__ = [
    "MLP",
    "MLPTrunk",
    "ConvEncoder",
    "ConvDecoder",
    "image_shape_of",
    "ACTIVATIONS",
    "as_hidden_dims",
    "init_normal_",
    "Likelihood",
    "BernoulliLikelihood",
    "GaussianLikelihood",
    "make_likelihood",
]
