"""Users' own models with nothing but an autoguide line: a LogNormal local latent (against
the exact log p(x) by quadrature), two local sites with every family, global and local
latents, and a positive local latent with a global one."""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from user_models import GammaScaleGlobalNoise, GlobalNoiseModel, PyroExampleVAE, TwoLatentModel

from pyro_aevb import AnalyticKLError, elbo_per_datapoint, fit, log_marginal
from pyro_aevb.autoguide import AmortizedIAF, AmortizedMultivariateNormal, AmortizedNormal
from pyro_aevb.evaluate import elbo_with_stderr

W_SCALE = torch.tensor([1.0, -0.5, 2.0])
NOISE = 0.3


def scale_model(x):
    """``s_i ~ LogNormal(0, 0.5)``, ``x_i ~ N(s_i w, 0.3^2 I_3)``: one positive local latent."""
    with pyro.plate("data", x.shape[0]):
        s = pyro.sample("s", dist.LogNormal(torch.zeros(x.shape[0]), 0.5))
        pyro.sample("x", dist.Normal(s.unsqueeze(-1) * W_SCALE, NOISE).to_event(1), obs=x)


def scale_log_marginal(x):
    """Exact ``log p(x_i)`` by quadrature over ``u = log s`` (trapezoid, 4001 points)."""
    u = torch.linspace(-4.0, 4.0, 4001, dtype=torch.float64)
    log_prior = dist.Normal(0.0, 0.5).log_prob(u)
    mean = u.exp().unsqueeze(-1) * W_SCALE.double()  # (U, 3)
    log_lik = dist.Normal(mean, NOISE).to_event(1).log_prob(x.double().unsqueeze(1))  # (B, U)
    log_w = torch.log(torch.full_like(u, float(u[1] - u[0])))
    log_w[[0, -1]] -= math.log(2.0)
    return torch.logsumexp(log_lik + log_prior + log_w, dim=-1).float()


def test_a_lognormal_local_latent_trains_with_estimator_b_and_matches_the_exact_log_p():
    torch.manual_seed(0)
    s = torch.distributions.LogNormal(0.0, 0.5).sample((1200,))
    x = s.unsqueeze(-1) * W_SCALE + NOISE * torch.randn(1200, 3)
    guide = AmortizedNormal(scale_model, hidden_dims=(16,))
    result = fit(scale_model, x[:1000], x[1000:], guide=guide, optimizer="adam", lr=0.01,
                 num_samples=30_000, eval_every=10_000, eval_size=200, progress=False)  # fmt: skip
    assert result.history[-1]["test_bound"] > result.history[0]["test_bound"] + 0.5
    test = x[1000:1050]
    site = poutine.trace(guide).get_trace(test).nodes["s"]
    assert isinstance(site["fn"], dist.TransformedDistribution) and bool((site["value"] > 0).all())
    exact = scale_log_marginal(test)
    res = log_marginal(scale_model, guide, test, "iwae", num_particles=1000)
    assert bool(((res.estimate - exact).abs() < 0.05 + 4 * res.stderr).all())
    # B's closed-form KL (LogNormal against the pushed-forward Normal) is A's KL in expectation
    a, se_a = elbo_with_stderr(scale_model, guide, test, estimator="A", num_particles=200)
    b, se_b = elbo_with_stderr(scale_model, guide, test, estimator="B", num_particles=200)
    assert abs(float(a.mean() - b.mean())) < 4 * float((se_a**2 + se_b**2).mean().sqrt())
    assert float(b.mean()) < float(exact.mean())  # a bound


def _two_latent_data(n):
    torch.manual_seed(0)
    truth = TwoLatentModel()
    with torch.no_grad():
        truth.W.mul_(6.0)
        trace = poutine.trace(poutine.uncondition(truth.model)).get_trace(torch.zeros(n, 5))
    return trace.nodes["x"]["value"]


@pytest.mark.parametrize(
    "cls, estimator",
    [(AmortizedNormal, "B"), (AmortizedMultivariateNormal, "A"), (AmortizedIAF, "A")],
)
def test_two_local_sites_train_and_evaluate_with_every_family(cls, estimator):
    data = _two_latent_data(700)
    torch.manual_seed(1)
    model = TwoLatentModel()  # its own encoder is not used: the autoguide replaces it
    guide = cls(model.model, hidden_dims=(32,))
    result = fit(model.model, data[:600], data[600:], guide=guide, estimator=estimator,
                 optimizer="adam", lr=0.01, num_samples=10_000, eval_every=5_000,
                 eval_size=100, progress=False)  # fmt: skip
    first, last = result.history[0], result.history[-1]
    assert last["test_bound"] > first["test_bound"] + 1.0
    assert guide.samples_site_directly is False  # z and s: no single vector site
    x = data[600:640]
    bound, se = elbo_with_stderr(model.model, guide, x, estimator=estimator, num_particles=20)
    iwae = log_marginal(model.model, guide, x, "iwae", num_particles=200)
    # IWAE tightens the bound: above it on average (up to the Monte Carlo error)
    assert float(iwae.estimate.mean()) > float(bound.mean()) - 4 * float(se.pow(2).mean().sqrt())
    ais = log_marginal(model.model, guide, x[:8], "ais", num_temps=10, num_chains=2,
                       init="encoder")  # fmt: skip
    assert bool(torch.isfinite(ais.estimate).all())


def test_global_and_local_latents_with_one_autoguide_line():
    torch.manual_seed(0)
    truth = GlobalNoiseModel()
    with torch.no_grad():
        z = torch.randn(1200, 2)
        x = z @ truth.W.T + truth.b + 0.3 * torch.randn(1200, 6)
    torch.manual_seed(1)
    m = GlobalNoiseModel()  # the model is used as written; its own guide is not
    guide = AmortizedNormal(m.model, hidden_dims=(16,))
    # Pyro's AutoNormal (the default for globals) sets sigma from an auxiliary draw: B refuses
    with pytest.raises(AnalyticKLError, match="sigma_unconstrained"):
        fit(m.model, x, guide=guide, num_samples=200, progress=False)
    pyro.clear_param_store()
    torch.manual_seed(1)
    m = GlobalNoiseModel()
    guide = AmortizedNormal(m.model, hidden_dims=(16,))
    result = fit(m.model, x[:1000], x[1000:], guide=guide, estimator="A", optimizer="adam",
                 lr=0.05, batch_size=200, num_samples=20_000, eval_every=10_000,
                 progress=False)  # fmt: skip
    assert result.history[-1]["test_bound"] > result.history[0]["test_bound"]
    sigma = float(guide.median(x[:2])["sigma"])
    assert abs(sigma - 0.3) < 0.1  # learned from exp(0) = 1
    res = log_marginal(m.model, guide, x[1000:1050], "iwae", num_particles=2000)
    assert res.settings["globals_conditioned_on"]["sigma"] == pytest.approx(sigma, rel=1e-6)
    exact = m.exact_log_marginal(x[1000:1050], torch.tensor(sigma)).detach()
    assert bool(((res.estimate - exact).abs() < 0.05 + 4 * res.stderr).all())
    assert abs(float((res.estimate - exact).mean())) < 0.02
    # AutoDelta for the globals: MAP, and estimator B (KL of a point mass: -log p(sigma))
    pyro.clear_param_store()
    m = GlobalNoiseModel()
    guide = AmortizedNormal(m.model, hidden_dims=(16,), global_guide="delta")
    result = fit(m.model, x, guide=guide, estimator="B", optimizer="adam", lr=0.03,
                 num_samples=2000, progress=False)  # fmt: skip
    assert math.isfinite(result.history[-1]["train_bound"])


def test_a_positive_local_latent_and_a_global_need_nothing_but_the_autoguide_line():
    torch.manual_seed(0)
    truth = GammaScaleGlobalNoise()
    with torch.no_grad():
        truth.W.mul_(3.0)
        sim = poutine.uncondition(poutine.condition(truth.model, {"sigma": torch.tensor(0.2)}))
        x = poutine.trace(sim).get_trace(torch.zeros(900, 6)).nodes["x"]["value"]
    torch.manual_seed(1)
    model = GammaScaleGlobalNoise()
    guide = AmortizedNormal(model.model)
    result = fit(model.model, x[:800], x[800:], guide=guide, estimator="A", optimizer="adam",
                 lr=0.003, num_samples=20_000, eval_every=10_000, eval_size=100,
                 progress=False)  # fmt: skip
    assert result.history[-1]["test_bound"] > result.history[0]["test_bound"] + 1.0
    assert set(guide(x[:3])) == {"sigma", "z", "r"} and bool((guide(x[:3])["r"] > 0).all())
    bound = elbo_per_datapoint(model.model, guide, x[800:820], estimator="A").detach()
    res = log_marginal(model.model, guide, x[800:820], "iwae", num_particles=200)
    assert bound.shape == res.estimate.shape == (20,)
    assert "sigma" in res.settings["globals_conditioned_on"]
    with pytest.raises(AnalyticKLError):  # a Gamma latent has no closed-form KL to a Normal
        elbo_per_datapoint(model.model, guide, x[:5], estimator="B")


@pytest.mark.parametrize("cls", [AmortizedNormal, AmortizedMultivariateNormal, AmortizedIAF])
def test_the_networks_are_registered_outside_the_data_plate(cls):
    """The guide's weights are global parameters: none is recorded inside the data plate
    (where a weight whose size equals the minibatch's would look per-datapoint), and Pyro's
    example VAE (z_dim 5: a head of 2 x 5 = 10 outputs) trains with minibatches of 10 rows."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = PyroExampleVAE(z_dim=5, hidden_dim=16)
    guide = cls(vae.model, hidden_dims=16)
    x = (torch.rand(40, 784) < 0.3).float()
    trace = poutine.trace(guide).get_trace(x[:10])
    params = [s for s in trace.nodes.values() if s["type"] == "param"]
    assert params and all(not s["cond_indep_stack"] for s in params)
    trace = poutine.trace(guide.local_guide(guide.local_params(x[:10]))).get_trace(x[:10])
    assert all(not s["cond_indep_stack"] for s in trace.nodes.values() if s["type"] == "param")
    result = fit(vae.model, x, guide=guide, estimator="A", batch_size=10, num_samples=40,
                 optimizer="adam", lr=1e-3, progress=False)  # fmt: skip
    assert result.samples == 40


@pytest.mark.parametrize("cls", [AmortizedNormal, AmortizedMultivariateNormal, AmortizedIAF])
def test_pyros_param_store_save_and_load_restores_a_trained_guide(cls, tmp_path):
    """Pyro's convention: train, save the param store, load it in a new session, build a
    new guide of the same name: it starts from the saved values (encoder and global guide),
    as Pyro's AutoNormal does. Entries of a live guide of the same name are not taken, and
    entries that do not fit are dropped with a warning."""

    def model(x):
        sig = pyro.sample("sig", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            loc = z.sum(-1, keepdim=True) * torch.ones(3)
            pyro.sample("x", dist.Normal(loc, sig).to_event(1), obs=x)

    pyro.clear_param_store()
    torch.manual_seed(0)
    x = 2 * torch.randn(20, 3)
    trained = cls(model, hidden_dims=(8,))
    svi = pyro.infer.SVI(model, trained, pyro.optim.Adam({"lr": 0.05}), pyro.infer.Trace_ELBO())
    for _ in range(30):
        svi.step(x)
    saved = {k: v.clone() for k, v in trained.state_dict().items() if torch.is_tensor(v)}
    pyro.get_param_store().save(tmp_path / "params.pt")

    # a live guide of the same name: its entries are its own, not a store to start from
    fresh = cls(model, hidden_dims=(8,))
    fresh(x)
    assert not any(
        torch.equal(a, b) for a, b in zip(fresh.parameters(), trained.parameters(), strict=True)
    )

    pyro.clear_param_store()
    pyro.get_param_store().load(tmp_path / "params.pt")
    loaded = cls(model, hidden_dims=(8,))
    loaded(x)
    for k, v in loaded.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, saved[k]), k
    # the guide trains its own tensors, which the store now holds
    store = dict(pyro.get_param_store().named_parameters())
    own = {id(p) for p in loaded.parameters()}
    assert all(id(v) in own for k, v in store.items() if k.startswith(cls.__name__))

    pyro.clear_param_store()
    pyro.get_param_store().load(tmp_path / "params.pt")
    with pytest.warns(UserWarning, match=r"do not fit this .*another shape.*dropped"):
        cls(model, hidden_dims=(5,))(x)
