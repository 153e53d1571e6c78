import pyro.distributions as dist
import pytest
import torch

from pyro_aevb.distributions import FractionalBernoulli


def test_log_prob_is_paper_cross_entropy_on_fractional_targets():
    logits = torch.randn(5, 7, dtype=torch.float64)
    x = torch.rand(5, 7, dtype=torch.float64)
    y = torch.sigmoid(logits)
    expected = x * torch.log(y) + (1 - x) * torch.log1p(-y)
    assert torch.allclose(FractionalBernoulli(logits=logits).log_prob(x), expected, atol=1e-12)


def test_matches_bernoulli_on_binary_targets_and_expands():
    logits = torch.randn(4, 3)
    x = (torch.rand(4, 3) < 0.5).float()
    d = FractionalBernoulli(logits=logits)
    assert torch.allclose(d.log_prob(x), dist.Bernoulli(logits=logits).log_prob(x))
    e = d.expand((2, 4, 3))
    assert isinstance(e, FractionalBernoulli) and e.batch_shape == (2, 4, 3)


def test_rejects_targets_outside_unit_interval():
    d = FractionalBernoulli(logits=torch.zeros(3), validate_args=True)
    with pytest.raises(ValueError):
        d.log_prob(torch.tensor([0.5, 1.2, 0.0]))
