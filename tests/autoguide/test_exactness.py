"""On linear-Gaussian models every quantity is exact, so the autoguides' densities are checked
against the truth: a full-covariance guide set to the exact posterior makes every importance
weight equal ``log p(x)`` (on the model's site directly, and through an auxiliary site with a
positive latent and its Jacobian), ``log q`` at arbitrary latents is the posterior density,
a flow's inverse recovers the density of its own draws, and a full-covariance guide trained
on PPCA reaches ``log p(x)`` while the diagonal one stays below by the KL from the best
diagonal Gaussian."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from marginal_helpers import PPCA
from torch.distributions import kl_divergence
from user_models import LogLinearGaussian

from pyro_aevb import AnalyticKL_ELBO, AnalyticKLError, elbo_per_datapoint, fit, log_marginal
from pyro_aevb.autoguide import AmortizedIAF, AmortizedMultivariateNormal, AmortizedNormal
from pyro_aevb.autoguide.mvn import head_outputs, scale_tril
from pyro_aevb.evaluate import elbo_with_stderr, iwae_log_weights
from pyro_aevb.mcmc import PerDatapointPotential


def _linear_posterior(model, x_dim):
    """``(A, c, L)`` with posterior mean ``x A^T + c`` and covariance ``L L^T``."""
    eye = torch.eye(x_dim, dtype=torch.float64)
    mean_of = lambda x: model.posterior(x)[0]  # noqa: E731 (linear in x)
    c = mean_of(torch.zeros(1, x_dim, dtype=torch.float64))[0]
    a = (mean_of(eye) - c).T
    return a, c, torch.linalg.cholesky(model.posterior(eye)[1])


def _set_head(head, a, c, tril=None, log_var=None):
    """Make a linear head output ``[A x + c, log var, lower triangle]`` exactly."""
    d = c.shape[0]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[:d] = a
        head.bias[:d] = c
        if tril is not None:
            head.bias[d : 2 * d], head.bias[2 * d :] = head_outputs(tril)
        else:
            head.bias[d : 2 * d] = log_var


@pytest.mark.parametrize("case", ["ppca: the model's site", "log-linear: auxiliary + Delta"])
def test_an_exact_full_covariance_guide_makes_every_weight_log_p_x(case):
    model = PPCA() if case.startswith("ppca") else LogLinearGaussian()
    x = model.simulate(30)
    guide = AmortizedMultivariateNormal(model.model, hidden_dims=())
    guide(x)
    assert guide.samples_site_directly == case.startswith("ppca")
    _set_head(guide.nets["head"], *_linear_posterior(model, x.shape[1]))
    exact = model.log_marginal(x)

    log_w = iwae_log_weights(model.model, guide, x, 40)  # every draw, every row
    assert torch.allclose(log_w, exact.expand(40, -1), atol=1e-9, rtol=0)
    bound = elbo_per_datapoint(model.model, guide, x, estimator="A").detach()
    assert torch.allclose(bound, exact, atol=1e-9, rtol=0)

    # q at latents it did not draw: the posterior density of u = (z, log s)
    pot = PerDatapointPotential(model.model, x, guide=guide, num_chains=2)
    mean, cov = model.posterior(x)
    post = dist.MultivariateNormal(mean.repeat(2, 1), cov)
    u = torch.randn(60, 2, dtype=torch.float64)
    assert torch.allclose(pot.log_guide(u), post.log_prob(u), atol=1e-9, rtol=0)
    position, log_q = pot.sample_guide()
    assert torch.allclose(log_q, post.log_prob(position), atol=1e-9, rtol=0)
    # AIS from the encoder: every intermediate target is the posterior, so it is exact
    ais = log_marginal(model.model, guide, x, "ais", num_temps=4, num_chains=2, init="encoder")
    assert torch.allclose(ais.estimate, exact, atol=1e-7, rtol=0)


def test_estimator_b_refuses_an_auxiliary_site_with_a_clear_message():
    model = LogLinearGaussian()
    x = model.simulate(8)
    guide = AmortizedMultivariateNormal(model.model, hidden_dims=())
    message = r"auxiliary site '_AmortizedMultivariateNormal_latent'.*\['z', 's'\].*estimator 'A'"
    with pytest.raises(AnalyticKLError, match=message):
        elbo_per_datapoint(model.model, guide, x, estimator="B")
    with pytest.raises(AnalyticKLError, match=message):
        fit(model.model, x, guide=guide, estimator="B", num_samples=8, progress=False)
    # stock Pyro with the strict estimator B
    with pytest.raises(AnalyticKLError, match=r"'_AmortizedMultivariateNormal_latent' is not in"):
        AnalyticKL_ELBO().loss(model.model, guide, x)


@pytest.mark.parametrize("case", ["ppca: the model's site", "log-linear: auxiliary + Delta"])
def test_a_flow_inverts_to_the_density_of_its_own_draws(case):
    model = PPCA() if case.startswith("ppca") else LogLinearGaussian()
    x = model.simulate(12)
    guide = AmortizedIAF(model.model, hidden_dims=(8,), num_flows=2)
    guide(x)
    assert guide.samples_site_directly == case.startswith("ppca")
    with torch.no_grad():  # leave the identity start: random autoregressive layers
        for flow in guide.nets["flows"]:
            flow.nn.layers[-1].weight.normal_(0.0, 0.3)
            flow.nn.layers[-1].bias.normal_(0.0, 0.3)
    torch.manual_seed(3)
    trace = poutine.trace(guide).get_trace(x)
    drawn = "z" if case.startswith("ppca") else "_AmortizedIAF_latent"
    site = trace.nodes[drawn]
    log_q = site["fn"].log_prob(site["value"]).detach()  # forward pass, cached inverse
    pot = PerDatapointPotential(model.model, x, guide=guide)
    position = pot.layout.flatten({n: trace.nodes[n]["value"] for n in pot.layout.names})
    # the density at a given point inverts each flow (D sequential passes)
    assert torch.allclose(pot.log_guide(position), log_q, atol=1e-8, rtol=0)
    # and it is not the base Gaussian's: the flows act
    loc, scale, _ = guide.encode(x)
    base = dist.Normal(loc, scale).to_event(1).log_prob(position)
    assert (base - log_q).abs().max() > 1e-2


def test_a_new_flow_is_the_diagonal_gaussian():
    model = LogLinearGaussian()
    x = model.simulate(10)
    iaf = AmortizedIAF(model.model, hidden_dims=(6,), num_flows=3)
    diag = AmortizedNormal(model.model, hidden_dims=(6,))
    iaf(x), diag(x)
    with torch.no_grad():  # copy trunk and the base head into the per-site heads
        diag.nets["trunk"].load_state_dict(iaf.nets["trunk"].state_dict())
        w, b = iaf.nets["head"].weight, iaf.nets["head"].bias
        for k, head in enumerate(diag.nets["heads"]):  # sites z, s: one coordinate each
            head.weight.copy_(w[[k, 2 + k]])
            head.bias.copy_(b[[k, 2 + k]])
    u = torch.randn(10, 2, dtype=torch.float64)
    a = PerDatapointPotential(model.model, x, guide=iaf).log_guide(u)
    b_ = PerDatapointPotential(model.model, x, guide=diag).log_guide(u)
    assert torch.allclose(a, b_, atol=1e-10, rtol=0)


def _correlated_ppca():
    """PPCA whose posterior is correlated (loadings of similar direction): the best diagonal
    Gaussian misses it by a measurable KL."""
    model = PPCA(d=5, k=2, sigma=0.5)
    g = torch.Generator().manual_seed(3)
    w = torch.randn(5, generator=g, dtype=torch.float64)
    model.W = torch.stack([w, w + 0.4 * torch.randn(5, generator=g, dtype=torch.float64)], 1)
    return model


def test_full_covariance_reaches_log_p_and_the_diagonal_stays_below_by_the_best_diagonal_kl():
    model = _correlated_ppca()
    x = model.simulate(1000)
    train, test = x[:500], x[500:]
    mean, cov = model.posterior(test)
    posterior = dist.MultivariateNormal(mean, cov)
    # The best diagonal q has the posterior mean and variances 1 / Lambda_jj (Lambda the
    # precision): KL = (sum_j log Lambda_jj - log det Lambda) / 2, the same for every x.
    prec = torch.linalg.inv(cov)
    best_diagonal_kl = 0.5 * (prec.diagonal().log().sum() - torch.logdet(prec))
    assert best_diagonal_kl > 0.2

    gaps = {}
    for cls in (AmortizedMultivariateNormal, AmortizedNormal):
        pyro.clear_param_store()
        torch.manual_seed(0)
        guide = cls(model.model, hidden_dims=())  # a linear encoder: the exact form
        # full batches (low-noise gradients) with estimator B
        fit(model.model, train, guide=guide, optimizer="adam", lr=0.05, batch_size=500,
            num_samples=200 * 500, eval_every=200 * 500, eval_size=10, progress=False)  # fmt: skip
        with torch.no_grad():
            if cls is AmortizedMultivariateNormal:
                loc, tril = guide.encode(test)
                q = dist.MultivariateNormal(loc, scale_tril=tril)
            else:
                loc, scale = guide.encode(test)["z"]
                q = dist.MultivariateNormal(loc, scale_tril=torch.diag_embed(scale))
        # the exact ELBO is log p(x) - KL(q || posterior)
        gaps[cls] = kl_divergence(q, posterior)
        if cls is AmortizedMultivariateNormal:
            # the library's per-datapoint bound is that ELBO, within its Monte Carlo error
            exact_elbo = model.log_marginal(test[:100]) - gaps[cls][:100]
            est, se = elbo_with_stderr(model.model, guide, test[:100], num_particles=50)
            assert abs(float(est.mean() - exact_elbo.mean())) < 4 * float(se.pow(2).mean().sqrt())
    full, diagonal = gaps[AmortizedMultivariateNormal], gaps[AmortizedNormal]
    assert float(full.mean()) < 0.05
    assert bool((diagonal >= best_diagonal_kl - 1e-9).all())  # no diagonal q does better
    assert abs(float(diagonal.mean()) - float(best_diagonal_kl)) < 0.05
    assert float(diagonal.mean() - full.mean()) > 0.15


def nested_plates(x):
    """``w_ij ~ N(0, 1)``, ``x_ij ~ N(w_ij, 0.5^2)`` with the data plate at dim -2 and a
    feature plate at dim -1: ``p(x_ij) = N(0, 1.25)``, ``p(w_ij | x_ij) = N(x_ij / 1.25, 0.2)``."""
    with pyro.plate("features", 3, dim=-1), pyro.plate("data", x.shape[0], dim=-2):
        w = pyro.sample("w", dist.Normal(torch.zeros_like(x), 1.0))
        pyro.sample("x", dist.Normal(w, 0.5), obs=x)


@pytest.mark.parametrize("cls", [AmortizedNormal, AmortizedMultivariateNormal])
def test_a_local_site_in_a_nested_plate_with_the_data_plate_at_dim_minus_2(cls):
    x = torch.randn(7, 3, dtype=torch.float64)
    guide = cls(nested_plates, hidden_dims=())
    guide(x)
    site = guide.local_sites[0]
    assert [(f.name, f.dim) for f in site.frames] == [("features", -1)] and site.size == 3
    assert guide._plate_dim == -2
    if cls is AmortizedMultivariateNormal:  # a joint over the feature plate: auxiliary
        assert guide.samples_site_directly is False
    a = torch.eye(3, dtype=torch.float64) / 1.25
    c = torch.zeros(3, dtype=torch.float64)
    head = guide.nets["heads"][0] if cls is AmortizedNormal else guide.nets["head"]
    if cls is AmortizedNormal:
        _set_head(head, a, c, log_var=torch.full((3,), 0.2, dtype=torch.float64).log())
    else:
        _set_head(head, a, c, tril=torch.eye(3, dtype=torch.float64) * 0.2**0.5)
    exact = dist.Normal(torch.zeros_like(x), 1.25**0.5).log_prob(x).sum(-1)
    log_w = iwae_log_weights(nested_plates, guide, x, 10)
    assert torch.allclose(log_w, exact.expand(10, -1), atol=1e-9, rtol=0)
    trace = poutine.trace(guide).get_trace(x)
    assert trace.nodes["w"]["value"].shape == (7, 3)
    pot = PerDatapointPotential(nested_plates, x, guide=guide)
    u = torch.randn(7, 3, dtype=torch.float64)
    post = dist.Normal(x / 1.25, 0.2**0.5).to_event(1).log_prob(u)
    assert torch.allclose(pot.log_guide(u), post, atol=1e-10, rtol=0)


@pytest.mark.parametrize("d", [1, 2, 5])
def test_the_cholesky_factor_is_unit_lower_times_sigma_and_inverts(d):
    g = torch.Generator().manual_seed(d)
    log_var = torch.randn(4, d, generator=g, dtype=torch.float64)
    lower = torch.randn(4, d * (d - 1) // 2, generator=g, dtype=torch.float64)
    tril = scale_tril(log_var, lower)
    assert torch.equal(tril, tril.tril())
    # L = U diag(sigma): the diagonal is sigma, so log |det L| = sum_j log sigma_j
    assert torch.allclose(tril.diagonal(dim1=-2, dim2=-1), torch.exp(0.5 * log_var))
    cov = tril @ tril.mT
    assert torch.allclose(torch.logdet(cov), log_var.sum(-1))
    back_log_var, back_lower = head_outputs(tril)
    assert torch.allclose(back_log_var, log_var) and torch.allclose(back_lower, lower)
    # zero off-diagonal outputs are the diagonal Gaussian
    assert torch.equal(
        scale_tril(log_var, torch.zeros_like(lower)),
        torch.diag_embed(tril.diagonal(dim1=-2, dim2=-1)),
    )
