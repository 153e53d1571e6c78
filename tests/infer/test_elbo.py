"""The two SGVB estimators: analytic values, agreement, variance, bounds and scaling."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

from pyro_aevb import AnalyticKL_ELBO, AnalyticKLError, elbo_per_datapoint, fit, make_elbo, mlp_vae
from pyro_aevb.models import LinearGaussian


def small_vae(**kwargs):
    vae = mlp_vae(20, 4, (16,), init_std=0.3, **kwargs).double()
    return vae


def test_estimator_b_kl_term_is_the_closed_form():
    vae = small_vae(weight_prior_std=None)
    x = torch.rand(7, 20, dtype=torch.float64)
    torch.manual_seed(3)
    bound_b = elbo_per_datapoint(vae.model, vae.guide, x, estimator="B")
    # Same draw of eps as the guide's Normal.rsample.
    torch.manual_seed(3)
    loc, log_var = vae.encoder(x).chunk(2, -1)
    z = loc + torch.exp(0.5 * log_var) * torch.randn_like(loc)
    loglik = vae.likelihood_dist(z).log_prob(x)
    kl_closed = -0.5 * (1 + log_var - loc**2 - log_var.exp()).sum(-1)
    torch.testing.assert_close(loglik - bound_b, kl_closed, rtol=0, atol=1e-12)
    # The same through the ELBO object used for training.
    torch.manual_seed(3)
    loss = AnalyticKL_ELBO().differentiable_loss(vae.model, vae.guide, x)
    torch.testing.assert_close(loss, -(loglik - kl_closed).sum(), rtol=0, atol=1e-10)


def test_estimator_b_is_strict_where_tracemeanfield_falls_back():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
            pyro.sample("x", dist.Poisson(rate), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.zeros(x.shape[0]))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("rate", dist.LogNormal(loc, 0.5))

    x = torch.tensor([1.0, 3.0, 2.0])
    TraceMeanField_ELBO().loss(model, guide, x)  # Pyro silently uses a Monte Carlo term
    with pytest.raises(AnalyticKLError, match="site 'rate'.*LogNormal.*Gamma"):
        AnalyticKL_ELBO().loss(model, guide, x)
    with pytest.raises(AnalyticKLError, match="'rate'"):
        elbo_per_datapoint(model, guide, x, estimator="B")
    assert torch.isfinite(elbo_per_datapoint(model, guide, x, estimator="A")).all()

    def vector_guide(x):  # the wrapped distributions are named, not just "Independent"
        loc = pyro.param("loc_vector", torch.zeros(x.shape[0], 2))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("rate", dist.LogNormal(loc, 0.5).to_event(1))

    def vector_model(x):
        with pyro.plate("data", x.shape[0]):
            rate = pyro.sample("rate", dist.Gamma(2.0, 1.0).expand([x.shape[0], 2]).to_event(1))
            pyro.sample("x", dist.Poisson(rate.sum(-1)), obs=x)

    with pytest.raises(
        AnalyticKLError, match=r"Independent\(LogNormal\(Normal\)\).*Independent\(Gamma\)"
    ):
        AnalyticKL_ELBO().loss(vector_model, vector_guide, x)


def test_estimators_a_and_b_agree_and_b_has_lower_variance():
    vae = small_vae()
    x = torch.rand(5, 20, dtype=torch.float64)
    n = 4000
    with torch.no_grad():
        xa = x.repeat(n, 1)
        a = elbo_per_datapoint(vae.model, vae.guide, xa, estimator="A").reshape(n, 5)
        b = elbo_per_datapoint(vae.model, vae.guide, xa, estimator="B").reshape(n, 5)
    diff = a.mean(0) - b.mean(0)
    stderr = (a.var(0) / n + b.var(0) / n).sqrt()
    assert bool((diff.abs() < 4 * stderr).all()), (diff, stderr)
    assert bool((b.var(0) < a.var(0)).all())


@pytest.fixture
def linear_gaussian():
    torch.manual_seed(1)
    m = LinearGaussian(6, 2, sigma=0.7).double()
    with torch.no_grad():
        m.enc_A.normal_(0, 0.3)
        m.enc_log_var.fill_(-1.0)
    return m


def test_bound_below_exact_log_likelihood_and_estimators_match_its_value(linear_gaussian):
    m = linear_gaussian
    x = m.marginal().sample((4,)) + 0.3
    with torch.no_grad():
        loc = (x - m.enc_c) @ m.enc_A.T
        scale = torch.exp(0.5 * m.enc_log_var).expand_as(loc)
        analytic = m.analytic_elbo(x, loc, scale)
        exact = m.log_marginal(x)
        assert bool((analytic < exact).all())
        n = 3000
        for estimator in ("A", "B"):
            est = elbo_per_datapoint(m.model, m.guide, x.repeat(n, 1), estimator=estimator).reshape(
                n, 4
            )
            stderr = est.std(0) / math.sqrt(n)
            assert bool(((est.mean(0) - analytic).abs() < 4 * stderr + 1e-9).all())


def test_bound_equals_log_likelihood_with_the_exact_posterior_as_guide(linear_gaussian):
    m = linear_gaussian
    x = m.marginal().sample((5,))
    with torch.no_grad():
        exact = m.log_marginal(x)
        # Estimator A: every single draw equals log p(x) (zero variance).
        for _ in range(3):
            a = elbo_per_datapoint(m.model, m.exact_guide, x, estimator="A")
            torch.testing.assert_close(a, exact, rtol=0, atol=1e-9)
        # Estimator B: equal in expectation.
        n = 4000
        b = elbo_per_datapoint(m.model, m.exact_guide, x.repeat(n, 1), estimator="B")
        b = b.reshape(n, 5)
        assert bool(((b.mean(0) - exact).abs() < 4 * b.std(0) / math.sqrt(n)).all())


@pytest.mark.parametrize("estimator", ["A", "B"])
@pytest.mark.parametrize("prior", [None, 1.0])
def test_minibatch_loss_scales_to_the_sum_of_per_datapoint_bounds(estimator, prior):
    vae = small_vae(weight_prior_std=prior)
    x = torch.rand(8, 20, dtype=torch.float64)
    big_n = 1000
    torch.manual_seed(5)
    loss = make_elbo(estimator).differentiable_loss(vae.model, vae.guide, x, big_n)
    torch.manual_seed(5)
    bounds = elbo_per_datapoint(vae.model, vae.guide, x, estimator=estimator)
    log_prior = vae.log_weight_prior() if prior else 0.0
    # loss = -(N/M) sum_i L_i - log p(theta)
    torch.testing.assert_close((loss + log_prior) * 8 / big_n, -bounds.sum(), rtol=1e-10, atol=1e-9)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in vae.parameters())
    assert any(p.grad.abs().sum() > 0 for p in vae.parameters())


def test_per_datapoint_bound_validates_arguments():
    vae = small_vae()
    x = torch.rand(3, 20, dtype=torch.float64)
    with pytest.raises(ValueError, match="estimator"):
        elbo_per_datapoint(vae.model, vae.guide, x, estimator="C")
    with pytest.raises(ValueError, match="num_particles"):
        elbo_per_datapoint(vae.model, vae.guide, x, num_particles=0)
    with pytest.raises(ValueError, match="plate named 'batch'"):
        elbo_per_datapoint(vae.model, vae.guide, x, plate_name="batch")


def test_estimator_b_weighs_a_scale_or_mask_on_the_models_site_as_estimator_a_does():
    """A KL weight written around the model's latent only (beta-VAE, annealing): estimator A
    estimates beta E_q[log p(z)] - E_q[log q(z)] + E_q[log p(x | z)]; B must compute the same
    in closed form, -beta KL + (1 - beta) H(q), not drop the model's scale."""
    beta, x = 0.25, torch.randn(3, 2, dtype=torch.float64)
    keep = torch.tensor([True, False, True])

    def model(x, mask=False):
        with pyro.plate("data", 3):
            with pyro.poutine.scale(scale=beta), pyro.poutine.mask(mask=keep if mask else True):
                z = pyro.sample("z", dist.Normal(x.new_zeros(3, 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x, mask=False):
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Normal(x / 2, 0.6).to_event(1))

    q = dist.Normal(x / 2, 0.6).to_event(1)
    kl = torch.distributions.kl_divergence(q, dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
    for mask in (False, True):
        torch.manual_seed(7)
        got = -AnalyticKL_ELBO().differentiable_loss(model, guide, x, mask)
        torch.manual_seed(7)  # the same draw of z
        guide_tr = pyro.poutine.trace(guide).get_trace(x, mask)
        z = guide_tr.nodes["z"]["value"]
        lik = dist.Normal(z, 1.0).to_event(1).log_prob(x).sum()
        w = keep.double() if mask else torch.ones(3, dtype=torch.float64)
        expected = lik + (w * beta * (-kl - q.entropy())).sum() + q.entropy().sum()
        torch.testing.assert_close(got, expected)
        # and A, averaged over many draws, estimates the same value as B
        opts = {"num_particles": 4000, "vectorize_particles": True, "max_plate_nesting": 1}
        losses = [
            e.loss(model, guide, x, mask)
            for e in (pyro.infer.Trace_ELBO(**opts), AnalyticKL_ELBO(**opts))
        ]
        assert abs(losses[0] - losses[1]) < 0.15, losses


def test_estimator_b_names_a_guide_site_without_rsample_and_the_fix():
    """A discrete guide site under estimator B (the default): fit refuses it at set-up,
    naming the site and estimator A, with no fallback warning first (Pyro's own error names
    neither)."""
    import warnings

    import pyro.distributions as dist

    from pyro_aevb import fit

    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(torch.ones(x.shape[0], 3) / 3))
            pyro.sample("x", dist.Normal(c.float(), 1.0), obs=x)

    def guide(x):
        p = pyro.param("p", torch.ones(3) / 3, constraint=dist.constraints.simplex)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Categorical(p.expand(x.shape[0], 3)))

    pyro.clear_param_store()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with pytest.raises(AnalyticKLError, match=r"site 'c' has guide distribution Categorical"):
            fit(model, torch.randn(20), guide=guide, num_samples=40, batch_size=20, progress=False)
    pyro.clear_param_store()
    res = fit(
        model,
        torch.randn(20),
        guide=guide,
        estimator="A",
        num_samples=40,
        batch_size=20,
        progress=False,
    )
    assert res.history[-1]["samples"] == 40


def test_estimator_b_refuses_a_guide_drawing_a_site_before_its_model_parent():
    """A top-down model p(z2) p(z1 | z2) with a bottom-up guide q(z1 | x) q(z2 | z1): the KL
    of z1 would be taken at a z2 drawn from z1, a bound biased by a * s1^2 per datapoint
    (either sign). Refused by the ELBO (with and without gradients), the trainer and the
    per-datapoint bound; the same guide drawing in the model's order is exact (B's mean
    matches A's)."""
    a = 1.5

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(torch.zeros(x.shape[0]), 1.0))
            z1 = pyro.sample("z1", dist.Normal(z2, 1.0))
            pyro.sample("x", dist.Normal(z1, 1.0), obs=x)

    def bottom_up(x):
        s1 = pyro.param("s1", torch.tensor(0.5), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(0.5 * x, s1))
            pyro.sample("z2", dist.Normal(a * z1, 0.7))

    def top_down(x):
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(0.3 * x, 0.7))
            pyro.sample("z1", dist.Normal(0.5 * z2, 0.5))

    x = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    match = r"guide draws latent site 'z1' before 'z2', but the model's distribution at 'z1'"
    with pytest.raises(AnalyticKLError, match=match + " depends on 'z2'"):
        AnalyticKL_ELBO().differentiable_loss(model, bottom_up, x)
    with pytest.raises(AnalyticKLError, match=match + " depends on 'z2'"):
        AnalyticKL_ELBO().loss(model, bottom_up, x)  # no gradients: from the model's run
    with pytest.raises(AnalyticKLError, match=match):
        elbo_per_datapoint(model, bottom_up, x, estimator="B")
    pyro.clear_param_store()
    with pytest.raises(AnalyticKLError, match=match):
        fit(model, torch.randn(20, dtype=torch.float64), guide=bottom_up, estimator="B",
            num_samples=40, batch_size=10, progress=False)  # fmt: skip

    torch.manual_seed(0)
    a_loss = torch.tensor([pyro.infer.Trace_ELBO().loss(model, top_down, x) for _ in range(1000)])
    b_loss = torch.tensor([AnalyticKL_ELBO().loss(model, top_down, x) for _ in range(1000)])
    stderr = math.hypot(a_loss.std(), b_loss.std()) / math.sqrt(1000)
    assert abs(float(a_loss.mean() - b_loss.mean())) < 4 * stderr


def test_estimator_b_takes_independent_sites_drawn_in_another_order():
    """A global latent the model draws after the data plate, which the amortized guides (and
    many hand-written ones) draw first: no model distribution depends on a later draw, so B
    is exact and runs, through the trainer too, without Pyro's order warning."""
    import warnings

    from pyro_aevb import AmortizedNormal

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)
        pyro.sample("s", dist.Gamma(2.0, 1.0))

    def globals_first(x):
        pyro.sample("s", dist.Gamma(3.0, 1.5))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))

    x = torch.randn(30, 1)
    pyro.clear_param_store()
    guide = AmortizedNormal(model, hidden_dims=(4,), global_guide="delta")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Failed to verify mean field restriction"
        assert math.isfinite(AnalyticKL_ELBO().loss(model, guide, x))
        assert math.isfinite(AnalyticKL_ELBO().loss(model, globals_first, x))
        result = fit(model, x, guide=guide, estimator="B", num_samples=60, batch_size=10,
                     progress=False)  # fmt: skip
    assert math.isfinite(result.history[-1]["loss"])
