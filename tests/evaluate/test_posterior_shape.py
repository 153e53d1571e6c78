"""Guide against posterior: variance ratios, mean offsets and the KL, against exact values on
a correlated Gaussian posterior (probabilistic PCA)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_aevb import log_marginal
from pyro_aevb.evaluate import compare_with_mcmc
from pyro_aevb.plots import plot_posterior_contours


def best_diagonal(ppca, x):
    """The diagonal Gaussian closest to N(m, S) in KL(q || p): mean m, variances 1 / diag(S^-1)."""
    mean, cov = ppca.posterior(x)
    var = 1.0 / torch.linalg.inv(cov).diagonal()
    return mean, var, cov


def test_diagonal_guide_on_a_correlated_posterior_matches_the_exact_shape(ppca, tmp_path):
    x = ppca.simulate(4)
    mean, var, cov = best_diagonal(ppca, x)

    def guide(x):
        m, v, _ = best_diagonal(ppca, x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(m, v.sqrt()).to_event(1))

    res = compare_with_mcmc(
        ppca.model,
        guide,
        x,
        num_guide_samples=4000,
        num_samples=1000,
        num_chains=4,
        num_warmup=300,
        log_marginal_method="iwae",
        log_marginal_options={"num_particles": 20000},
    )
    exact_ratio = (var / cov.diagonal()).expand(4, -1)
    assert bool((exact_ratio < 1).all())  # the posterior is correlated: q is too narrow
    # Monte Carlo error of a variance ratio: 2 / n per sample variance (n_eff of HMC ~ n / 4)
    rel = math.sqrt(2 / 4000 + 2 / (4000 / 4))
    assert bool(((res.var_ratio - exact_ratio).abs() < 4 * rel * exact_ratio).all())
    assert bool((res.mean_offset.abs() < 4 * math.sqrt(1 / 4000 + 4 / 4000)).all())
    # KL(q || p) between Gaussians, exact, against log p(x) - ELBO
    q = dist.MultivariateNormal(mean, torch.diag_embed(var.expand(4, -1)))
    p = dist.MultivariateNormal(mean, cov)
    exact_kl = torch.distributions.kl_divergence(q, p)
    assert bool(((res.kl - exact_kl).abs() < 4 * res.kl_stderr + 1e-3).all()), (res.kl, exact_kl)
    torch.testing.assert_close(res.gaussian_kl(), exact_kl, atol=0.05, rtol=0.1)
    idata = res.to_inference_data()
    assert dict(idata["posterior"].posterior["u"].sizes) == {
        "chain": 4,
        "draw": 1000,
        "datapoint": 4,
        "u_dim": 2,
    }
    assert "var_ratio" in res.to_dict() and "KL(q || p)" in res.summary()
    assert plot_posterior_contours(res, tmp_path / "contours.png").stat().st_size > 1000


def test_latents_masked_through_the_distribution_are_refused_as_through_poutine_mask():
    """``dist.Normal(...).mask(m)`` leaves the masked entries without a density, as
    ``poutine.mask`` does: HMC draws of them are a random walk, so the posterior moments,
    R-hat and ESS (and Appendix D's fitted density) would describe that walk."""

    def model(x):
        m = x[:, 2] > 0.5
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(torch.zeros(x.shape[0]), 1.0))
            z2 = pyro.sample("z2", dist.Normal(torch.zeros(x.shape[0]), 1.0).mask(m))
            pyro.sample("x1", dist.Normal(z1, 0.5), obs=x[:, 0])
            pyro.sample("x2", dist.Normal(z2, 0.5).mask(m), obs=x[:, 1])

    def guide(x):
        m = x[:, 2] > 0.5
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z1", dist.Normal(0.8 * x[:, 0], 0.45))
            pyro.sample("z2", dist.Normal(0.8 * x[:, 1], 0.45).mask(m))

    x = torch.tensor([[0.3, -0.2, 1.0], [1.0, 0.5, 0.0]])
    with pytest.raises(ValueError, match=r"\['z2'\] are masked in the model"):
        compare_with_mcmc(model, guide, x, num_samples=10, num_warmup=10)
    with pytest.raises(ValueError, match=r"\['z2'\] are masked in the model"):
        log_marginal(model, guide, x, "appendix_d", num_samples=10, num_warmup=10)
