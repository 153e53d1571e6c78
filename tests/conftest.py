"""Fixtures shared by the whole suite. Models used by several test folders live in
``marginal_helpers`` (importable from every test module: this folder is put on sys.path)."""

import sys
from pathlib import Path

import pyro
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from marginal_helpers import PPCA, mnist, trained_mnist_vae  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    """Each test starts with an empty param store, validation on and a fixed seed."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    torch.manual_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def ppca():
    return PPCA()


@pytest.fixture
def mnist_test():
    return mnist().test


@pytest.fixture
def mnist_vae():
    """A small VAE (N_z = 3, 100 hidden) trained on real MNIST, shared by the session."""
    return trained_mnist_vae()
