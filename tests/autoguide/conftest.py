"""Fixtures of the autoguide tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The models here are tiny: one torch thread is faster than two fighting over a shared
    machine's cores (an SVI step of the PPCA guide takes ~10 ms on one, up to 20x more on two
    busy ones)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
