"""The cheaper Bernoulli(probs) log-density equals torch's, value and gradient, everywhere."""

import shutil

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_aevb.poutine.log_prob_rewrites import bernoulli_probs_log_prob, cheaper_log_probs


def _probs(dtype):
    """Probabilities across (0, 1), at and beyond the clamp bounds eps and 1 - eps."""
    eps = torch.finfo(dtype).eps
    edges = torch.tensor([0.0, eps / 4, eps, 2 * eps, 1 - 2 * eps, 1 - eps, 1.0], dtype=dtype)
    logits = torch.linspace(-25, 25, 101, dtype=dtype)
    return torch.cat([edges, torch.sigmoid(logits)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_and_gradient_equal_torch_formula(dtype):
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}
    p = _probs(dtype)
    for x in (torch.zeros_like(p), torch.ones_like(p), torch.full_like(p, 0.3)):
        a = p.clone().requires_grad_()
        b = p.clone().requires_grad_()
        stock = torch.distributions.Bernoulli(probs=a, validate_args=False).log_prob(x)
        cheap = bernoulli_probs_log_prob(
            torch.distributions.Bernoulli(probs=b, validate_args=False), x
        )
        torch.testing.assert_close(cheap, stock, **tol)
        (ga,) = torch.autograd.grad(stock.sum(), a)
        (gb,) = torch.autograd.grad(cheap.sum(), b)
        # zero outside the clamp, the same chain rule inside it
        torch.testing.assert_close(gb, ga, **tol)
        assert torch.equal(gb == 0, ga == 0)


def test_broadcasting_validation_and_pyro_wrappers():
    p = torch.rand(4, 1, 3) * 0.9 + 0.05
    x = (torch.rand(2, 3) < 0.5).float()
    d = dist.Bernoulli(probs=p).to_event(1)
    stock = d.log_prob(x)
    with cheaper_log_probs():
        cheap = d.log_prob(x)
        assert cheap.shape == stock.shape == (4, 2)
        with pytest.raises(ValueError, match="Expected value argument"):
            dist.Bernoulli(probs=p, validate_args=True).log_prob(torch.full((2, 3), 0.5))
    torch.testing.assert_close(cheap, stock)


def test_logits_keep_torch_formula_and_the_method_is_restored():
    logits = torch.randn(5)
    x = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    stock_method = torch.distributions.Bernoulli.log_prob
    expected = dist.Bernoulli(logits=logits).log_prob(x)
    with pytest.raises(RuntimeError, match="inside"):
        with cheaper_log_probs():
            assert torch.distributions.Bernoulli.log_prob is bernoulli_probs_log_prob
            # built from logits (or holding them): torch's own formula, bitwise
            assert torch.equal(dist.Bernoulli(logits=logits).log_prob(x), expected)
            held = dist.Bernoulli(probs=torch.sigmoid(logits))
            _ = held.logits
            assert torch.equal(
                held.log_prob(x), stock_method(dist.Bernoulli(probs=torch.sigmoid(logits)), x)
            )
            raise RuntimeError("inside")
    assert torch.distributions.Bernoulli.log_prob is stock_method


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cc") is None,
                    reason="inductor needs a C++ compiler")  # fmt: skip
def test_inductor_potential_of_a_bernoulli_probs_model_equals_the_traced_one():
    from pyro_aevb.mcmc.compiled_potential import CompiledPotential
    from pyro_aevb.mcmc.potential import PerDatapointPotential
    from pyro_aevb.models import PyroExampleVAE

    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = PyroExampleVAE(z_dim=2, hidden_dim=8)
    x = (torch.rand(5, 784) < 0.3).float()
    u = torch.randn(5, 2)
    traced = PerDatapointPotential(vae.model, x)
    fused = CompiledPotential(vae.model, x, engine="inductor")
    value, grad = fused.potential_and_grad(u)
    u_t = u.clone().requires_grad_()
    expected = traced(u_t)
    (expected_grad,) = torch.autograd.grad(expected.sum(), u_t)
    torch.testing.assert_close(value, expected.detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-4)


def _ops(recorded) -> set:
    return {str(n.target) for n in recorded.graph_module.graph.nodes if n.op == "call_function"}


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cc") is None,
                    reason="inductor needs a C++ compiler")  # fmt: skip
def test_the_inductor_training_recording_uses_the_cheaper_formula_and_replay_does_not():
    from pyro_aevb.infer import ELBO
    from pyro_aevb.models import PyroExampleVAE
    from pyro_aevb.poutine import TrainingProgram

    recordings = {}
    for engine in ("replay", "inductor"):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = PyroExampleVAE(z_dim=2, hidden_dim=8)
        x = (torch.rand(6, 784) < 0.3).float()
        objective = ELBO("B", engine=engine).bind(
            TrainingProgram(vae.model, vae.guide, num_data=60)
        )
        objective.setup(x)
        objective.loss_and_grads(x)
        (rec,) = objective._recordings.values()
        assert rec.fn.engine == engine
        recordings[engine] = _ops(rec.fn)
    bce = "aten.binary_cross_entropy_with_logits.default"
    assert bce in recordings["replay"] and bce not in recordings["inductor"]
