"""Fixtures of the nn tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a shared machine two threads fighting over its cores are slower
    (a step of the conv VAE on 100 images: 0.56 s on one thread, 1.8 s on two busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
