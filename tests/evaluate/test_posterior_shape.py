"""Guide against posterior: variance ratios, mean offsets and the KL, against exact values on
a correlated Gaussian posterior (probabilistic PCA)."""

import math

import pyro
import pyro.distributions as dist
import torch

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
