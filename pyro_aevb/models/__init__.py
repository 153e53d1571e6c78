"""Model/guide pairs as Pyro programs."""

from .linear_gaussian import LinearGaussian
from .vae import VAE, paper_frey_face_vae, paper_mnist_vae

__all__ = ["VAE", "paper_mnist_vae", "paper_frey_face_vae", "LinearGaussian"]
