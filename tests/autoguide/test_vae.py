"""Autoguides on the paper's VAE and with stock Pyro: the same bound, loss and gradients as the
hand-written encoder with copied weights; stock SVI (with ``num_data``) and Predictive; runs
that are saved, rebuilt from their config and resumed exactly; other trunks."""

import warnings

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from torch import nn
from user_models import TinyConvVAE

from pyro_aevb import (
    AnalyticKL_ELBO,
    elbo_per_datapoint,
    evaluate_bound,
    fit,
    load_run,
    log_marginal,
    mlp_vae,
)
from pyro_aevb.autoguide import (
    AmortizedIAF,
    AmortizedMultivariateNormal,
    AmortizedNormal,
    build_guide,
)
from pyro_aevb.train.checkpoint import load_checkpoint, save_checkpoint
from pyro_aevb.train.payload import MalformedCheckpointError


def _copied(vae, x):
    """An AmortizedNormal with the VAE's encoder weights, layer for layer."""
    guide = AmortizedNormal(vae.model, hidden_dims=vae.encoder.hidden_dims, activation="tanh")
    guide(x)
    with torch.no_grad():
        for mine, theirs in zip(guide.nets["trunk"].hidden, vae.encoder.hidden):
            mine.load_state_dict(theirs.state_dict())
        guide.nets["heads"][0].load_state_dict(vae.encoder.out.state_dict())
    return guide


@pytest.mark.parametrize("estimator", ["A", "B"])
def test_amortized_normal_on_the_paper_vae_is_the_hand_written_encoder(estimator):
    torch.manual_seed(0)
    # without the MAP weight prior, which pulls on the VAE's own encoder (not on a guide's)
    vae = mlp_vae(30, 3, hidden_dims=(12, 7), weight_prior_std=None)
    x = torch.rand(25, 30)
    guide = _copied(vae, x)
    torch.manual_seed(5)
    theirs = elbo_per_datapoint(vae.model, vae.guide, x, estimator=estimator, num_particles=3)
    torch.manual_seed(5)
    mine = elbo_per_datapoint(vae.model, guide, x, estimator=estimator, num_particles=3)
    assert torch.allclose(mine, theirs, atol=1e-6, rtol=0)
    # the fused fast path of the VAE's own guide gives the same numbers too
    torch.manual_seed(7)
    fast = evaluate_bound(vae, x, estimator=estimator)
    torch.manual_seed(7)
    traced = evaluate_bound(vae, x, estimator=estimator, guide=guide)
    assert torch.allclose(fast, traced, atol=1e-4, rtol=0)
    # the training loss and every encoder gradient, on the same draws
    elbo = AnalyticKL_ELBO() if estimator == "B" else Trace_ELBO()
    grads = []
    for g, params in ((vae.guide, vae.encoder.parameters()), (guide, guide.nets.parameters())):
        vae.zero_grad()
        guide.zero_grad()
        torch.manual_seed(9)
        loss = elbo.differentiable_loss(vae.model, g, x, num_data=1000)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in params]))
    (loss_a, grad_a), (loss_b, grad_b) = grads
    assert loss_b == pytest.approx(loss_a, rel=1e-6)
    for a, b in zip(grad_a, grad_b, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_stock_svi_with_num_data_and_predictive():
    torch.manual_seed(0)
    vae = mlp_vae(20, 2, hidden_dims=8, name="svi_vae")
    x = (torch.rand(200, 20) < 0.3).float()
    guide = AmortizedNormal(vae.model, hidden_dims=8)
    # the guide's data plate stands for N like the model's, so both are scaled by N / M
    trace = poutine.trace(guide).get_trace(x[:50], num_data=200)
    frame = trace.nodes["z"]["cond_indep_stack"][0]
    assert (frame.name, frame.size, frame.full_size) == ("data", 50, 200)
    assert trace.nodes["z"]["scale"] == 4.0
    positional = poutine.trace(guide).get_trace(x[:50], 200)  # VAE.model(x, num_data)
    assert positional.nodes["z"]["scale"] == 4.0
    before = [p.detach().clone() for p in guide.nets.parameters()]
    svi = SVI(vae.model, guide, pyro.optim.Adam({"lr": 0.01}), AnalyticKL_ELBO())
    losses = [svi.step(x[(k % 4) * 50 : (k % 4 + 1) * 50], num_data=200) for k in range(40)]
    assert sum(losses[-10:]) < sum(losses[:10])
    assert all(not torch.equal(a, b) for a, b in zip(before, guide.nets.parameters()))
    draws = Predictive(vae.model, guide=guide, num_samples=3, return_sites=["z"])(x[:5])
    assert draws["z"].shape == (3, 5, 2)


def test_a_run_with_an_autoguide_is_rebuilt_from_its_config_and_resumes_exactly(tmp_path):
    x = (torch.rand(300, 20) < 0.3).float()
    kw = dict(batch_size=50, optimizer="adam", lr=0.01, eval_every=300, progress=False, seed=2)

    def run(num_samples, out, resume=False):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = mlp_vae(20, 2, hidden_dims=8)
        guide = AmortizedMultivariateNormal(vae.model, hidden_dims=8)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # no fast-path warning: own choice
            fit(vae, x, guide=guide, num_samples=num_samples, out_dir=out, resume=resume, **kw)
        return vae, guide

    vae, guide = run(600, tmp_path / "straight")
    run(300, tmp_path / "resumed")
    vae_r, guide_r = run(600, tmp_path / "resumed", resume=True)
    for a, b in zip(guide.state_dict().values(), guide_r.state_dict().values(), strict=True):
        assert a == b if isinstance(a, dict) else torch.equal(a, b)
    pyro.clear_param_store()
    loaded = load_run(tmp_path / "straight")  # nothing passed: both rebuilt from the config
    assert isinstance(loaded.guide, AmortizedMultivariateNormal)
    assert loaded.config["guide"] == guide.config and loaded.guide.config == guide.config
    for a, b in zip(guide.nets.parameters(), loaded.guide.nets.parameters(), strict=True):
        assert torch.equal(a, b)
    torch.manual_seed(1)
    before = evaluate_bound(vae, x[:40], guide=guide)
    torch.manual_seed(1)
    after = evaluate_bound(loaded.module, x[:40], guide=loaded.guide)
    assert torch.equal(before, after)
    # a fresh guide of the same config loads the checkpoint's state before seeing data
    fresh = build_guide(guide.config, loaded.module.model)
    fresh.load_state_dict(guide.state_dict())
    assert fresh.built and torch.equal(fresh.encode(x[:3])[1], guide.encode(x[:3])[1])
    # a (sealed) checkpoint whose guide records no usable row shape is refused by name
    path = tmp_path / "straight" / "checkpoint.pt"
    payload = load_checkpoint(path)
    payload["program_state"]["modules"][1]["_extra_state"]["row_shape"] = ["20"]
    save_checkpoint(path, payload)
    with pytest.raises(MalformedCheckpointError, match="row shape"):
        load_run(tmp_path / "straight")


def test_a_convolutional_trunk_and_a_user_trunk():
    torch.manual_seed(0)
    model = TinyConvVAE()
    x = (torch.rand(12, 1, 28, 28) < 0.3).float()
    conv = AmortizedNormal(model.model, encoder="conv")
    bound = elbo_per_datapoint(model.model, conv, x)
    assert bound.shape == (12,) and conv.nets["trunk"].out_dim == 2048
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # IWAE on stacked rows, no fallback
        assert log_marginal(model.model, conv, x, "iwae", num_particles=4).estimate.shape == (12,)
    trunk = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU())
    mine = AmortizedIAF(model.model, encoder=trunk, num_flows=1)
    assert mine.config is None  # a module of the user's: pass the guide to load_run
    result = fit(model.model, x, guide=mine, estimator="A", num_samples=24, batch_size=12,
                 optimizer="adam", lr=1e-3, progress=False)  # fmt: skip
    assert result.history[-1]["train_bound"] < 0
    assert mine.nets["trunk"] is trunk and trunk[1].weight.grad is not None
