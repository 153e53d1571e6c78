"""Monte Carlo EM: E-step chains target the exact posterior; M-step climbs to the known
maximum-likelihood solution of probabilistic PCA."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from marginal_helpers import bound_objective

from pyro_aevb import MonteCarloEM, fit, mlp_vae
from pyro_aevb.models import LinearGaussian


def ppca_max_log_likelihood(x: torch.Tensor, k: int) -> torch.Tensor:
    """Tipping & Bishop's closed-form ML solution: mean log p(x) per datapoint at the optimum."""
    n, d = x.shape
    mu = x.mean(0)
    s = (x - mu).T @ (x - mu) / n
    evals = torch.linalg.eigvalsh(s).flip(0)
    sigma2 = evals[k:].mean()
    cov_ml_logdet = torch.log(evals[:k]).sum() + (d - k) * torch.log(sigma2)
    # At the optimum, tr(C^-1 S) = d.
    return -0.5 * (d * torch.log(torch.tensor(2 * torch.pi, dtype=x.dtype)) + cov_ml_logdet + d)


@pytest.fixture
def ppca():
    torch.manual_seed(0)
    truth = LinearGaussian(4, 1, sigma=0.4).double()
    with torch.no_grad():
        truth.b.copy_(torch.tensor([1.0, -1.0, 0.5, 0.0]))
    x = truth.marginal().sample((200,))
    return truth, x


@pytest.mark.filterwarnings("ignore:.*was not registered in the param store")
def test_e_step_chains_sample_the_exact_posterior(ppca):
    truth, x = ppca
    n, draws_per_chain = 100, 400
    obj = bound_objective(MonteCarloEM(num_leapfrog=10), truth, n, x[:n])
    idx = torch.arange(n)
    obj._init_chains(x[:n])
    for _ in range(50):  # adapt step sizes
        obj.e_step(x[:n], idx)
    draws = torch.stack(
        [obj.e_step(x[:n], idx, adapt=False).clone() for _ in range(draws_per_chain)]
    )
    mean, cov = truth.posterior(x[:n])
    # Persistent chains are autocorrelated: allow an effective sample size of 1/10 the draws.
    stderr = (torch.diagonal(cov).sqrt() / (draws_per_chain / 10) ** 0.5).expand_as(mean)
    assert bool(((draws.mean(0) - mean).abs() < 4 * stderr).all())
    var = draws.var(0).mean(0)  # pooled over the chains
    torch.testing.assert_close(var, torch.diagonal(cov), rtol=0.1, atol=0)
    assert 0.8 < obj.diagnostics()["accept_prob"] <= 1.0


@pytest.mark.filterwarnings("ignore:.*was not registered in the param store")
def test_m_steps_reach_the_maximum_likelihood_of_ppca(ppca):
    _, x = ppca
    torch.manual_seed(1)
    model = LinearGaussian(4, 1, sigma=1.0, init_scale=0.3).double()
    for p in (model.enc_A, model.enc_c, model.enc_log_var):
        p.requires_grad_(False)  # no encoder in MCEM
    start = float(model.log_marginal(x).mean())
    fit(
        model,
        x,
        algorithm="mcem",
        num_samples=200 * 150,
        batch_size=200,
        lr=0.05,
        fast="off",
        progress=False,
        eval_every=200 * 150,
    )
    best = float(ppca_max_log_likelihood(x, 1))
    final = float(model.log_marginal(x).mean())
    assert start < best - 0.5
    assert best - 0.05 < final <= best + 1e-9


def test_vae_direct_potential_equals_the_generic_one():
    torch.manual_seed(0)
    vae = mlp_vae(12, 3, 8, init_std=0.3).double()
    x = torch.rand(5, 12, dtype=torch.float64)
    z = torch.randn(5, 3, dtype=torch.float64)
    a = bound_objective(MonteCarloEM(), vae, 50, x)
    b = bound_objective(MonteCarloEM(), vae, 50, x, fast="off")
    assert a.direct and not b.direct
    torch.testing.assert_close(a._potential_fn(x)(z), b._potential_fn(x)(z))
    la = a.loss_and_grads(x, z)
    ga = [p.grad.clone() for p in a.params]
    lb = b.loss_and_grads(x, z)
    torch.testing.assert_close(la, lb)
    for g, p in zip(ga, b.params):
        torch.testing.assert_close(g, p.grad)
    # the unused encoder (in the loss through the weight prior) gathers no gradient
    assert all(p.grad is None for p in vae.encoder.parameters())


def test_mcem_runs_in_the_trainer_and_resumes(tmp_path):
    x = (torch.rand(100, 20) < 0.3).float()
    kw = dict(algorithm="mcem", batch_size=50, progress=False, out_dir=tmp_path)
    fit(mlp_vae(20, 2, 8), x, num_samples=200, **kw)
    result = fit(mlp_vae(20, 2, 8), x, num_samples=400, resume=True, **kw)
    assert result.path == "mcem" and "train_bound" not in result.history[-1]
    assert 0 < result.history[-1]["accept_prob"] <= 1


@pytest.mark.parametrize(
    "option, value, error",
    [
        ("num_leapfrog", 0, ValueError),
        ("num_transitions", "2", TypeError),
        ("num_m_steps", 1.5, TypeError),
        ("target_accept", 1.0, ValueError),
        ("init_step_size", float("nan"), ValueError),
        ("adapt_gain", -0.1, ValueError),
        ("step_size_jitter", 1.0, ValueError),
    ],
)
def test_bad_options_are_refused_when_built_naming_the_option(option, value, error):
    with pytest.raises(error, match=option):
        MonteCarloEM(**{option: value})


class _Branches(torch.nn.Module):
    """Local latents only, but reads a value of its latent: its potential cannot be recorded."""

    def model(self, x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x)), 1.0))
            if float(z.sum()) > 1e9:
                z = z + 1
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)


class _Linear(torch.nn.Module):
    """A recordable user model: one local latent per row, a trained offset."""

    def __init__(self):
        super().__init__()
        self.b = torch.nn.Parameter(torch.zeros(()))

    def model(self, x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x)), 1.0))
            pyro.sample("x", dist.Normal(z + self.b, 1.0), obs=x)


def test_fast_on_needs_a_recorded_e_step_potential():
    torch.manual_seed(0)
    x = torch.randn(6, dtype=torch.float64)
    with pytest.raises(ValueError, match="Monte Carlo EM's E-step: fast='on'.*cannot be compiled"):
        bound_objective(MonteCarloEM(), _Branches(), 6, x, fast="on")
    with pytest.raises(ValueError, match="fast='on'"):
        fit(_Branches(), x, algorithm="mcem", fast="on", num_samples=12, progress=False)
    # "auto" runs the same model traced, and says it may
    auto = bound_objective(MonteCarloEM(), _Branches(), 6, x, fast="auto")
    assert "where the model allows" in auto.path_reason
    auto._init_chains(x)
    auto.e_step(x, torch.arange(6))
    assert bool(torch.isfinite(auto.chains).all())
    # a recordable model runs with "on", its potential recorded, and the run says so
    model = _Linear().double()
    strict = bound_objective(MonteCarloEM(), model, 6, x, fast="on")
    assert not strict.direct and "required by fast='on'" in strict.path_reason
    strict._init_chains(x)
    assert strict._potential_fn(x).path == "compiled"
    result = fit(model, x, algorithm="mcem", fast="on", num_samples=12, progress=False)
    assert "recorded once" in result.path_reason


def test_a_guide_given_to_monte_carlo_em_is_refused_not_ignored():
    import pyro

    from pyro_aevb import AmortizedNormal, MonteCarloEM, fit, mlp_vae

    vae = mlp_vae(20, 2, (8,))
    pyro.clear_param_store()
    guide = AmortizedNormal(vae.model, hidden_dims=(4,))
    x = (torch.rand(20, 20) < 0.3).float()
    with pytest.raises(ValueError, match="guide= is given, but Monte Carlo EM uses no guide"):
        fit(vae, x, guide=guide, objective=MonteCarloEM(), num_samples=20, progress=False)


def test_a_run_resumed_between_evaluations_records_the_same_acceptance_rate(tmp_path, monkeypatch):
    """The acceptance totals since the last record are part of the checkpoint: a run killed
    after a save between two evaluations, and resumed, gives the history of an uninterrupted
    run (here: a copy of the run folder taken after the extra checkpoint at 300 samples)."""
    import shutil

    from pyro_aevb.train import trainer as trainer_module

    save = trainer_module.Trainer.save
    copy = tmp_path / "killed_at_300"

    def save_and_copy(self):
        path = save(self)
        if self.samples == 300 and not copy.exists():
            shutil.copytree(self.out_dir, copy, ignore=shutil.ignore_patterns(".pyro-aevb.lock"))
        return path

    monkeypatch.setattr(trainer_module.Trainer, "save", save_and_copy)
    x = (torch.rand(100, 20, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    kw = dict(algorithm="mcem", batch_size=50, progress=False, seed=0, eval_every=200)
    pyro.clear_param_store()
    whole = fit(
        mlp_vae(20, 2, 8), x, num_samples=400, out_dir=tmp_path / "run", checkpoint_every=100, **kw
    )
    pyro.clear_param_store()
    resumed = fit(mlp_vae(20, 2, 8), x, num_samples=400, out_dir=copy, resume=True, **kw)

    def numbers(history):  # wall times differ between runs
        return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in history]

    assert numbers(resumed.history) == numbers(whole.history)


def _after_one_step():
    """Monte Carlo EM (3 M-steps) on 50 rows after one good step (chains initialised):
    ``(objective, x, idx, optimizer)``."""
    from pyro_aevb.poutine import TrainingProgram
    from pyro_aevb.train.optim import make_optimizer

    torch.manual_seed(0)
    vae = mlp_vae(20, 2, 8)
    x = (torch.rand(50, 20) < 0.3).float()
    bound = MonteCarloEM(num_m_steps=3).bind(TrainingProgram(vae.model, None, num_data=50))
    bound.setup(x)
    optimizer = make_optimizer("adagrad", bound.params, 0.01)
    idx = torch.arange(50)
    bound.train_step(x, idx, optimizer)
    return bound, x, idx, optimizer


def test_a_diverging_m_step_undoes_the_whole_step():
    """A later M-step's non-finite loss: the earlier M-steps' updates and the E-step's chains
    are undone, so the parameters are those before the minibatch, as the error says."""
    bound, x, idx, optimizer = _after_one_step()
    before = [p.detach().clone() for p in bound.params]
    chains, step_size = bound.chains.clone(), bound.step_size.clone()
    calls = {"n": 0}
    original = bound.loss_and_grads

    def third_fails(xb, u):
        calls["n"] += 1
        loss = original(xb, u)
        return loss if calls["n"] < 3 else torch.full_like(loss, float("inf"))

    bound.loss_and_grads = third_fails
    assert bound.train_step(x, idx, optimizer) == float("inf")
    for p, q in zip(bound.params, before, strict=True):
        assert torch.equal(p.detach(), q)
    assert torch.equal(bound.chains, chains) and torch.equal(bound.step_size, step_size)


def test_an_error_in_a_later_m_step_undoes_the_whole_step():
    """An M-step that raises after earlier updates (a non-finite gradient refused before its
    update, an invalid distribution argument) undoes the step as a non-finite loss does,
    acceptance totals included, and the error propagates."""
    bound, x, idx, optimizer = _after_one_step()
    before = [p.detach().clone() for p in bound.params]
    first = next(iter(bound.params))
    state = {k: v.clone() for k, v in optimizer.state[first].items()}
    chains, step_size = bound.chains.clone(), bound.step_size.clone()
    totals = (bound._accept_sum, bound._accept_count)
    calls = {"n": 0}
    original = bound.loss_and_grads

    def third_raises(xb, u):
        calls["n"] += 1
        if calls["n"] == 3:
            raise ValueError("Expected parameter scale to satisfy the constraint GreaterThan")
        return original(xb, u)

    bound.loss_and_grads = third_raises
    with pytest.raises(ValueError, match="Expected parameter scale"):
        bound.train_step(x, idx, optimizer)
    for p, q in zip(bound.params, before, strict=True):
        assert torch.equal(p.detach(), q)
    for k, v in optimizer.state[first].items():
        assert torch.equal(v, state[k])
    assert torch.equal(bound.chains, chains) and torch.equal(bound.step_size, step_size)
    assert (bound._accept_sum, bound._accept_count) == totals
