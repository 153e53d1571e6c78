import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_aevb.evaluate.iwae import elbo_with_stderr, iwae, iwae_log_weights
from pyro_aevb.infer.per_datapoint import elbo_per_datapoint


def test_exact_posterior_guide_has_zero_variance_and_is_exact(ppca):
    x = ppca.simulate(6)
    estimate, stderr, diag = iwae(ppca.model, ppca.exact_guide, x, 50)
    torch.testing.assert_close(estimate, ppca.log_marginal(x), atol=1e-10, rtol=0)
    assert float(stderr.max()) < 1e-10
    torch.testing.assert_close(diag["ess"], torch.full((6,), 50.0, dtype=torch.float64))


def test_k1_reproduces_estimator_a_of_the_elbo(ppca):
    x = ppca.simulate(5)
    torch.manual_seed(7)
    log_w = iwae_log_weights(ppca.model, ppca.guide, x, 1)
    torch.manual_seed(7)
    elbo_a = elbo_per_datapoint(ppca.model, ppca.guide, x, estimator="A")
    assert log_w.shape == (1, 5)
    torch.testing.assert_close(log_w[0], elbo_a)
    # one trace per particle gives the same draws as the vectorised path, chunk by chunk
    torch.manual_seed(7)
    looped = iwae_log_weights(ppca.model, ppca.guide, x, 3, vectorize=False)
    torch.manual_seed(7)
    vectorised = iwae_log_weights(ppca.model, ppca.guide, x, 3, chunk_size=1)
    torch.testing.assert_close(looped, vectorised)


def test_iwae_agrees_with_exact_marginal_within_its_error(ppca):
    x = ppca.simulate(8)
    torch.manual_seed(0)
    estimate, stderr, _ = iwae(ppca.model, ppca.guide, x, 20000, chunk_size=6000)
    err = estimate - ppca.log_marginal(x)
    assert bool((err.abs() < 4 * stderr).all()), err / stderr
    assert float(err.abs().max()) < 0.05


def test_elbo_agrees_with_exact_bound(ppca):
    x = ppca.simulate(8)
    torch.manual_seed(0)
    for estimator in ("A", "B"):
        mean, stderr = elbo_with_stderr(
            ppca.model, ppca.guide, x, estimator=estimator, num_particles=200
        )
        err = mean - ppca.elbo(x)
        assert bool((err.abs() < 4 * stderr).all()), (estimator, err / stderr)
    assert bool((ppca.elbo(x) < ppca.log_marginal(x)).all())


def test_chunks_bound_memory_and_cover_all_particles(ppca):
    x = ppca.simulate(3)
    log_w = iwae_log_weights(ppca.model, ppca.guide, x, 25, chunk_size=4)
    assert log_w.shape == (25, 3) and bool(torch.isfinite(log_w).all())


def test_bad_inputs(ppca):
    x = ppca.simulate(2)
    with pytest.raises(ValueError, match="num_particles must be an int >= 1, got 0"):
        iwae(ppca.model, ppca.guide, x, 0)
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
        iwae(ppca.model, ppca.guide, x, 5, chunk_size=0)
    with pytest.raises(ValueError, match="x contains non-finite"):
        iwae(ppca.model, ppca.guide, torch.full_like(x, float("nan")), 5)

    def global_latent_model(x):
        s = pyro.sample("s", dist.HalfNormal(1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample(
                "x", dist.Normal(torch.zeros_like(x), s[..., None, None]).to_event(1), obs=x
            )

    def global_latent_guide(x):
        pyro.sample("s", dist.LogNormal(0.0, 1.0))

    # a global latent is conditioned on the guide's median (LogNormal(0, 1): s = 1), so the
    # weights are exactly log p(x_i | s = 1): no local latent is left to integrate
    exact = dist.Normal(torch.zeros_like(x), 1.0).to_event(1).log_prob(x)
    for vectorize in (True, False):
        est, se, _ = iwae(global_latent_model, global_latent_guide, x, 5, vectorize=vectorize)
        torch.testing.assert_close(est, exact)
    with pytest.raises(ValueError, match=r"global latent sites \['s'\].*no guide"):
        iwae_log_weights(global_latent_model, None, x, 5)


def test_collapsed_weights_are_named_not_reported_with_a_plausible_stderr(caplog):
    from user_models import concentrated_gamma_poisson

    model, prior_guide, x, exact = concentrated_gamma_poisson()
    torch.manual_seed(0)
    with caplog.at_level("WARNING", logger="pyro_aevb"):
        est, se, diag = iwae(model, prior_guide, x, 1000)
    # row 0: one weight carries the mean, the estimate is far too low, yet the delta-method
    # stderr reads ~1 nat: the warning is what tells
    assert float(exact[0] - est[0]) > 50 and abs(float(se[0]) - 1) < 0.1
    assert float(diag["ess"][0]) < 2 and float(diag["pareto_k"][0]) > 0.7
    assert "iwae: 1 of 2 datapoints have fewer than 2 effective weights (first: [0])" in caplog.text
    assert "iwae: 1 of 2 datapoints have weight Pareto k > 0.7 (first: [0])" in caplog.text
    assert abs(float(est[1] - exact[1])) < 4 * float(se[1])  # the ordinary row is fine
