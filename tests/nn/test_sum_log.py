import pytest
import torch

from pyro_aevb.nn.sum_log import _chunk_size, sum_log_half_to_one, sum_log_max_complement


def _m(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 0.5 + 0.5).to(dtype)


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-6), (torch.float64, 1e-13)])
@pytest.mark.parametrize("shape", [(100, 784), (7, 97), (3, 5), (1, 1), (2, 1000)])
def test_equals_the_sum_of_logs(shape, dtype, rtol):
    m = _m(shape, dtype)
    exact = m.double().log()
    total = sum_log_half_to_one(m)
    rows = sum_log_half_to_one(m, per_row=True)
    assert total.dtype == dtype and total.shape == ()
    assert rows.dtype == dtype and rows.shape == shape[:-1]
    assert torch.allclose(total.double(), exact.sum(), rtol=rtol, atol=0)
    assert torch.allclose(rows.double(), exact.sum(-1), rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_underflow_at_the_smallest_entries(dtype):
    # every entry 1/2: the worst case for the chunked products
    m = torch.full((50, 784), 0.5, dtype=dtype)
    expected = torch.log(torch.tensor(0.5, dtype=torch.float64)) * m.numel()
    assert torch.allclose(sum_log_half_to_one(m).double(), expected, rtol=1e-6)
    assert torch.allclose(sum_log_half_to_one(m, per_row=True).double(), expected / 50, rtol=1e-6)


def test_nan_propagates():
    m = _m((4, 784), torch.float32)
    m[2, 100] = float("nan")
    assert torch.isnan(sum_log_half_to_one(m))
    rows = sum_log_half_to_one(m, per_row=True)
    assert torch.isnan(rows[2]) and torch.isfinite(rows[[0, 1, 3]]).all()


def test_chunk_sizes_divide_and_respect_the_limits():
    assert _chunk_size(78400, 120) == 112
    assert _chunk_size(784, 120) == 112
    assert _chunk_size(784, 1000) == 784
    assert _chunk_size(97, 120) == 97  # the whole row is one chunk
    assert _chunk_size(127, 120) is None  # a prime above the limit: plain logs
    for n in range(1, 600):
        k = _chunk_size(n, 120)
        assert k is None or (n % k == 0 and 16 <= k <= 120)


def test_sum_log_max_complement_is_minus_the_softplus_of_minus_abs_logits():
    # log max(y, 1 - y) = log sigmoid(|a|) = -softplus(-|a|) for y = sigmoid(a)
    a = torch.randn(8, 784, dtype=torch.float64) * 6
    expected = -torch.nn.functional.softplus(-a.abs())
    y = torch.sigmoid(a)
    total = sum_log_max_complement(y, out=torch.empty_like(y))
    assert torch.allclose(total, expected.sum(), rtol=1e-12)
    rows = sum_log_max_complement(y.clone(), out=torch.empty_like(y), per_row=True)
    assert torch.allclose(rows, expected.sum(-1), rtol=1e-12)
    in_place = y.clone()  # out may be the input itself
    assert torch.allclose(sum_log_max_complement(in_place, out=in_place), total, rtol=1e-14)
