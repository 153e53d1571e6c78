import torch

from pyro_aevb.train.fingerprint import data_fingerprint, same_data


def test_same_data_once_in_the_recorded_dtype_and_shape():
    x = torch.rand(6, 1, 2, 2)
    recorded = data_fingerprint(x.reshape(6, 4).double())  # a run in float64 on flat rows
    assert same_data(x, recorded)
    assert not same_data(x[:5], recorded)
    y = x.clone()
    y[3, 0, 1, 1] += 1e-3
    assert not same_data(y, recorded)
    assert not same_data(x, {"shape": [6, 4], "dtype": "no_such_dtype", "sha256": "0"})
