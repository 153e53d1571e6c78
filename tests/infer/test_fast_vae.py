"""The fast fused VAE objective equals stock Pyro (estimators A and B) on the same draws."""

import copy
import io

import pyro
import pytest
import torch
from torch import nn

from pyro_aevb import evaluate_bound, fit
from pyro_aevb.infer.objectives import (
    ELBO,
    CompiledELBOObjective,
    FastVAE,
    FastVAEObjective,
    PyroELBOObjective,
)
from pyro_aevb.infer.per_datapoint import elbo_per_datapoint
from pyro_aevb.models import VAE, mlp_vae
from pyro_aevb.nn import MLP
from pyro_aevb.poutine import TrainingProgram
from pyro_aevb.train.optim import FusedAdagrad, make_optimizer

D, J = 12, 3

# (rtol, atol) for loss and gradients: float64 to ~1e-12, float32 to rounding.
TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (2e-5, 2e-5)}

LIKELIHOODS = [
    pytest.param(("bernoulli", False), id="bernoulli"),
    pytest.param(("gaussian", False), id="gaussian"),
    pytest.param(("gaussian", True), id="gaussian-sigmoid"),
]


def make_vae(likelihood="bernoulli", sigmoid_mean=False, hidden=(7,), prior=1.0, dtype=None):
    torch.manual_seed(123)
    vae = mlp_vae(
        D,
        J,
        hidden,
        likelihood=likelihood,
        sigmoid_mean=sigmoid_mean,
        weight_prior_std=prior,
        init_std=0.3,
    )
    return vae if dtype is None else vae.to(dtype)


class StockPyro:
    """Stock Pyro's estimator on the VAE's own programs, for any N (the reference)."""

    path = "pyro"

    def __init__(self, vae, estimator="B", num_particles=1):
        self.vae, self.estimator, self.num_particles = vae, estimator, num_particles
        self.params = list(vae.parameters())

    def loss_and_grads(self, x, num_data):
        program = TrainingProgram(self.vae.model, self.vae.guide, num_data=num_data)
        objective = PyroELBOObjective(program, self.estimator, self.num_particles)
        objective.params = self.params
        return objective.loss_and_grads(x)


def bind(module, estimator="B", num_particles=1, fast="auto", num_data=50):
    program = TrainingProgram(module.model, module.guide, num_data=num_data)
    return ELBO(estimator, num_particles).bind(program, fast)


def data(n, dtype=torch.float32, seed=7):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, D, generator=g).to(dtype)


def loss_and_grads(objective, x, num_data, seed):
    torch.manual_seed(seed)
    loss = objective.loss_and_grads(x, num_data)
    return loss.clone(), [p.grad.detach().clone() for p in objective.params]


def assert_same(a, b, dtype, what):
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def check_against_pyro(vae, estimator, num_particles, x, num_data, seed=11):
    dtype = x.dtype
    fast = FastVAE(vae, estimator, num_particles)
    stock = StockPyro(vae, estimator, num_particles)
    loss_s, grads_s = loss_and_grads(stock, x, num_data, seed)
    loss_f, grads_f = loss_and_grads(fast, x, num_data, seed)
    assert loss_f.dtype == dtype and loss_f.dim() == 0 and not loss_f.requires_grad
    assert_same(loss_f, loss_s.to(dtype), dtype, "loss")
    for (name, _), gf, gs in zip(vae.named_parameters(), grads_f, grads_s, strict=True):
        assert_same(gf, gs, dtype, f"grad of {name}")


# ------------------------------------------------------------------ equality with Pyro
@pytest.mark.parametrize("estimator", ["A", "B"])
@pytest.mark.parametrize("num_particles", [1, 3])
@pytest.mark.parametrize("prior", [1.0, None], ids=["prior", "no-prior"])
@pytest.mark.parametrize("hidden", [(7,), (6, 5)], ids=["1-hidden", "2-hidden"])
@pytest.mark.parametrize("lik", LIKELIHOODS)
def test_loss_and_grads_equal_stock_pyro_float64(lik, hidden, prior, num_particles, estimator):
    vae = make_vae(*lik, hidden=hidden, prior=prior, dtype=torch.float64)
    x = data(9, torch.float64)
    check_against_pyro(vae, estimator, num_particles, x, num_data=50)


@pytest.mark.parametrize("estimator", ["A", "B"])
@pytest.mark.parametrize("num_particles", [1, 3])
@pytest.mark.parametrize("lik", LIKELIHOODS)
def test_loss_and_grads_equal_stock_pyro_float32(lik, num_particles, estimator):
    vae = make_vae(*lik, hidden=(6, 5), prior=0.5)
    check_against_pyro(vae, estimator, num_particles, data(9), num_data=1000)


def test_full_batch_and_paper_sized_batch():
    # num_data == M (no scaling), and a 100-row batch of a 784-dim Bernoulli model.
    vae = make_vae(dtype=torch.float64)
    check_against_pyro(vae, "B", 1, data(9, torch.float64), num_data=9)
    torch.manual_seed(0)
    big = mlp_vae(784, 5, 20, init_std=0.05).double()
    x = torch.rand(100, 784, dtype=torch.float64)
    check_against_pyro(big, "A", 1, x, num_data=50000)


def test_draws_match_the_guide():
    """One standard-normal (M, J) block per particle, as Normal.rsample draws it."""
    vae = make_vae(dtype=torch.float64)
    fast = FastVAE(vae, "B", 2)
    x = data(5, torch.float64)
    torch.manual_seed(3)
    fast.loss_and_grads(x, 5)
    plan = fast._plan(5, torch.float64, x.device)
    torch.manual_seed(3)
    expected = torch.stack([torch.randn(5, J, dtype=torch.float64) for _ in range(2)])
    assert torch.equal(plan.eps, expected)
    # ... and the global RNG advanced exactly as much as the guide advances it.
    torch.manual_seed(3)
    fast.loss_and_grads(x, 5)
    after_fast = torch.rand(1)
    torch.manual_seed(3)
    StockPyro(vae, "B", 2).loss_and_grads(x, 5)
    assert torch.equal(after_fast, torch.rand(1))


def test_gradients_are_replaced_not_accumulated():
    vae = make_vae(dtype=torch.float64)
    fast = FastVAE(vae, "A")
    x = data(6, torch.float64)
    l1, g1 = loss_and_grads(fast, x, 20, seed=5)
    l2, g2 = loss_and_grads(fast, x, 20, seed=5)
    assert torch.equal(l1, l2)
    for a, b in zip(g1, g2, strict=True):
        assert torch.equal(a, b)
    # zero_grad(set_to_none=True) between steps is fine too.
    make_optimizer("adagrad", vae.parameters(), 0.1).zero_grad()
    assert all(p.grad is None for p in vae.parameters())
    l3, g3 = loss_and_grads(fast, x, 20, seed=5)
    assert torch.equal(l3, l1) and all(torch.equal(a, b) for a, b in zip(g3, g1, strict=True))


def test_dtype_change_after_construction_and_new_batch_sizes():
    vae = make_vae()
    fast = FastVAE(vae, "B")
    fast.loss_and_grads(data(8), 8)
    vae.double()  # rebinds every parameter's data
    x = data(5, torch.float64)
    torch.manual_seed(1)
    loss_f = fast.loss_and_grads(x, 30)
    torch.manual_seed(1)
    loss_s = StockPyro(vae, "B").loss_and_grads(x, 30)
    assert loss_f.dtype == torch.float64
    torch.testing.assert_close(loss_f, loss_s, rtol=1e-10, atol=1e-10)


def test_input_checks():
    fast = FastVAE(make_vae(), "B")
    with pytest.raises(ValueError, match="dtype"):
        fast.loss_and_grads(data(4, torch.float64), 10)
    with pytest.raises(ValueError, match=r"shape \(batch, \*\(12,\)\)"):
        fast.loss_and_grads(torch.rand(4, D + 1), 10)
    with pytest.raises(ValueError, match="num_data"):
        fast.loss_and_grads(data(4), 3)
    with pytest.raises(TypeError):
        fast.loss_and_grads(data(4).numpy(), 10)
    with pytest.raises(ValueError, match="empty"):
        fast.bound(torch.empty(0, D))


# ------------------------------------------------------------------ per-datapoint bound
@pytest.mark.parametrize("estimator", ["A", "B"])
@pytest.mark.parametrize("num_particles", [1, 3])
@pytest.mark.parametrize("lik", LIKELIHOODS)
def test_bound_equals_elbo_per_datapoint(lik, num_particles, estimator):
    vae = make_vae(*lik, hidden=(6, 5), dtype=torch.float64)
    x = data(7, torch.float64)
    fast = FastVAE(vae, estimator, num_particles)
    torch.manual_seed(4)
    b_fast = fast.bound(x)
    torch.manual_seed(4)
    with torch.no_grad():
        b_ref = elbo_per_datapoint(
            vae.model, vae.guide, x, estimator=estimator, num_particles=num_particles
        )
    assert b_fast.shape == (7,) and not b_fast.requires_grad
    torch.testing.assert_close(b_fast, b_ref, rtol=1e-10, atol=1e-10)


def test_evaluate_bound_batches_equal_one_pass():
    vae = make_vae(dtype=torch.float64)
    x = data(23, torch.float64)
    # Same draws: batched fast path == batched stock path == manual batches.
    torch.manual_seed(9)
    fast = evaluate_bound(vae, x, batch_size=5, estimator="A", num_particles=2)
    torch.manual_seed(9)
    stock = evaluate_bound(vae, x, batch_size=5, estimator="A", num_particles=2, fast="off")
    torch.manual_seed(9)
    obj = FastVAE(vae, "A", 2)
    manual = torch.cat([obj.bound(xb) for xb in x.split(5)])
    assert fast.shape == (23,)
    torch.testing.assert_close(fast, stock, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast, manual, rtol=0, atol=0)
    # With (numerically) deterministic draws, batching cannot matter: several batches
    # equal one pass over all rows.
    with torch.no_grad():
        vae.encoder.out.bias[J:] = -60.0  # sigma = exp(-30)
    one = evaluate_bound(vae, x, batch_size=1000)
    several = evaluate_bound(vae, x, batch_size=4)
    torch.testing.assert_close(several, one, rtol=1e-9, atol=1e-9)


def test_evaluate_bound_validates_and_converts_once():
    vae = make_vae()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate_bound(vae, data(6) + 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        evaluate_bound(vae, torch.full((3, D), float("nan")))
    # float64 data on a float32 model is converted, not rejected.
    assert evaluate_bound(vae, data(6, torch.float64), batch_size=4).dtype == torch.float32


# ------------------------------------------------------------------ support and fallback
class OwnModel(VAE):
    def model(self, x=None, num_data=None, batch_size=None):
        return super().model(x, num_data, batch_size)


def own_model():
    torch.manual_seed(123)
    return OwnModel(MLP(D, 7, 2 * J), MLP(J, 7, D), "bernoulli", J, (D,))


class NotAVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(D, 1)

    def model(self, x, num_data=None):
        pass

    def guide(self, x, num_data=None):
        pass


def frozen():
    vae = make_vae()
    vae.decoder.out.bias.requires_grad_(False)
    return vae


def relu_encoder():
    vae = make_vae()
    vae.encoder = MLP(D, 7, 2 * J, activation="relu")
    return vae


def extra_parameter():
    vae = make_vae()
    vae.temperature = nn.Parameter(torch.ones(()))
    return vae


def mixed_dtypes():
    vae = make_vae()
    vae.decoder.double()
    return vae


@pytest.mark.parametrize(
    "build, match",
    [
        (own_model, "overrides VAE.model"),
        (NotAVAE, "not a pyro_aevb.models.VAE"),
        (frozen, "frozen"),
        (relu_encoder, "activation is 'relu'"),
        (extra_parameter, "outside its encoder and decoder"),
        (mixed_dtypes, "float32 or all float64"),
        (lambda: make_vae().half(), "float32 or all float64"),
    ],
)
def test_unsupported_models_fall_back_visibly(build, match):
    module = build()
    reason = FastVAE.unsupported_reason(module, "B", 1)
    assert reason is not None and match in reason
    # not the fused path: the compiled path (any model/guide pair), which says why
    objective = bind(module, "B", fast="auto")
    assert isinstance(objective, CompiledELBOObjective) and objective.path == "compiled"
    assert match in objective.path_reason or "not a pyro_aevb VAE" in objective.path_reason
    assert isinstance(bind(module, "B", fast="off"), PyroELBOObjective)
    with pytest.raises(ValueError, match="does not support"):
        FastVAE(module, "B")


def test_supported_models_take_the_fast_path():
    assert FastVAE.unsupported_reason(make_vae(), "A", 4) is None
    objective = bind(make_vae("gaussian", True, hidden=(4, 4, 4)), "A", 2)
    assert isinstance(objective, FastVAEObjective) and objective.path == "fast"
    assert "paper's VAE" in objective.path_reason
    assert isinstance(bind(make_vae(), "B", fast="off"), PyroELBOObjective)
    assert FastVAE.unsupported_reason(make_vae(), "C", 1) is not None
    # a plate renamed, or other programs than the VAE's own, take stock Pyro
    vae = make_vae()
    program = TrainingProgram(vae.model, vae.guide, num_data=10, plate_name="batch")
    assert "plate_name" in FastVAEObjective.unsupported_reason(program)
    program = TrainingProgram(lambda x: vae.model(x), vae.guide, num_data=10)
    assert FastVAEObjective.unsupported_reason(program) is not None


def test_fallback_evaluate_bound_for_unsupported_model():
    vae = own_model()
    x = data(10)
    torch.manual_seed(2)
    got = evaluate_bound(vae, x, batch_size=4)
    torch.manual_seed(2)
    with torch.no_grad():
        want = torch.cat([elbo_per_datapoint(vae.model, vae.guide, xb) for xb in x.split(4)])
    torch.testing.assert_close(got, want)
    assert vae.validate is True  # restored after the unvalidated batches
    with pytest.raises(ValueError, match="fast='on'"):
        evaluate_bound(vae, x, fast="on")


# ------------------------------------------------------------------ training runs
def train(vae, fast, steps, x, num_data, batch, estimator="B"):
    objective = FastVAE(vae, estimator) if fast else StockPyro(vae, estimator)
    optimizer = make_optimizer("adagrad", vae.parameters(), lr=0.05)
    order = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, num_data, (batch,), generator=order)
        losses.append(objective.loss_and_grads(x[idx], num_data).item())
        optimizer.step()
    return torch.tensor(losses, dtype=torch.float64), [p.detach().clone() for p in vae.parameters()]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_training_run_has_the_same_learning_curve(dtype):
    x = data(64, dtype)
    vae_f = make_vae(hidden=(8,), dtype=dtype)
    vae_s = copy.deepcopy(vae_f)
    steps = 200 if dtype == torch.float32 else 100
    losses_f, params_f = train(vae_f, True, steps, x, 64, 16)
    losses_s, params_s = train(vae_s, False, steps, x, 64, 16)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(losses_f, losses_s, rtol=tol, atol=tol)
    assert losses_f[-20:].mean() < losses_f[:20].mean()  # it learns
    for a, b in zip(params_f, params_s, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ------------------------------------------------------------------ optimizer
def test_make_optimizer_is_fused_adagrad_equal_to_torch_adagrad():
    torch.manual_seed(0)
    pa = [torch.randn(20, 10, requires_grad=True), torch.randn(10, requires_grad=True)]
    pb = [p.detach().clone().requires_grad_() for p in pa]
    oa = torch.optim.Adagrad(pa, lr=0.1)
    ob = make_optimizer("adagrad", pb, lr=0.1)
    assert isinstance(ob, FusedAdagrad) and isinstance(ob, torch.optim.Adagrad)
    for _ in range(30):
        grads = [torch.randn_like(p) for p in pa]
        for p, q, g in zip(pa, pb, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    for p, q in zip(pa, pb, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
    assert float(ob.state[pb[0]]["step"]) == float(oa.state[pa[0]]["step"]) == 30.0

    # The state_dict is the standard one: it round-trips through torch.save/weights_only
    # and loads into plain torch.optim.Adagrad and back.
    buf = io.BytesIO()
    torch.save(ob.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    plain = torch.optim.Adagrad([p.detach().clone().requires_grad_() for p in pb], lr=0.1)
    plain.load_state_dict(state)
    pc = [p.detach().clone().requires_grad_() for p in pb]
    oc = make_optimizer("adagrad", pc, lr=0.1)
    oc.load_state_dict(plain.state_dict())
    for _ in range(3):
        grads = [torch.randn_like(p) for p in pb]
        for p, q, g in zip(pb, pc, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        ob.step()
        oc.step()
    for p, q in zip(pb, pc, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert float(oc.state[pc[1]]["step"]) == 33.0


def test_fused_adagrad_generic_cases():
    p = torch.zeros(3, requires_grad=True)
    q = torch.zeros(2, requires_grad=True)
    opt = make_optimizer("adagrad", [p, q], lr=1.0)
    calls = []
    opt.register_step_post_hook(lambda *a: calls.append(1))
    p.grad = torch.ones(3)  # q has no gradient: generic path
    opt.step()
    assert calls == [1] and torch.all(p < 0) and torch.all(q == 0)
    q.grad = torch.ones(2)
    assert opt.step(lambda: 1.5) == 1.5  # closure: generic path
    assert float(opt.state[q]["step"]) == 1.0 and float(opt.state[p]["step"]) == 2.0
    explicit = make_optimizer("adagrad", [p], lr=1.0, foreach=True)
    assert type(explicit) is torch.optim.Adagrad
    adam = make_optimizer("adam", [p], lr=1.0)
    assert adam.param_groups[0]["fused"]


@pytest.mark.parametrize("optimizer", ["adagrad", "adam"])
def test_a_decoder_frozen_mid_run_stays_frozen_on_the_fused_path_as_on_stock_pyro(optimizer):
    """Fine-tuning the encoder only: a callback freezes the decoder after the first
    evaluation; the fused path gives it no gradient from then on (it kept training it), and
    the run equals stock Pyro's."""
    x = (torch.rand(200, 12, generator=torch.Generator().manual_seed(0)) < 0.4).double()
    states = {}
    for fast in ("auto", "off"):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = mlp_vae(12, 3, hidden_dims=8).double()
        frozen = {}

        def freeze(trainer, record, vae=vae, frozen=frozen):
            if not frozen:
                vae.decoder.requires_grad_(False)
                frozen.update({k: v.clone() for k, v in vae.decoder.state_dict().items()})

        res = fit(
            vae,
            x,
            batch_size=20,
            num_samples=600,
            eval_every=200,
            fast=fast,
            optimizer=optimizer,
            lr=0.01,
            progress=False,
            callback=freeze,
            seed=0,
        )
        assert res.path == ("fast" if fast == "auto" else "pyro")
        for k, v in vae.decoder.state_dict().items():
            assert torch.equal(v, frozen[k]), k
        states[fast] = vae.state_dict()
    for k, v in states["auto"].items():
        torch.testing.assert_close(v, states["off"][k], rtol=1e-9, atol=1e-12)
