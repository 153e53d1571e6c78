import os

import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    """Each test starts with an empty param store, validation on and a fixed seed."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    torch.manual_seed(0)
    yield
    pyro.clear_param_store()


def real_data_dir():
    """The data directory from PYRO_AEVB_DATA, or None (then real-data tests skip)."""
    return os.environ.get("PYRO_AEVB_DATA") or None


requires_data = pytest.mark.skipif(
    real_data_dir() is None,
    reason="set PYRO_AEVB_DATA to a directory holding mnist/ (e.g. ../shared/data)",
)
