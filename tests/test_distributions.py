import pyro.distributions as dist
import pytest
import torch
from torch.distributions import kl_divergence

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


def test_full_covariance_gaussian_against_a_diagonal_one_has_its_closed_form_kl():
    torch.manual_seed(0)
    tril = torch.randn(3, 4, 4, dtype=torch.float64).tril()
    tril.diagonal(dim1=-2, dim2=-1).copy_(torch.rand(3, 4, dtype=torch.float64) + 0.3)
    q = dist.MultivariateNormal(torch.randn(3, 4, dtype=torch.float64), scale_tril=tril)
    loc, scale = torch.randn(3, 4, dtype=torch.float64), torch.rand(3, 4, dtype=torch.float64) + 0.5
    p = dist.Normal(loc, scale).to_event(1)
    kl = kl_divergence(q, p)
    # the same as torch's Gaussian-Gaussian KL with a diagonal covariance ...
    p_full = dist.MultivariateNormal(loc, scale_tril=torch.diag_embed(scale))
    assert torch.allclose(kl, kl_divergence(q, p_full), atol=1e-12, rtol=0)
    # ... and as the Monte Carlo KL, E_q[log q - log p], within its error
    z = q.sample((200_000,))
    draws = q.log_prob(z) - p.log_prob(z)
    stderr = draws.std(0) / draws.shape[0] ** 0.5
    assert bool(((draws.mean(0) - kl).abs() < 4 * stderr).all())
    # the standard-normal prior of the VAE: broadcast batch shapes
    standard = dist.Normal(torch.zeros(4, dtype=torch.float64), 1.0).to_event(1)
    assert kl_divergence(q, standard).shape == (3,)


def test_no_closed_form_kl_for_other_pairs():
    q = dist.MultivariateNormal(torch.zeros(2, 3), torch.eye(3))
    for p in (
        dist.Laplace(torch.zeros(2, 3), 1.0).to_event(1),  # not a Normal
        dist.Normal(torch.zeros(2, 4), 1.0).to_event(1),  # another event size
        dist.Normal(torch.zeros(2, 3, 3), 1.0).to_event(2),  # another event rank
    ):
        with pytest.raises(NotImplementedError):
            kl_divergence(q, p)
