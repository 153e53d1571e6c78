"""Wake-sleep: both implementations agree; the sleep phase finds the exact posterior of a
linear-Gaussian model; the wake phase increases log p(x, z) for fixed samples."""

import pyro.poutine as poutine
import pytest
import torch
from marginal_helpers import bound_objective

from pyro_aevb import WakeSleep, fit, mlp_vae
from pyro_aevb.models import LinearGaussian


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_direct_vae_phases_equal_the_generic_pyro_phases(likelihood):
    torch.manual_seed(0)
    vae = mlp_vae(12, 3, 10, likelihood=likelihood, init_std=0.3).double()
    x = torch.rand(6, 12, dtype=torch.float64)
    grads = {}
    for fast in ("auto", "off"):
        ws = bound_objective(WakeSleep(), vae, 60, x, fast=fast)
        assert ws.direct == (fast == "auto")
        torch.manual_seed(1)
        loss = ws.loss_and_grads(x)
        grads[fast] = (loss, [p.grad.clone() for p in ws.params])
    torch.testing.assert_close(grads["auto"][0], grads["off"][0])
    for a, b in zip(grads["auto"][1], grads["off"][1]):
        torch.testing.assert_close(a, b)


def test_sleep_phase_drives_q_to_the_exact_posterior():
    torch.manual_seed(0)
    m = LinearGaussian(5, 2, sigma=0.5).double()
    m.W.requires_grad_(False)
    m.b.requires_grad_(False)
    m.log_sigma.requires_grad_(False)
    x = m.marginal().sample((1000,))
    ws = bound_objective(WakeSleep(estimator="A"), m, 1000, x, fast="off")
    opt = torch.optim.Adam(ws.params, lr=0.05)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[120, 170], gamma=0.1)
    for _ in range(200):  # 1000 fantasies per step: little gradient noise
        ws.train_step(x, None, opt)
        sched.step()
    x = x[:50]
    mean, cov = m.posterior(x)
    q_mean = (x - m.enc_c) @ m.enc_A.T
    # The optimal diagonal q under the sleep objective E_p(x) KL(p(z|x) || q(z|x)) matches the
    # posterior mean and the posterior's marginal variances.
    torch.testing.assert_close(q_mean, mean, atol=0.03, rtol=0)
    torch.testing.assert_close(m.enc_log_var.exp(), torch.diagonal(cov), atol=0.01, rtol=0.05)


def test_wake_phase_increases_log_joint_for_fixed_samples():
    torch.manual_seed(0)
    vae = mlp_vae(20, 2, 16, init_std=0.1, weight_prior_std=None).double()
    x = (torch.rand(50, 20, dtype=torch.float64) < 0.3).double()
    z = torch.randn(50, 2, dtype=torch.float64)

    def log_joint():
        tr = poutine.trace(poutine.condition(vae.model, data={"z": z})).get_trace(x)
        return float(tr.log_prob_sum())

    ws = bound_objective(WakeSleep(), vae, 50, x)
    opt = torch.optim.Adagrad(list(vae.decoder.parameters()), lr=0.05)  # theta only
    before = log_joint()
    for _ in range(30):
        vae.zero_grad()
        ws.vae_wake_loss(x, z, num_data=50).backward()  # the wake phase at fixed samples
        opt.step()
    assert log_joint() > before + 10
    # And the objective's own wake loss decreases in theta when trained through fit.
    result = fit(vae, x, algorithm="wake-sleep", num_samples=5000, batch_size=50, progress=False)
    assert result.path == "wake-sleep"
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_wake_sleep_training_uses_the_trainer_history_and_checkpoints(tmp_path):
    x = (torch.rand(300, 20) < 0.3).float()
    vae = mlp_vae(20, 2, 16, init_std=0.1)
    result = fit(
        vae,
        x[:200],
        x[200:],
        algorithm="wake-sleep",
        num_samples=2000,
        out_dir=tmp_path,
        progress=False,
    )
    assert {"train_bound", "test_bound", "loss"} <= set(result.history[-1])
    resumed = fit(
        mlp_vae(20, 2, 16),
        x[:200],
        x[200:],
        algorithm="wake-sleep",
        num_samples=3000,
        out_dir=tmp_path,
        resume=True,
        progress=False,
    )
    assert resumed.samples == 3000


@pytest.mark.parametrize(
    "num_particles, error", [(0, ValueError), (-2, ValueError), ("x", TypeError), (1.5, TypeError)]
)
def test_bad_num_particles_is_refused_when_built(num_particles, error):
    with pytest.raises(error, match="num_particles must be an int >= 1"):
        WakeSleep(num_particles=num_particles)
    assert WakeSleep(num_particles=3).settings() == {"estimator": "B", "num_particles": 3}


def test_fast_on_refuses_a_pair_the_direct_path_cannot_run_and_auto_runs_it_traced():
    torch.manual_seed(0)
    m = LinearGaussian(5, 2).double()
    x = m.marginal().sample((8,))
    with pytest.raises(ValueError, match="fast='on' but the direct wake-sleep path.*not a pyro"):
        bound_objective(WakeSleep(), m, 8, x, fast="on")
    auto = bound_objective(WakeSleep(), m, 8, x, fast="auto")
    assert not auto.direct and auto.path_reason.startswith("Pyro traces")

    vae = mlp_vae(12, 3, 8).double()
    xv = torch.rand(6, 12, dtype=torch.float64)
    with pytest.raises(ValueError, match="fast='on'.*plate_name is 'rows'"):
        bound_objective(WakeSleep(), vae, 60, xv, fast="on", plate="rows")

    class Subclass(type(vae)):
        pass

    sub = Subclass(vae.encoder, vae.decoder, "bernoulli", 3, 12)
    with pytest.raises(ValueError, match="fast='on'.*Subclass is a subclass of VAE"):
        bound_objective(WakeSleep(), sub, 60, xv, fast="on")
    # where it can run, "on" takes the direct path
    assert bound_objective(WakeSleep(), vae, 60, xv, fast="on").direct


def test_fit_with_fast_on_refuses_a_user_model_before_training():
    torch.manual_seed(0)
    m = LinearGaussian(5, 2)
    x = m.marginal().sample((20,))
    before = [p.detach().clone() for p in m.parameters()]
    with pytest.raises(ValueError, match="fast='on' but the direct wake-sleep path"):
        fit(m, x, algorithm="wake-sleep", fast="on", num_samples=40, progress=False)
    assert all(torch.equal(a, p) for a, p in zip(before, m.parameters()))


def test_global_latents_are_refused_by_name():
    """Wake-sleep learns a recognition model of local latents: a global's guide would never
    be trained (wake) and would be scored at a prior draw (sleep), -inf for AutoDelta."""
    import pyro
    from user_models import GlobalNoiseModel

    from pyro_aevb import AmortizedNormal

    m = GlobalNoiseModel()
    pyro.clear_param_store()
    guide = AmortizedNormal(m.model, hidden_dims=(4,), global_guide="delta")
    with pytest.raises(ValueError, match=r"global latent site\(s\) \['sigma'\] outside the data"):
        fit(
            m.model,
            torch.randn(20, 6),
            guide=guide,
            objective=WakeSleep(),
            num_samples=20,
            progress=False,
        )


def test_a_model_that_observes_a_transform_of_x_is_refused():
    """The sleep phase feeds the guide the fantasy of the observed site as if it were x: a
    model observing (x - mu) / sd (or a part of x, a covariate split off) would teach the
    guide on inputs it never sees. Refused, naming the site."""
    import pyro
    import pyro.distributions as dist

    from pyro_aevb import AmortizedNormal

    x = torch.randn(40, 4) * 3 + 5

    def standardising(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            loc = torch.cat([z, z], -1)
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=(x - 5) / 3)

    pyro.clear_param_store()
    with pytest.raises(ValueError, match="observed site 'x' in place of x, but that site") as e:
        fit(standardising, x, guide=AmortizedNormal(standardising), objective=WakeSleep(),
            num_samples=40, batch_size=20, progress=False)  # fmt: skip
    assert "values that differ from x's" in str(e.value)

    def first_half(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x[:, :2])

    pyro.clear_param_store()
    with pytest.raises(ValueError, match=r"holds shape \(20, 2\) where x has shape \(20, 4\)"):
        fit(first_half, x, guide=AmortizedNormal(first_half), objective=WakeSleep(),
            num_samples=40, batch_size=20, progress=False)  # fmt: skip


def test_a_model_that_observes_x_flattened_trains_with_fantasies_in_xs_shape():
    import pyro
    import pyro.distributions as dist
    from torch import nn

    class Flattening(nn.Module):
        def __init__(self):
            super().__init__()
            self.dec, self.enc = nn.Linear(2, 6), nn.Linear(6, 4)

        def model(self, x):
            pyro.module("flat", self)
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
                flat = x.reshape(x.shape[0], -1)
                pyro.sample("x", dist.Normal(self.dec(z), 1.0).to_event(1), obs=flat)

        def guide(self, x):
            assert x.shape[1:] == (1, 2, 3)  # the fantasies come in x's own shape
            loc, log_scale = self.enc(x.reshape(x.shape[0], -1)).chunk(2, -1)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    pyro.clear_param_store()
    m = Flattening()
    res = fit(m.model, torch.randn(40, 1, 2, 3), guide=m.guide, objective=WakeSleep(),
              num_samples=80, batch_size=20, eval_size=10, progress=False)  # fmt: skip
    assert res.history[-1]["samples"] == 80
