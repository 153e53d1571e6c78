"""Compiled and hand-derived per-datapoint potentials equal the traced one (values and
gradients), the HMC kernel integrates them as Pyro's integrator does, and AIS and the
Appendix-D estimator give the same estimates for a fixed seed."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from marginal_helpers import requires_data
from torch import nn
from user_models import (
    GlobalNoiseModel,
    PyroExampleVAE,
    TinyConvVAE,
    TwoLatentModel,
    counting,
)

from pyro_aevb import AmortizedNormal, log_marginal
from pyro_aevb.mcmc import PerDatapointPotential, hmc
from pyro_aevb.mcmc.compiled_potential import CompiledPotential
from pyro_aevb.mcmc.potentials import make_potential
from pyro_aevb.mcmc.vae_potential import VAEPotential, vae_potential_unsupported_reason
from pyro_aevb.models import VAE, mlp_vae
from pyro_aevb.poutine import as_program

F64 = dict(rtol=1e-12, atol=1e-12)


def _assert_parts_equal(ref, pot, u, **tol):
    for a, b, what in zip(
        ref.parts_and_grads(u),
        pot.parts_and_grads(u),
        ("log p(u)", "log p(x|z)", "grad log p(u)", "grad log p(x|z)"),
        strict=True,
    ):
        torch.testing.assert_close(b, a, **tol, msg=lambda m, w=what: f"{w}: {m}")
    v_ref, g_ref = ref.potential_and_grad(u)
    v, g = pot.potential_and_grad(u)
    torch.testing.assert_close(v, v_ref, **tol)
    torch.testing.assert_close(g, g_ref, **tol)
    torch.testing.assert_close(pot.log_joint(u), ref.log_joint(u).detach(), **tol)


# ------------------------------------------------------------------ the paper's VAE
def _vae(lik="bernoulli", sigmoid_mean=False, hidden=(7,), dtype=torch.float64):
    torch.manual_seed(0)
    vae = mlp_vae(12, 3, hidden, likelihood=lik, sigmoid_mean=sigmoid_mean, init_std=0.3)
    return vae.to(dtype)


@pytest.mark.parametrize("chunk_rows", [4096, 12, 5], ids=["one-chunk", "whole-chains", "split"])
@pytest.mark.parametrize("hidden", [(7,), (6, 5)], ids=["1-hidden", "2-hidden"])
@pytest.mark.parametrize(
    "lik", [("bernoulli", False), ("gaussian", False), ("gaussian", True)], ids=str
)
def test_vae_potential_equals_the_traced_potential(lik, hidden, chunk_rows):
    vae = _vae(*lik, hidden=hidden)
    x = torch.rand(6, 12, dtype=torch.float64)
    ref = PerDatapointPotential(vae.model, x, num_chains=4, guide=vae.guide)
    pot = make_potential(vae.model, x, num_chains=4, guide=vae.guide)
    assert isinstance(pot, VAEPotential) and pot.path == "vae" and pot.provides_grad
    pot.chunk_rows = chunk_rows
    u = torch.randn(24, 3, dtype=torch.float64)
    _assert_parts_equal(ref, pot, u, rtol=1e-12, atol=1e-12)
    for a, b in zip(ref.log_guide_and_grad(u), pot.log_guide_and_grad(u), strict=True):
        torch.testing.assert_close(b, a, **F64)
    # inside a trajectory the value is skipped, the gradient is the same
    value, grad = pot.potential_and_grad(u, need_value=False)
    assert value is None
    torch.testing.assert_close(grad, ref.potential_and_grad(u)[1], **F64)


def test_vae_potential_draws_what_the_traced_guide_and_prior_draw():
    vae = _vae()
    x = torch.rand(5, 12, dtype=torch.float64)
    ref = PerDatapointPotential(vae.model, x, num_chains=3, guide=vae.guide)
    pot = make_potential(vae.model, x, num_chains=3, guide=vae.guide)
    for draw in ("sample_guide", "sample_prior"):
        torch.manual_seed(4)
        want = getattr(ref, draw)()
        after_ref = torch.rand(1)
        torch.manual_seed(4)
        got = getattr(pot, draw)()
        assert torch.equal(torch.rand(1), after_ref)  # the same use of the global RNG
        for a, b in zip(got if isinstance(got, tuple) else (got,),
                        want if isinstance(want, tuple) else (want,), strict=True):  # fmt: skip
            torch.testing.assert_close(a, b, **F64)


def test_vae_potential_float32_and_parameter_updates():
    vae = _vae(dtype=torch.float32)
    x = torch.rand(6, 12)
    ref = PerDatapointPotential(vae.model, x, num_chains=2, guide=vae.guide)
    pot = make_potential(vae.model, x, num_chains=2, guide=vae.guide)
    u = torch.randn(12, 3)
    _assert_parts_equal(ref, pot, u, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # in place, as an optimizer: the cached x W_o and encoder follow
        for p in vae.parameters():
            p.mul_(1.5)
    _assert_parts_equal(ref, pot, u, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pot.log_guide(u), ref.log_guide(u).detach(), rtol=1e-5, atol=1e-5)


class _Binarized(VAE):
    """Preprocesses the data in the hook every program passes ``x`` through."""

    def _check_x(self, x):
        return (super()._check_x(x) > 0.5).to(x.dtype)


def test_models_other_than_the_plain_vae_are_not_hand_derived():
    class Mine(type(_vae())):
        def likelihood_dist(self, z):
            return super().likelihood_dist(z)

    torch.manual_seed(0)
    vae = _vae()
    mine = Mine(vae.encoder, vae.decoder, vae.likelihood, 3, 12)
    x = torch.rand(4, 12, dtype=torch.float64)
    pot = make_potential(mine.model, x)
    assert isinstance(pot, CompiledPotential) and pot.path == "compiled"
    # a subclass that changes x on its way into the programs: the recorded path sees it
    binarized = _Binarized(vae.encoder, vae.decoder, vae.likelihood, 3, 12)
    pot = make_potential(binarized.model, x, guide=binarized.guide, num_chains=2)
    assert pot.path == "compiled" and "overrides VAE._check_x" in (
        vae_potential_unsupported_reason(pot.program) or ""
    )
    ref = PerDatapointPotential(binarized.model, x, guide=binarized.guide, num_chains=2)
    u = torch.randn(8, 3, dtype=torch.float64)
    _assert_parts_equal(ref, pot, u, **F64)
    torch.testing.assert_close(pot.log_guide(u), ref.log_guide(u).detach(), **F64)
    assert isinstance(make_potential(vae.model, x, fast="off"), PerDatapointPotential)
    assert make_potential(vae.model, x, fast="off").path == "traced"
    with pytest.raises(ValueError, match="does not support"):
        VAEPotential(mine.model, x)


# ------------------------------------------------------------------ any model: compiled
def _user(name):
    pyro.clear_param_store()
    torch.manual_seed(1)
    if name == "two-latents":  # two local latents, one constrained (positive)
        return TwoLatentModel().double(), torch.randn(5, 5, dtype=torch.float64)
    if name == "global-latent":  # conditioned on the guide's point estimate of sigma
        return GlobalNoiseModel().double(), torch.randn(5, 6, dtype=torch.float64)
    if name == "image":
        return TinyConvVAE().double(), (torch.rand(5, 1, 28, 28) < 0.3).double()
    return PyroExampleVAE(z_dim=3, hidden_dim=16).double(), (torch.rand(5, 784) < 0.3).double()


@pytest.mark.parametrize("max_rows", [None, 4], ids=["one-chunk", "chunks"])
@pytest.mark.parametrize("name", ["two-latents", "global-latent", "image", "pyro-example"])
def test_compiled_potential_equals_the_traced_potential(name, max_rows):
    m, x = _user(name)
    ref = PerDatapointPotential(m.model, x, num_chains=3, guide=m.guide)
    pot = make_potential(m.model, x, num_chains=3, guide=m.guide)
    assert isinstance(pot, CompiledPotential)
    if max_rows:
        pot.max_rows = max_rows  # 15 rows: chunks of 4, the last one padded
    u = torch.randn(15, pot.dim, dtype=torch.float64)
    _assert_parts_equal(ref, pot, u, **F64)
    assert pot.path == "compiled", pot.path_reason
    # a copy with more chains shares the recordings (they depend on the chunk shape only)
    more = pot.with_chains(6)
    assert more._recordings is pot._recordings and more.path == "compiled"
    u = torch.randn(30, pot.dim, dtype=torch.float64)
    _assert_parts_equal(ref.with_chains(6), more, u, **F64)


def test_compiled_potential_sees_in_place_parameter_updates():
    m, x = _user("two-latents")
    ref = PerDatapointPotential(m.model, x)
    pot = make_potential(m.model, x)
    u = torch.randn(5, pot.dim, dtype=torch.float64)
    _assert_parts_equal(ref, pot, u, **F64)
    with torch.no_grad():
        m.W.mul_(-2.0)  # as Monte Carlo EM's M-steps do between E-steps
    _assert_parts_equal(ref, pot, u, **F64)


class _Replaceable(nn.Module):
    """Reads a submodule, a param-store entry and a parameter's value as a Python number."""

    def __init__(self):
        super().__init__()
        self.dec = nn.Linear(2, 3).double()
        self.sig = nn.Parameter(torch.tensor(0.7, dtype=torch.float64))
        self.scale = 1.0

    def model(self, x):
        pyro.module("replaceable", self)
        w = pyro.param("w_replaceable", torch.ones(3, dtype=torch.float64))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            loc = self.dec(z) * w * self.scale
            pyro.sample("x", dist.Normal(loc, float(self.sig)).to_event(1), obs=x)


_REPLACEMENTS = {
    "submodule": lambda m: setattr(m, "dec", nn.Linear(2, 3).double()),
    "param-store entry": lambda m: pyro.get_param_store().__setitem__(
        "w_replaceable", torch.full((3,), 3.0, dtype=torch.float64)
    ),
    "float attribute": lambda m: setattr(m, "scale", 2.0),
    "value read in Python, through .data": lambda m: m.sig.data.mul_(3.0),
    "value read in Python, in place": lambda m: m.sig.detach().mul_(3.0),
}


@pytest.mark.parametrize("change", list(_REPLACEMENTS))
def test_compiled_potential_records_again_when_the_state_it_holds_changes(change):
    """Out-of-place replacements (a submodule, a param-store entry as ``ParamStore.load``
    makes them), Python attributes and values read in Python are held by a recording: a
    change is noticed at the next evaluation, which records again."""
    pyro.clear_param_store()
    torch.manual_seed(1)
    m = _Replaceable()
    x, u = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    pot = make_potential(m.model, x)
    pot.potential_and_grad(u)
    _REPLACEMENTS[change](m)
    ref = PerDatapointPotential(m.model, x)
    _assert_parts_equal(ref, pot, u, **F64)
    assert pot.path == "compiled"


def test_a_program_reused_on_data_of_another_shape_records_for_it():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.expand(-1, x.shape[1]), 1.0).to_event(1), obs=x)

    x4, x1 = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 1, dtype=torch.float64)
    u = torch.randn(3, 1, dtype=torch.float64)
    program = as_program(model, None, x4)
    make_potential(program, x4).potential_and_grad(u)
    pot = make_potential(program, x1)
    _assert_parts_equal(PerDatapointPotential(program, x1), pot, u, **F64)
    assert pot.path == "compiled"


def test_a_position_that_is_not_a_tensor_is_named():
    m, x = _user("two-latents")
    with pytest.raises(TypeError, match="position must be a torch.Tensor"):
        make_potential(m.model, x).potential_and_grad([[0.0] * 3] * 5)


class _Branches(nn.Module):
    def model(self, x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x)), 1.0))
            if float(z.sum()) > 1e9:  # reads a value: cannot be recorded
                z = z + 1
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def test_a_model_that_cannot_be_recorded_runs_traced_visibly():
    m, x = _Branches(), torch.randn(4, dtype=torch.float64)
    pot = make_potential(m.model, x)
    ref = PerDatapointPotential(m.model, x)
    u = torch.randn(4, 1, dtype=torch.float64)
    with pytest.warns(UserWarning, match="cannot be compiled"):
        _assert_parts_equal(ref, pot, u, **F64)
    assert pot.path == "traced" and "read a tensor value" in pot.path_reason
    assert not pot.provides_grad
    with pytest.raises(ValueError, match="fast='on'"):
        make_potential(m.model, x, fast="on")


def test_a_recording_that_fails_where_the_model_runs_falls_back_to_tracing(monkeypatch):
    m, x = _user("two-latents")
    ref = PerDatapointPotential(m.model, x)
    pot = make_potential(m.model, x)
    u = torch.randn(5, pot.dim, dtype=torch.float64)
    pot.parts_and_grads(u)
    assert pot.path == "compiled"

    def broken(position, grads):
        raise RuntimeError("shape mismatch in a recorded view")

    monkeypatch.setattr(pot, "_run", broken)
    with pytest.warns(UserWarning, match="shape mismatch"):
        _assert_parts_equal(ref, pot, u, **F64)
    assert pot.path == "traced" and "recording failed where the model runs" in pot.path_reason


# ------------------------------------------------------------------ the HMC kernel
class _AutogradOwnGrad:
    """A traced potential presented as one that computes its own gradient."""

    provides_grad = True

    def __init__(self, pot):
        self.pot = pot

    def __call__(self, u):
        return self.pot(u)

    def potential_and_grad(self, u, need_value=True):
        return hmc.value_and_grad(self.pot, u)


def test_own_gradient_integrator_is_pyros_velocity_verlet():
    m, x = _user("two-latents")
    pot = PerDatapointPotential(m.model, x, num_chains=2)
    own = _AutogradOwnGrad(pot)
    u = torch.randn(10, pot.dim, dtype=torch.float64)
    state = hmc.init(pot, u)
    kw = dict(step_size=torch.linspace(0.05, 0.3, 10, dtype=torch.float64), num_steps=5)
    a, info_a = hmc.step(state, pot, generator=torch.Generator().manual_seed(0), **kw)
    b, info_b = hmc.step(state, own, generator=torch.Generator().manual_seed(0), **kw)
    for s, t in zip((*a, *info_a), (*b, *info_b), strict=True):
        assert torch.equal(s, t)


# ------------------------------------------------------------------ estimates unchanged
# Recorded with the implementation before compiled potentials existed (commit d29a1c0, every
# gradient traced): AIS and Appendix D on a float64 VAE (12-7-3) and on TwoLatentModel.
PINNED = {
    "ais_vae": [-8.958721346376562, -8.582960619366856, -8.502060139907298,
                -8.207257872483972, -8.238019667376232],
    "appd_vae": [-9.194799616533896, -8.49377844931037, -8.175274491562732,
                 -8.7735855824603, -6.7182186174490335],
    "ais_two_prior": [-19.1343724266502, -16.559022610601662, -12.027119259102458,
                      -9.103378319252869],
    "appd_two": [-13.775681470071998, -16.54321251933736, -11.017065902296828,
                 -9.20260966360048],
}  # fmt: skip


def _pinned_runs(fast):
    torch.manual_seed(0)
    vae = mlp_vae(12, 3, 7, init_std=0.3).double()
    x = torch.rand(5, 12, dtype=torch.float64)
    out = {
        "ais_vae": log_marginal(vae.model, vae.guide, x, "ais", seed=3, num_temps=30,
                                num_chains=4, fast=fast),
        "appd_vae": log_marginal(vae.model, vae.guide, x, "appendix_d", seed=3,
                                 num_samples=20, num_warmup=30, fast=fast),
    }  # fmt: skip
    torch.manual_seed(0)
    m = TwoLatentModel().double()
    x2 = torch.randn(4, 5, dtype=torch.float64)
    out["ais_two_prior"] = log_marginal(m.model, None, x2, "ais", seed=1, num_temps=20,
                                        num_chains=3, fast=fast)  # fmt: skip
    out["appd_two"] = log_marginal(m.model, m.guide, x2, "appendix_d", seed=1, num_samples=10,
                                   num_warmup=20, fast=fast)  # fmt: skip
    return out


@pytest.mark.parametrize("fast", ["off", "auto"])
def test_ais_and_appendix_d_estimates_are_unchanged_for_fixed_seeds(fast):
    runs = _pinned_runs(fast)
    # traced: the same arithmetic as before; fast: the same to float rounding (the
    # Appendix-D density fit amplifies the last digits a little)
    tol = 1e-10 if fast == "off" else 1e-6
    for key, result in runs.items():
        want = torch.tensor(PINNED[key], dtype=torch.float64)
        torch.testing.assert_close(result.estimate, want, rtol=0, atol=tol, msg=key)
        expected = {"off": "traced", "auto": "vae" if "vae" in key else "compiled"}[fast]
        assert result.diagnostics["potential"] == expected
        assert result.settings["fast"] == fast


@requires_data
def test_ais_on_the_trained_mnist_vae_matches_the_traced_path(mnist_vae, mnist_test):
    """The paper's model on real MNIST: the hand-derived potential gives the traced
    estimates (float64: to rounding; float32: to rounding or within their error)."""
    x = mnist_test[:8]
    opts = dict(num_temps=20, num_chains=4, seed=5)
    for dtype in (torch.float64, torch.float32):
        pyro.clear_param_store()
        vae = mnist_vae if dtype == torch.float32 else _double(mnist_vae)
        xd = x.to(dtype)
        fast = log_marginal(vae.model, vae.guide, xd, "ais", fast="auto", **opts)
        slow = log_marginal(vae.model, vae.guide, xd, "ais", fast="off", **opts)
        assert fast.diagnostics["potential"] == "vae" and slow.diagnostics["potential"] == "traced"
        diff = (fast.estimate - slow.estimate).abs()
        if dtype == torch.float64:
            assert float(diff.max()) < 1e-6
        else:
            # float32 rounding (1e-7 of a potential of ~100 nats) flips a rare accept/reject,
            # after which that datapoint's chains are a second, independent run: most
            # estimates agree to rounding, every one within its Monte Carlo error
            assert float((diff < 1e-3).double().mean()) >= 0.75, diff
            assert bool((diff < 3 * slow.stderr).all()), diff / slow.stderr


def _double(vae):
    import copy

    return copy.deepcopy(vae).double()


def test_an_inductor_potential_that_cannot_compile_replays(monkeypatch):
    """No C++ compiler (or an inductor failure): the recording still replays (the traced
    numbers to rounding) instead of tracing at every evaluation."""
    from pyro_aevb.poutine.compile import CaptureError, RecordedFunction

    def broken(self, engine, *example):
        raise CaptureError("the inductor compiler failed: no compiler")

    monkeypatch.setattr(RecordedFunction, "compile", broken)
    pyro.clear_param_store()
    torch.manual_seed(0)
    model = TwoLatentModel().double()
    x = torch.randn(4, 5, dtype=torch.float64)
    u = torch.randn(4, 3, dtype=torch.float64)
    pot = CompiledPotential(model.model, x, engine="inductor")
    with pytest.warns(UserWarning, match="replaying instead"):
        value, grad = pot.potential_and_grad(u)
    assert pot.path == "compiled" and pot.engine == "replay"
    traced = PerDatapointPotential(model.model, x)
    expected, expected_grad = traced.potential_and_grad(u)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-10)


def test_a_model_that_changes_its_own_python_state_runs_traced():
    pyro.clear_param_store()
    m = counting(_Replaceable)()
    x, u = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    pot = make_potential(m.model, x)
    with pytest.warns(UserWarning, match="traced at every evaluation"):
        _assert_parts_equal(PerDatapointPotential(m.model, x), pot, u, **F64)
    assert pot.path == "traced" and "Counting.calls" in pot.path_reason


def test_an_attribute_the_model_sets_from_its_input_stays_compiled():
    class SetsRows(_Replaceable):
        def model(self, x):
            self.rows = x.shape[0]
            super().model(x)

    pyro.clear_param_store()
    m = SetsRows()
    x, u = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    pot = make_potential(m.model, x, num_chains=1)
    pot.max_rows = 3  # chunks of 3 rows, the last one padded
    _assert_parts_equal(PerDatapointPotential(m.model, x), pot, u, **F64)
    assert pot.path == "compiled", pot.path_reason


def test_a_change_the_snapshot_cannot_see_is_caught_by_the_next_check():
    """An attribute of a nested plain object (``self.cfg.scale``) is not in the Python-state
    snapshot; evaluations 1, 2, 4, 8, ... compare a chunk with the traced model and record
    again on a difference."""
    from types import SimpleNamespace

    class Nested(_Replaceable):
        def __init__(self):
            super().__init__()
            self.cfg = SimpleNamespace(scale=1.0)

        def model(self, x):
            self.scale = self.cfg.scale
            super().model(x)

    pyro.clear_param_store()
    m = Nested()
    x, u = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    pot = make_potential(m.model, x)
    for _ in range(3):
        pot.potential_and_grad(u)
    assert (pot.num_evaluations, pot.num_checks) == (3, 2)
    m.cfg.scale = 2.0
    stale, _ = pot.potential_and_grad(u)  # evaluation 4: a check
    ref = PerDatapointPotential(m.model, x)
    torch.testing.assert_close(stale, ref.potential_and_grad(u)[0], **F64)
    _assert_parts_equal(ref, pot, u, **F64)
    assert pot.path == "compiled" and pot.num_checks == 3


class _Holder:
    pass


_HELD = _Holder()
_HELD.scale = 1.0
_WEIGHTS = {"scale": 1.0}
_GLOBAL_SCALE = 1.0


def _read_weights():
    return _WEIGHTS["scale"]


def _set_global(value):
    global _GLOBAL_SCALE
    _GLOBAL_SCALE = value


_REBINDINGS = {
    "module global read by a lambda": lambda: _set_global(2.0),
    "attribute of a plain object": lambda: setattr(_HELD, "scale", 3.0),
    "dict entry read by a helper": lambda: _WEIGHTS.__setitem__("scale", 0.5),
}


@pytest.mark.parametrize("change", list(_REBINDINGS))
def test_state_read_through_helpers_plain_objects_and_dicts_is_seen_at_once(change):
    """Rebound between two evaluations that are not checks (the 4th and 5th): the 5th is
    recorded anew, not replayed stale."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            scale = (lambda: _GLOBAL_SCALE)() * _HELD.scale * _read_weights()
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True) * scale, 0.7).to_event(1), obs=x)

    _set_global(1.0)
    _HELD.scale, _WEIGHTS["scale"] = 1.0, 1.0
    x, u = torch.randn(4, 1, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    pot = make_potential(model, x)
    for _ in range(4):
        pot.potential_and_grad(u)
    checks = pot.num_checks
    _REBINDINGS[change]()
    value, grad = pot.potential_and_grad(u)  # evaluation 5: not a regular check
    ref_value, ref_grad = PerDatapointPotential(model, x).potential_and_grad(u)
    torch.testing.assert_close(value, ref_value, **F64)
    torch.testing.assert_close(grad, ref_grad, **F64)
    assert pot.path == "compiled" and pot.num_checks == checks


def test_a_guide_rebuilding_objects_per_call_does_not_make_the_model_record_again(caplog):
    """AIS from the encoder runs the guide at every step; an autoguide with Pyro's AutoNormal
    for a global latent rebuilds its plates each call. The recordings are of the model: the
    guide's Python state is not watched, so the model is recorded once."""

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))  # a global latent
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    torch.manual_seed(0)
    pyro.clear_param_store()
    x = torch.randn(8) + 2.0
    guide = AmortizedNormal(model, hidden_dims=(8,))
    guide(x)
    with caplog.at_level("INFO", logger="pyro_aevb"):
        res = log_marginal(
            model, guide, x, "ais", seed=0, num_chains=4, num_temps=20, init="encoder"
        )
    assert res.diagnostics["potential"] == "compiled"
    assert not [r for r in caplog.records if "recording again" in r.getMessage()]
