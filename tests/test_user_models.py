"""The user's own Pyro models, end to end: training with ``fit``, per-datapoint evaluation,
plates with any name, global latents, image-shaped data, the baselines."""

import math
import warnings

import pyro
import pytest
import torch
from marginal_helpers import bound_objective, mnist, requires_data
from user_models import GlobalNoiseModel, PyroExampleVAE, TinyConvVAE, TwoLatentModel

from pyro_aevb import (
    MonteCarloEM,
    elbo_per_datapoint,
    evaluate_bound,
    fit,
    load_dataset,
    load_run,
    log_marginal,
    mlp_vae,
)
from pyro_aevb.mcmc import PerDatapointPotential, sample


# ------------------------------------------------------------------ Pyro's example VAE
@requires_data
def test_pyro_example_vae_trains_unchanged_and_matches_the_paper_vae():
    """Pyro's example model as written (model(x)/guide(x), pyro.module, a plate named as the
    user likes, a pyro.param in the guide) trains through fit on real MNIST, reports the
    per-datapoint objective at the right N/M scale, and reaches the test bound of a paper VAE
    of the same size trained the same way."""
    ds = mnist().subset(10_000, 1000)
    kw = dict(optimizer="adam", lr=1e-3, num_samples=60_000, eval_every=30_000, progress=False)
    torch.manual_seed(0)
    theirs = PyroExampleVAE(z_dim=20, hidden_dim=200, plate="batch", temperature=True)
    result = fit(theirs, ds, plate_name="batch", **kw)
    assert result.path == "compiled" and "not a pyro_aevb" in result.path_reason
    final = result.history[-1]
    # the reported loss (mean over the second half of training) is per datapoint: on the
    # scale of the bound, not N/M = 100 times smaller
    assert abs(final["loss"] + final["train_bound"]) < 0.15 * abs(final["train_bound"])
    t = float(pyro.param("temperature"))
    assert abs(t - 1.0) > 0.01  # the guide's pyro.param was trained (it starts at 1)
    torch.manual_seed(0)
    ours = fit(mlp_vae(784, 20, 200), ds, **kw).history[-1]
    gap = final["test_bound"] - ours["test_bound"]
    noise = 3 * math.hypot(final["test_bound_stderr"], ours["test_bound_stderr"])
    assert abs(gap) < max(noise, 3.0), (final["test_bound"], ours["test_bound"])


def test_params_of_modules_and_param_store_are_checkpointed_and_resume_exactly(tmp_path):
    x = (torch.rand(300, 784) < 0.2).float()
    kw = dict(batch_size=50, lr=0.01, optimizer="adam", eval_every=600, progress=False, seed=3)
    torch.manual_seed(0)
    straight = PyroExampleVAE(z_dim=3, hidden_dim=16, temperature=True)
    fit(straight, x, num_samples=1200, out_dir=tmp_path / "a", **kw)
    t_straight = float(pyro.param("temperature"))
    pyro.clear_param_store()
    torch.manual_seed(0)
    fit(PyroExampleVAE(z_dim=3, hidden_dim=16, temperature=True), x, num_samples=600,
        out_dir=tmp_path / "b", **kw)  # fmt: skip
    pyro.clear_param_store()
    torch.manual_seed(123)  # another init: everything must come from the checkpoint
    resumed = PyroExampleVAE(z_dim=3, hidden_dim=16, temperature=True)
    fit(resumed, x, num_samples=1200, out_dir=tmp_path / "b", resume=True, **kw)
    assert float(pyro.param("temperature")) == t_straight
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)
    # load_run gives the same model back, its pyro.param included
    pyro.clear_param_store()
    fresh = PyroExampleVAE(z_dim=3, hidden_dim=16, temperature=True)
    with pytest.raises(ValueError, match="pass data="):
        load_run(tmp_path / "b", model=fresh)
    load_run(tmp_path / "b", model=fresh, data=x[:2])
    assert float(pyro.param("temperature")) == t_straight
    assert all(torch.equal(p, q) for p, q in zip(fresh.parameters(), resumed.parameters()))


def test_plain_functions_and_a_renamed_plate_work_everywhere():
    vae = PyroExampleVAE(z_dim=2, hidden_dim=8, plate="batch")
    x = (torch.rand(40, 784) < 0.2).float()
    result = fit(vae.model, x, guide=vae.guide, plate_name="batch", num_samples=200,
                 batch_size=20, progress=False)  # fmt: skip
    assert result.module is None and result.history[-1]["train_bound"] < 0
    assert result.config["num_data_route"] == "data-plate scaling"
    b = elbo_per_datapoint(vae.model, vae.guide, x[:7], plate_name="batch")
    assert b.shape == (7,)
    assert evaluate_bound(vae, x[:9], plate_name="batch").shape == (9,)
    for method, opts in (("iwae", {"num_particles": 10}), ("ais", {"num_temps": 3})):
        res = log_marginal(vae.model, vae.guide, x[:5], method, plate_name="batch", **opts)
        assert res.estimate.shape == (5,) and res.settings["plate_name"] == "batch"
    with pytest.raises(ValueError, match="plate named 'data'"):
        elbo_per_datapoint(vae.model, vae.guide, x[:7])


def test_a_model_that_subsamples_its_own_plate_is_refused_by_fit():
    def model(x):
        with pyro.plate("data", x.shape[0], subsample_size=5) as idx:
            z = pyro.sample("z", pyro.distributions.Normal(torch.zeros(5), 1.0))
            pyro.sample("x", pyro.distributions.Normal(z, 1.0), obs=x[idx])

    def guide(x):
        with pyro.plate("data", x.shape[0], subsample_size=5):
            pyro.sample("z", pyro.distributions.Normal(torch.zeros(5), 1.0))

    with pytest.raises(ValueError, match="subsamples its own data plate"):
        fit(model, torch.randn(50), guide=guide, num_samples=100, batch_size=10, progress=False)


def test_a_program_taking_the_wrong_arguments_gets_a_clear_error():
    vae = PyroExampleVAE(z_dim=2, hidden_dim=8)
    with pytest.raises(ValueError, match=r"running the model and guide on x of shape \(10, 5\)"):
        fit(vae, torch.rand(50, 5), num_samples=100, batch_size=10, progress=False)


# ------------------------------------------------------------------ global latents
def test_global_and_local_latents_train_and_evaluate_conditionally_on_the_globals():
    torch.manual_seed(0)
    truth = GlobalNoiseModel()
    with torch.no_grad():
        z = torch.randn(2000, 2)
        x = z @ truth.W.T + truth.b + 0.3 * torch.randn(2000, 6)
    torch.manual_seed(1)
    m = GlobalNoiseModel(plate="batch")
    result = fit(m, x[:1500], x[1500:], plate_name="batch", optimizer="adam", lr=0.02,
                 num_samples=150_000, eval_every=50_000, progress=False)  # fmt: skip
    sigma = float(torch.exp(pyro.param("sigma_loc")))
    assert abs(sigma - 0.3) < 0.03  # the global was learned (from exp(0) = 1)
    first, last = result.history[0], result.history[-1]
    assert last["test_bound"] > first["test_bound"]
    # evaluation conditions on the guide's median of sigma, and says so
    res = log_marginal(m.model, m.guide, x[1500:1600], "iwae", num_particles=2000,
                       plate_name="batch")  # fmt: skip
    assert res.settings["globals_conditioned_on"]["sigma"] == pytest.approx(sigma, rel=1e-6)
    exact = m.exact_log_marginal(x[1500:1600], torch.tensor(sigma)).detach()
    assert bool(((res.estimate - exact).abs() < 0.05).all())
    bound = elbo_per_datapoint(
        m.model, m.guide, x[1500:1600], plate_name="batch", num_particles=200
    ).detach()
    assert bound.shape == (100,) and float(bound.mean()) < float(exact.mean())


# ------------------------------------------------------------------ image-shaped data
@requires_data
def test_image_shaped_data_with_a_conv_model_through_every_estimator():
    images = load_dataset("mnist", flatten=False).subset(2000, 100)
    assert images.train.shape == (2000, 1, 28, 28)
    torch.manual_seed(0)
    vae = TinyConvVAE()
    result = fit(vae, images, optimizer="adam", lr=3e-3, num_samples=20_000,
                 eval_every=10_000, eval_size=100, progress=False)  # fmt: skip
    assert result.history[-1]["test_bound"] > result.history[0]["test_bound"]
    x = images.test[:6]
    assert elbo_per_datapoint(vae.model, vae.guide, x).shape == (6,)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the vectorized path must not fall back
        res = log_marginal(vae.model, vae.guide, x, "iwae", num_particles=50)
    assert res.estimate.shape == (6,)
    for method, opts in (
        ("appendix_d", {"num_samples": 20, "num_warmup": 20}),
        ("ais", {"num_temps": 20, "num_chains": 2}),
    ):
        res = log_marginal(vae.model, vae.guide, x, method, **opts)
        assert res.estimate.shape == (6,) and bool(torch.isfinite(res.estimate).all())


# ------------------------------------------------------------------ baselines on user models
def test_mcem_on_two_local_latents_targets_the_posterior_and_raises_log_p():
    torch.manual_seed(0)
    truth = TwoLatentModel()
    with torch.no_grad():
        truth.W.mul_(6.0)
        simulator = pyro.poutine.uncondition(truth.model)
        data = pyro.poutine.trace(simulator).get_trace(torch.zeros(120, 5)).nodes["x"]["value"]
    torch.manual_seed(1)
    model = TwoLatentModel()
    objective = bound_objective(MonteCarloEM(num_leapfrog=10), model, 120, data)
    objective._init_chains(data)
    idx = torch.arange(30)
    for _ in range(60):  # step sizes settle
        objective.e_step(data[:30], idx)
    draws = torch.stack([objective.e_step(data[:30], idx, adapt=False) for _ in range(300)])
    s_mcem = draws[..., -1].exp()  # the positive latent, mapped back through its transform
    pot = PerDatapointPotential(model.model, data[:30], num_chains=4)
    ref = sample(pot, pot.sample_prior(), num_samples=200, num_warmup=150, num_chains=4,
                 generator=torch.Generator().manual_seed(0))  # fmt: skip
    s_hmc = ref.by_chain(ref.samples)[..., -1].exp().reshape(-1, 30)
    diff = s_mcem.mean(0) - s_hmc.mean(0)
    se = (s_mcem.var(0) / 30 + s_hmc.var(0) / 80).sqrt()  # effective sizes, conservatively
    assert bool((diff.abs() < 4 * se).all()), diff / se
    ais = {"num_temps": 100, "num_chains": 8, "init": "prior"}
    before = log_marginal(model.model, None, data[:40], "ais", **ais).mean()
    fit(model, data, objective=MonteCarloEM(num_leapfrog=10), batch_size=40, lr=0.05,
        num_samples=120 * 60, progress=False, fast="off")  # fmt: skip
    after = log_marginal(model.model, None, data[:40], "ais", **ais).mean()
    assert after > before + 1.0


def test_wake_sleep_runs_on_a_user_model():
    x = (torch.rand(200, 784) < 0.2).float()
    torch.manual_seed(0)
    vae = PyroExampleVAE(z_dim=2, hidden_dim=16)
    result = fit(vae, x, objective="wake-sleep", num_samples=4000, batch_size=50, lr=0.01,
                 optimizer="adam", eval_every=2000, progress=False)  # fmt: skip
    assert result.path == "wake-sleep"
    assert result.history[-1]["train_bound"] > result.history[0]["train_bound"]
