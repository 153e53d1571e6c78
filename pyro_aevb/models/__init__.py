"""Model/guide pairs as Pyro programs, composed from the building blocks of :mod:`pyro_aevb.nn`,
and the named presets (the paper's models) in one place."""

from .examples import PyroExampleVAE
from .linear_gaussian import LinearGaussian
from .presets import (
    PAPER_HIDDEN,
    PRESETS,
    build_model,
    conv_vae,
    fashion_mnist_conv_vae,
    mlp_vae,
    paper_frey_face_vae,
    paper_mnist_vae,
    paper_vae,
    register_preset,
)
from .vae import VAE

__all__ = [
    "VAE",
    "LinearGaussian",
    "PyroExampleVAE",
    "mlp_vae",
    "paper_mnist_vae",
    "paper_frey_face_vae",
    "paper_vae",
    "conv_vae",
    "fashion_mnist_conv_vae",
    "PAPER_HIDDEN",
    "PRESETS",
    "build_model",
    "register_preset",
]
