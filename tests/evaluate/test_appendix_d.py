import pyro.distributions as dist
import pytest
import torch

from pyro_aevb.evaluate.appendix_d import (
    appendix_d,
    appendix_d_from_samples,
    fit_gaussian,
    fit_kde,
)


def _exact_draws(ppca, x, chains, draws, seed=0):
    mean, cov = ppca.posterior(x)
    post = dist.MultivariateNormal(mean, cov)
    torch.manual_seed(seed)
    samples = post.sample((chains, draws))  # (C, S, B, k)
    log_joint = post.log_prob(samples) + ppca.log_marginal(x)  # log p(z|x) + log p(x)
    return samples, log_joint


@pytest.mark.parametrize("split", ["within", "across"])
@pytest.mark.parametrize("density", ["gaussian", "kde"])
def test_estimator_on_exact_posterior_draws(ppca, density, split):
    """With i.i.d. exact draws the estimator is within its error of the truth."""
    x = ppca.simulate(6)
    samples, log_joint = _exact_draws(ppca, x, chains=2, draws=200)
    est, se, diag = appendix_d_from_samples(samples, log_joint, density=density, split=split)
    err = est - ppca.log_marginal(x)
    assert bool((err.abs() < 4 * se).all()), err / se
    assert float(err.abs().max()) < 0.05
    evaluated = 200 if split == "within" else 400  # across: every draw is evaluated
    assert diag["num_estimate_draws"] == evaluated
    assert diag["ess"].shape == (6,) and bool((diag["ess"] <= evaluated).all())
    if density == "kde":
        assert diag["bandwidth"].shape == ((6,) if split == "within" else (6, 2))


def test_across_chains_each_chain_is_evaluated_under_the_others_fit(ppca):
    x = ppca.simulate(3)
    samples, log_joint = _exact_draws(ppca, x, chains=3, draws=40)
    est, _, _ = appendix_d_from_samples(samples, log_joint, split="across", stderr="iid")
    log_r = torch.stack(
        [
            fit_gaussian(torch.cat([samples[:k], samples[k + 1 :]]).reshape(-1, 3, 2)).log_prob(
                samples[k]
            )
            - log_joint[k]
            for k in range(3)
        ]
    ).reshape(-1, 3)
    expected = -(torch.logsumexp(log_r, 0) - torch.log(torch.tensor(120.0)))
    torch.testing.assert_close(est, expected)


def test_density_estimators_recover_a_gaussian(ppca):
    x = ppca.simulate(3)
    samples, _ = _exact_draws(ppca, x, chains=1, draws=4000)
    mean, cov = ppca.posterior(x)
    q = fit_gaussian(samples[0])
    torch.testing.assert_close(q.loc, mean, atol=0.02, rtol=0)
    torch.testing.assert_close(q.covariance_matrix, cov.expand(3, 2, 2), atol=0.01, rtol=0)
    kde, h = fit_kde(samples[0, :400])
    # a KDE of Gaussian draws picks a bandwidth of the order of Scott's n^(-1/(d+4)) ~ 0.4
    assert bool(((h > 0.1) & (h < 1.0)).all()), h
    z = samples[0, -5:]
    exact = dist.MultivariateNormal(mean, cov).log_prob(z)
    assert float((kde.log_prob(z) - exact).abs().max()) < 0.5


def test_gaussian_estimate_with_exact_density_has_zero_variance(ppca):
    """If q is the posterior itself, every ratio is 1/p(x): the estimate is exact."""
    x = ppca.simulate(4)
    samples, log_joint = _exact_draws(ppca, x, chains=1, draws=20000)
    est, se, _ = appendix_d_from_samples(samples, log_joint, fit_fraction=0.5, stderr="iid")
    # the fitted Gaussian is (nearly) exact, so the ratios barely vary
    torch.testing.assert_close(est, ppca.log_marginal(x), atol=2e-3, rtol=0)
    assert float(se.max()) < 2e-3


@pytest.mark.parametrize(("density", "num_samples"), [("gaussian", 300), ("kde", 800)])
def test_appendix_d_with_batched_hmc_matches_exact(ppca, density, num_samples):
    # the KDE's ratios are heavier-tailed (a kernel on a tail draw), so it needs more draws
    x = ppca.simulate(4)
    est, se, diag = appendix_d(
        ppca.model,
        ppca.guide,
        x,
        num_samples=num_samples,
        num_chains=4,
        num_warmup=100,
        density=density,
        generator=torch.Generator().manual_seed(0),
    )
    err = est - ppca.log_marginal(x)
    assert bool((err.abs() < 4 * se).all()), err / se
    assert float(err.abs().max()) < 0.05
    assert float(diag["r_hat"].max()) < 1.05
    assert bool((diag["accept_rate"] > 0.6).all())


def test_bad_arguments(ppca):
    x = ppca.simulate(2)
    samples, log_joint = _exact_draws(ppca, x, chains=1, draws=10)
    with pytest.raises(ValueError, match="density must be one of"):
        appendix_d_from_samples(samples, log_joint, density="histogram")
    with pytest.raises(ValueError, match=r"log_joint must have shape \(chains, draws, batch\)"):
        appendix_d_from_samples(samples, log_joint[:, :5])
    with pytest.raises(ValueError, match=r"samples must have shape \(chains, draws, batch, D\)"):
        appendix_d_from_samples(samples[0], log_joint)
    with pytest.raises(ValueError, match=r"fit_fraction must be in \(0, 1\)"):
        appendix_d_from_samples(samples, log_joint, fit_fraction=1.0)
    with pytest.raises(ValueError, match="needs at least 3 fit draws"):
        appendix_d_from_samples(samples[:, :4], log_joint[:, :4])
    with pytest.raises(ValueError, match="sampler must be one of"):
        appendix_d(ppca.model, ppca.guide, x, sampler="gibbs")
    with pytest.raises(ValueError, match="split must be one of"):
        appendix_d_from_samples(samples, log_joint, split="half")
    with pytest.raises(ValueError, match="needs num_chains >= 2, got num_chains=1"):
        appendix_d_from_samples(samples, log_joint, split="across")
    with pytest.raises(ValueError, match="needs num_chains >= 2, got num_chains=1"):
        appendix_d(ppca.model, ppca.guide, x, split="across")  # before any sampling
    with pytest.raises(ValueError, match="fit_fraction=0.3 applies to split='within' only"):
        appendix_d(ppca.model, ppca.guide, x, split="across", num_chains=2, fit_fraction=0.3)
