"""The IWAE training objective: K = 1 is estimator A, K > 1 is the per-datapoint IWAE estimate
on the same draws, the direct VAE path equals the Pyro path, DReG is unbiased with a lower
encoder variance (zero at the exact posterior), and training through fit improves the bound
and resumes exactly."""

import copy
import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from marginal_helpers import GLOBAL_FACTOR, PPCA, bound_objective
from torch import nn
from user_models import GlobalNoiseModel, PyroExampleVAE, TinyConvVAE, TwoLatentModel

from pyro_aevb import ELBO, IWAE, fit, log_marginal, mlp_vae
from pyro_aevb.cli import main
from pyro_aevb.evaluate.iwae import iwae_log_weights
from pyro_aevb.models import VAE, LinearGaussian
from pyro_aevb.poutine import TrainingProgram, replicate_rows

TOL = dict(rtol=1e-10, atol=1e-10)  # float64: the same arithmetic up to rounding


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny matrices: threads only add contention on a shared machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class SelfScaledNestedModel(nn.Module):
    """A user program without ``num_data`` whose data plate declares the full size itself
    (``pyro.plate("data", N, subsample=...)`` with N from a closure, at dim -2) and has a
    nested per-pixel plate: its own N/M scale must be applied once, not twice."""

    def __init__(self, num_total, d=4, k=2):
        super().__init__()
        self.W = nn.Parameter(0.5 * torch.randn(d, k, dtype=torch.float64))
        self.enc = nn.Linear(d, 2 * k).double()
        self.num_total, self.d, self.k = num_total, d, k

    def _plate(self, x):
        return pyro.plate("data", self.num_total, subsample=torch.arange(len(x)), dim=-2)

    def model(self, x):
        pyro.module("self_scaled", self)
        with self._plate(x):
            zero = x.new_zeros(len(x), 1, self.k)
            z = pyro.sample("z", dist.Normal(zero, 1.0).to_event(1))
            with pyro.plate("pixels", self.d, dim=-1):
                pyro.sample("x", dist.Normal(z.squeeze(-2) @ self.W.T, 0.5), obs=x)

    def guide(self, x):
        pyro.module("self_scaled", self)
        loc, log_var = self.enc(x).unsqueeze(-2).chunk(2, -1)
        with self._plate(x):
            pyro.sample("z", dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1))


def vae(likelihood="bernoulli", d=12, j=3, hidden=10):
    torch.manual_seed(123)
    return mlp_vae(d, j, hidden, likelihood=likelihood, init_std=0.3).double()


def user_model(name, num_data):
    """(module, x) for a model of ``tests/user_models.py`` (float64) and data for it."""
    torch.manual_seed(3)
    g = torch.Generator().manual_seed(5)
    if name == "pyro-example-vae":
        m = PyroExampleVAE(z_dim=3, hidden_dim=8, temperature=True).double()
        return m, (torch.rand(6, 784, generator=g, dtype=torch.float64) < 0.3).double()
    if name == "tiny-conv-vae":
        m = TinyConvVAE().double()
        return m, (torch.rand(6, 1, 28, 28, generator=g, dtype=torch.float64) < 0.3).double()
    if name == "self-scaled-nested":
        m = SelfScaledNestedModel(num_data)
        return m, torch.randn(6, m.d, generator=g, dtype=torch.float64)
    m = {"global-noise": GlobalNoiseModel, "two-latent": TwoLatentModel}[name]().double()
    return m, torch.randn(6, m.d, generator=g, dtype=torch.float64)


def loss_and_grads(objective, x, seed=1):
    torch.manual_seed(seed)
    loss = objective.loss_and_grads(x)
    return loss, [None if p.grad is None else p.grad.clone() for p in objective.params]


def assert_same(a, b, what):
    (la, ga), (lb, gb) = a, b
    torch.testing.assert_close(la, lb, **TOL, msg=lambda m: f"{what}, loss: {m}")
    assert len(ga) == len(gb)
    for i, (p, q) in enumerate(zip(ga, gb)):
        torch.testing.assert_close(p, q, **TOL, msg=lambda m, i=i: f"{what}, gradient {i}: {m}")


# ---------------------------------------------------------------------- K = 1: estimator A
@pytest.mark.parametrize("fast", ["auto", "off"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_k1_equals_estimator_a_for_the_vae(likelihood, fast):
    """Loss and every gradient equal stock Pyro's Trace_ELBO on the same draws, including the
    N/M scale (N = 60, M = 6) and the weight prior outside the plate."""
    model = vae(likelihood)
    x = torch.rand(6, 12, dtype=torch.float64)
    iwae = bound_objective(IWAE(1), model, 60, x, fast=fast)
    assert iwae.path == ("direct" if fast == "auto" else "pyro")
    reference = bound_objective(ELBO("A"), model, 60, x, fast="off")
    assert reference.path == "pyro"
    assert_same(loss_and_grads(iwae, x), loss_and_grads(reference, x), f"{iwae.path} path")


@pytest.mark.parametrize(
    "name",
    ["pyro-example-vae", "global-noise", "two-latent", "tiny-conv-vae", "self-scaled-nested"],
)
def test_k1_equals_estimator_a_for_user_models(name):
    """Programs as users write them: param-store entries, a global latent (drawn once per
    step), two local latents, image rows, and a data plate that scales itself with a nested
    plate inside it."""
    model, x = user_model(name, num_data=60)
    iwae = bound_objective(IWAE(1), model, 60, x)
    reference = bound_objective(ELBO("A"), model, 60, x)
    assert iwae.path == "pyro"
    assert_same(loss_and_grads(iwae, x), loss_and_grads(reference, x), name)
    # DReG changes the guide's gradient (at K = 1: "sticking the landing"), not the value
    dreg = bound_objective(IWAE(1, dreg=True), model, 60, x)
    torch.testing.assert_close(loss_and_grads(dreg, x)[0], loss_and_grads(reference, x)[0])


# ---------------------------------------------------------------------- K > 1: the IWAE value
@pytest.mark.parametrize("dreg", [False, True])
@pytest.mark.parametrize(
    "name, global_term",
    [
        ("vae-direct", "weight prior"),
        ("vae-pyro", "weight prior"),
        ("ppca", GLOBAL_FACTOR),
        ("two-latent", 0.0),
        ("self-scaled-nested", 0.0),
    ],
)
def test_value_for_k_above_1_is_the_per_datapoint_iwae_estimate(name, global_term, dreg):
    """loss = -(N/M) sum_i logmeanexp_k log w_ik - G, with log w from evaluate.iwae on the same
    draws; bound(x) is the per-datapoint estimate L_K(x_i)."""
    k, num_data = 7, 60
    fast = "off" if name == "vae-pyro" else "auto"
    if name.startswith("vae"):
        model = vae()
        x = torch.rand(6, 12, dtype=torch.float64)
    elif name == "ppca":
        model = PPCA()
        x = model.simulate(6)
    else:
        model, x = user_model(name, num_data)
    objective = bound_objective(IWAE(k, dreg=dreg), model, num_data, x, fast=fast)
    assert objective.path == ("direct" if name == "vae-direct" else "pyro")
    if global_term == "weight prior":
        global_term = model.log_weight_prior().item()
    torch.manual_seed(11)
    loss = objective.loss_and_grads(x)
    torch.manual_seed(11)
    log_w = iwae_log_weights(model.model, model.guide, x, k, chunk_size=k)
    per_datapoint = torch.logsumexp(log_w, 0) - math.log(k)
    expected = -(num_data / x.shape[0]) * per_datapoint.sum() - global_term
    torch.testing.assert_close(loss, expected, **TOL)

    torch.manual_seed(12)
    bound = objective.bound(x)
    torch.manual_seed(12)
    log_w = iwae_log_weights(model.model, model.guide, x, k)
    assert bound.shape == (x.shape[0],)
    torch.testing.assert_close(bound, torch.logsumexp(log_w, 0) - math.log(k), **TOL)


def test_the_bound_increases_with_k_toward_log_p_x():
    """On PPCA (exact log p(x) and ELBO) the objective's bound, averaged over many draws,
    is the exact ELBO at K = 1, increases with K and stays below log p(x_i)."""
    ppca = PPCA()
    x = ppca.simulate(20)
    draws = 400
    mean, stderr = {}, {}
    for k in (1, 5, 50):
        objective = bound_objective(IWAE(k), ppca, 20, x)
        torch.manual_seed(0)
        # each stacked copy of x is an independent draw of L_K(x_i)
        bounds = objective.bound(replicate_rows(x, draws)).reshape(draws, len(x))
        mean[k], stderr[k] = bounds.mean(0), bounds.std(0) / math.sqrt(draws)
    exact, elbo = ppca.log_marginal(x), ppca.elbo(x)
    assert float(((mean[1] - elbo) / stderr[1]).abs().max()) < 4.5
    assert bool((mean[1] < mean[5]).all()) and bool((mean[5] < mean[50]).all())
    assert bool((mean[50] < exact + 4 * stderr[50]).all())
    assert float((exact - mean[50]).mean()) < 0.25 * float((exact - elbo).mean())


# ---------------------------------------------------------------------- direct = Pyro path
@pytest.mark.parametrize("dreg", [False, True])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_direct_vae_path_equals_the_pyro_path(likelihood, dreg):
    model = vae(likelihood)
    x = torch.rand(6, 12, dtype=torch.float64)
    direct = bound_objective(IWAE(5, dreg=dreg), model, 60, x, fast="auto")
    pyro_path = bound_objective(IWAE(5, dreg=dreg), model, 60, x, fast="off")
    assert (direct.path, pyro_path.path) == ("direct", "pyro")
    assert "fast='off'" in pyro_path.path_reason and "networks" in direct.path_reason
    assert_same(loss_and_grads(direct, x), loss_and_grads(pyro_path, x), f"dreg={dreg}")
    torch.manual_seed(3)
    bound = direct.bound(x)
    torch.manual_seed(3)
    torch.testing.assert_close(bound, pyro_path.bound(x), **TOL)


def test_vae_subclass_runs_on_the_pyro_path_and_says_why():
    class Custom(type(vae())):
        def encode(self, x):
            return super().encode(x)

    torch.manual_seed(0)
    base = vae()
    model = Custom(base.encoder, base.decoder, "bernoulli", 3, 12).double()
    x = torch.rand(6, 12, dtype=torch.float64)
    objective = bound_objective(IWAE(3), model, 60, x)
    assert objective.path == "pyro" and "overrides VAE.encode" in objective.path_reason
    with pytest.raises(ValueError, match="direct IWAE path does not support.*encode"):
        bound_objective(IWAE(3), model, 60, x, fast="on")


# ---------------------------------------------------------------------- DReG
def linear_gaussian(num_points=40, shift=0.0, widen=1.0):
    """Probabilistic PCA whose exact posterior is diagonal (W has orthogonal columns), so the
    linear diagonal guide can be set to it (``shift=0, widen=1``) or near it."""
    torch.manual_seed(0)
    m = LinearGaussian(5, 2, sigma=0.7).double()
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(5, 2, dtype=torch.float64))
        m.W.copy_(q * torch.tensor([1.5, 0.8], dtype=torch.float64))
        m.b.copy_(torch.randn(5, dtype=torch.float64))
        x = m.marginal().sample((num_points,))
        s2 = m.sigma**2
        cov = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + m.W.T @ m.W / s2)
        assert abs(float(cov[0, 1])) < 1e-12
        m.enc_A.copy_(cov @ m.W.T / s2 + shift)
        m.enc_c.copy_(m.b)
        m.enc_log_var.copy_(torch.log(torch.diagonal(cov) * widen))
    return m, x


ENCODER = ("enc_A", "enc_c", "enc_log_var")
DECODER = ("W", "b", "log_sigma")


def grads_of(m, names):
    return torch.cat([getattr(m, n).grad.reshape(-1) for n in names])


def iwae_stl_encoder_grad(m, x, k):
    """A *biased* reference for the power of the unbiasedness test: the IWAE gradient with the
    score term dropped and the path term weighted by v (not v^2), on the objective's draws."""
    m.zero_grad()
    loc = (x - m.enc_c) @ m.enc_A.T
    scale = torch.exp(0.5 * m.enc_log_var).expand_as(loc)
    loc, scale = replicate_rows(loc, k), replicate_rows(scale, k)
    z = loc + torch.empty_like(loc).normal_() * scale
    log_q = dist.Normal(loc.detach(), scale.detach()).log_prob(z).sum(-1)
    lik = dist.Normal(z @ m.W.T + m.b, m.sigma).to_event(1).log_prob(replicate_rows(x, k))
    log_w = (m.prior(z.shape[0]).log_prob(z) + lik - log_q).view(k, -1)
    (-(torch.softmax(log_w.detach(), 0) * log_w).sum()).backward()
    return grads_of(m, ENCODER)


def test_dreg_is_unbiased_and_reduces_the_encoder_variance_at_k50():
    """Paired draws (the same eps for both estimators): the decoder gradient is the plain one
    draw by draw; the mean DReG encoder gradient equals the plain one within its standard
    error (a biased variant fails the same test); the encoder variance is lower."""
    k, draws = 50, 40
    m, x = linear_gaussian(shift=0.2, widen=1.5)  # an imperfect encoder
    plain = bound_objective(IWAE(k), m, len(x), x)
    dreg = bound_objective(IWAE(k, dreg=True), m, len(x), x)
    enc = {"plain": [], "dreg": [], "biased": []}
    for seed in range(draws):
        decoder = {}
        for name, objective in (("plain", plain), ("dreg", dreg)):
            torch.manual_seed(seed)
            objective.loss_and_grads(x)
            enc[name].append(grads_of(m, ENCODER))
            decoder[name] = grads_of(m, DECODER)
        torch.testing.assert_close(decoder["dreg"], decoder["plain"], **TOL)
        torch.manual_seed(seed)
        enc["biased"].append(iwae_stl_encoder_grad(m, x, k))
    enc = {n: torch.stack(g) for n, g in enc.items()}

    def z_scores(name):
        diff = enc[name] - enc["plain"]
        return diff.mean(0) / (diff.std(0) / math.sqrt(draws))

    assert float(z_scores("dreg").abs().max()) < 4
    assert float(z_scores("biased").abs().max()) > 20  # the test can tell a biased estimator
    var = {n: float(g.var(0).sum()) for n, g in enc.items()}
    assert var["dreg"] < 0.6 * var["plain"]


def test_dreg_encoder_gradient_vanishes_at_the_exact_posterior():
    """With q the exact posterior every weight is p(x_i): the bound is log p(x_i) on every
    draw, DReG's encoder gradient is exactly zero (zero variance) while the plain estimator's
    is pure noise from the score term; the decoder gradients agree."""
    m, x = linear_gaussian(num_points=10)
    k = 50
    plain = bound_objective(IWAE(k), m, len(x), x)
    dreg = bound_objective(IWAE(k, dreg=True), m, len(x), x)
    for seed in range(3):
        torch.manual_seed(seed)
        loss = dreg.loss_and_grads(x)
        torch.testing.assert_close(loss, -m.log_marginal(x).sum(), rtol=1e-10, atol=1e-9)
        assert float(grads_of(m, ENCODER).abs().max()) < 1e-9
        decoder = grads_of(m, DECODER)
        torch.manual_seed(seed)
        plain.loss_and_grads(x)
        assert float(grads_of(m, ENCODER).abs().max()) > 0.1
        torch.testing.assert_close(grads_of(m, DECODER), decoder, **TOL)


class FlowGuideModel(nn.Module):
    """Linear-Gaussian model with a normalising-flow guide: a Gaussian from a linear encoder
    pushed through an affine coupling flow whose network is read lazily, when the transform
    is applied (so detaching the distribution's tensors would not detach it)."""

    def __init__(self, d=4, k=2):
        super().__init__()
        self.W = nn.Parameter(0.5 * torch.randn(d, k, dtype=torch.float64))
        self.enc = nn.Linear(d, 2 * k).double()
        self.iaf = dist.transforms.affine_coupling(k, hidden_dims=[6]).double()
        self.d, self.k = d, k

    def likelihood(self, z):
        return dist.Normal(z @ self.W.T, 0.5).to_event(1)

    def model(self, x):
        pyro.module("flow_model", self)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), self.k), 1.0).to_event(1))
            pyro.sample("x", self.likelihood(z), obs=x)

    def q(self, x, iaf):
        loc, log_var = self.enc(x).chunk(2, -1)
        base = dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1)
        return dist.TransformedDistribution(base, [iaf])

    def guide(self, x):
        pyro.module("flow_model", self)
        with pyro.plate("data", len(x)):
            pyro.sample("z", self.q(x, self.iaf))


def test_dreg_equals_the_gradient_with_the_guide_parameters_detached_for_a_flow_guide():
    """The leaf construction is DReG as defined: the same gradients as differentiating
    sum v^2 log w through z with a frozen copy of the guide's parameters in log q (and
    sum v log p for the model's own parameter W)."""
    torch.manual_seed(0)
    m, k, num_data = FlowGuideModel(), 3, 30
    frozen = copy.deepcopy(m).requires_grad_(False)  # the same parameters, detached
    x = torch.randn(5, m.d, dtype=torch.float64)
    objective = bound_objective(IWAE(k, dreg=True), m, num_data, x)
    torch.manual_seed(4)
    objective.loss_and_grads(x)
    got = {n: p.grad.clone() for n, p in m.named_parameters()}

    torch.manual_seed(4)
    z = m.q(replicate_rows(x, k), m.iaf).rsample()  # the guide's draw, the path to phi
    x_rep = replicate_rows(x, k)
    prior = dist.Normal(torch.zeros_like(z), 1.0).to_event(1)
    log_p = prior.log_prob(z) + m.likelihood(z).log_prob(x_rep)
    log_q = frozen.q(x_rep, frozen.iaf).log_prob(z)  # parameters detached, z not
    log_w = (log_p - log_q).reshape(k, -1)
    v = torch.softmax(log_w.detach(), 0)
    scale = num_data / len(x)
    guide_params = [p for n, p in m.named_parameters() if n != "W"]
    path = torch.autograd.grad(-scale * (v * v * log_w).sum(), guide_params)
    z_fixed = z.detach()
    log_p_fixed = prior.log_prob(z_fixed) + m.likelihood(z_fixed).log_prob(x_rep)
    (w_grad,) = torch.autograd.grad(-scale * (v * log_p_fixed.reshape(k, -1)).sum(), [m.W])
    expected = dict(zip([n for n, _ in m.named_parameters() if n != "W"], path)) | {"W": w_grad}
    assert set(got) == set(expected)
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------------- training
def binary_data(n=500, d=30, seed=0):
    """Noisy copies of 4 binary prototypes (5% of the bits flipped): structure to learn."""
    g = torch.Generator().manual_seed(seed)
    prototypes = (torch.rand(4, d, generator=g) < 0.5).float()
    x = prototypes[torch.randint(0, 4, (n,), generator=g)]
    flip = (torch.rand(n, d, generator=g) < 0.05).float()
    return (x + flip) % 2


def tiny_vae(seed=0, d=30):
    torch.manual_seed(seed)
    return mlp_vae(d, 3, (16,), init_std=0.1)


@pytest.mark.parametrize("fast", ["auto", "off"])
def test_fit_with_iwae_improves_the_bound_and_resumes_exactly(tmp_path, fast):
    x = binary_data()
    kwargs = dict(
        objective=IWAE(5, dreg=True),
        batch_size=50,
        lr=0.05,
        seed=7,
        eval_every=300,
        fast=fast,
        progress=False,
    )
    straight = fit(
        tiny_vae(0), x[:400], x[400:], num_samples=1200, out_dir=tmp_path / "a", **kwargs
    )
    assert straight.path == ("direct" if fast == "auto" else "pyro")
    assert straight.config["training"]["objective"] == {"num_particles": 5, "dreg": True}
    first, last = straight.history[0], straight.history[-1]
    assert last["train_bound"] > first["train_bound"] + 2
    assert last["test_bound"] > first["test_bound"] + 2
    # stop part-way, continue in a fresh module from the checkpoint
    fit(tiny_vae(0), x[:400], x[400:], num_samples=600, out_dir=tmp_path / "b", **kwargs)
    resumed_module = tiny_vae(seed=123)
    resumed = fit(
        resumed_module,
        x[:400],
        x[400:],
        num_samples=1200,
        out_dir=tmp_path / "b",
        resume=True,
        **kwargs,
    )
    for p, q in zip(straight.module.parameters(), resumed_module.parameters()):
        assert torch.equal(p, q)
    assert [h["test_bound"] for h in resumed.history] == [h["test_bound"] for h in straight.history]
    with pytest.raises(ValueError, match="objective"):  # another K is another run
        fit(
            tiny_vae(0),
            x[:400],
            num_samples=1800,
            out_dir=tmp_path / "b",
            resume=True,
            **{**kwargs, "objective": IWAE(6, dreg=True)},
        )


def test_a_run_is_the_same_on_the_direct_and_the_pyro_path():
    x = binary_data()
    kwargs = dict(objective=IWAE(5, dreg=True), batch_size=50, lr=0.05, eval_every=300)
    runs = {
        fast: fit(
            tiny_vae(0), x[:400], x[400:], num_samples=900, fast=fast, progress=False, **kwargs
        )
        for fast in ("auto", "off")
    }
    assert (runs["auto"].path, runs["off"].path) == ("direct", "pyro")
    for a, b in zip(runs["auto"].history, runs["off"].history, strict=True):
        for key in ("loss", "train_bound", "test_bound"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key


def test_algorithm_name_and_its_options():
    x = binary_data(200)
    result = fit(
        tiny_vae(),
        x,
        algorithm="iwae",
        num_particles=3,
        num_samples=200,
        progress=False,
        eval_every=200,
        eval_size=50,
    )
    assert result.config["training"]["algorithm"] == "iwae"
    assert result.config["training"]["objective"] == {"num_particles": 3, "dreg": False}
    with pytest.raises(ValueError, match="IWAE objective has no estimator"):
        fit(tiny_vae(), x, algorithm="iwae", estimator="B", num_samples=100, progress=False)


def test_cli_trains_with_iwae_and_dreg(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--dataset", "embedded-mnist", "--out", str(out), "--latent-dim", "2"]
    args += ["--hidden", "16", "--num-samples", "300", "--eval-size", "50", "--no-progress"]
    assert main([*args, "--no-figures", "--objective", "iwae", "--particles", "3", "--dreg"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["algorithm"] == "iwae"
    assert config["training"]["objective"] == {"num_particles": 3, "dreg": True}
    assert config["path"] == "direct"
    assert "K = 3 (DReG gradients)" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["objective"] == {"num_particles": 3, "dreg": True}
    assert main([*args, "--out", str(tmp_path / "r2"), "--dreg"]) == 2
    assert "--dreg applies to --objective iwae only" in capsys.readouterr().err


# ---------------------------------------------------------------------- errors
def test_settings_are_checked():
    with pytest.raises(ValueError, match="num_particles"):
        IWAE(0)
    with pytest.raises(TypeError, match="dreg must be True or False"):
        IWAE(5, dreg="yes")
    assert IWAE(50, dreg=True).settings() == {"num_particles": 50, "dreg": True}


def test_a_non_reparameterised_guide_site_is_an_error_naming_it():
    def model(x):
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Bernoulli(0.5 * x.new_ones(len(x))))
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    def guide(x):
        p = pyro.param("p", torch.tensor(0.5), constraint=dist.constraints.unit_interval)
        with pyro.plate("data", len(x)):
            pyro.sample("c", dist.Bernoulli(p.expand(len(x))))

    x = torch.randn(8)
    with pytest.raises(ValueError, match="guide site 'c' has a Bernoulli distribution without"):
        bound_objective(IWAE(3), model, 8, x, guide=guide)


def test_a_guide_that_is_not_deterministic_is_refused_for_dreg():
    class DropoutGuide(TwoLatentModel):
        def guide(self, x):
            return super().guide(nn.functional.dropout(x, 0.5, training=True))

    model, x = DropoutGuide().double(), torch.randn(6, 5, dtype=torch.float64)
    bound_objective(IWAE(3), model, 6, x)  # plain IWAE never replays the guide
    with pytest.raises(ValueError, match="not deterministic"):
        bound_objective(IWAE(3, dreg=True), model, 6, x)


def test_no_guide_is_an_error():
    def model(x):
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    with pytest.raises(ValueError, match="needs a guide"):
        fit(model, torch.randn(10), objective=IWAE(3), num_samples=10, progress=False)


@pytest.mark.parametrize("fast", ["auto", "off"])
def test_non_finite_log_weights_give_a_nan_loss_and_no_gradient(fast):
    model = vae()
    x = torch.rand(6, 12, dtype=torch.float64)
    objective = bound_objective(IWAE(3), model, 60, x, fast=fast)
    with torch.no_grad():
        model.decoder.out.bias[0] = math.inf
    model.validate = False  # let the non-finite numbers through to the weights
    loss = objective.loss_and_grads(x)
    assert math.isnan(float(loss))
    assert all(p.grad is None for p in objective.params)


def test_a_scale_the_objective_applies_is_not_reported_as_dropped():
    """IWAE weights a site by its own scale (as Trace_ELBO does); only per-datapoint
    estimators of the model's own densities warn that they leave such a scale out."""
    import warnings

    from pyro import poutine

    class Tempered(TwoLatentModel):
        def model(self, x):
            with poutine.scale(scale=0.5):
                return super().model(x)

    pyro.clear_param_store()
    torch.manual_seed(0)
    m = Tempered().double()
    x = torch.randn(6, m.d, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        bound_objective(IWAE(3), m, 60, x)
    with pytest.warns(UserWarning, match="are scaled"):
        log_marginal(m.model, m.guide, x, "iwae", num_particles=3)


def _normed_or_dropout_vae(layer):
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(6, 8), layer, nn.Tanh(), nn.Linear(8, 4))
    dec = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 6))
    return VAE(enc, dec, "bernoulli", 2, 6, weight_prior_std=None).double()


@pytest.mark.parametrize("layer", ["dropout", "batchnorm"])
def test_a_vae_with_dropout_or_batchnorm_in_training_takes_the_pyro_path(layer):
    """The direct path runs the encoder on the M rows, the Pyro path on the K M stacked
    particles (one dropout mask per particle, batch statistics over K M rows): not the same
    numbers, so the direct path is not used, and says why."""
    vae = _normed_or_dropout_vae(nn.Dropout(0.3) if layer == "dropout" else nn.BatchNorm1d(8))
    bound = IWAE(3).bind(TrainingProgram(vae.model, vae.guide, num_data=100))
    assert bound.path == "pyro"
    assert "training mode" in bound.path_reason
    vae.eval()
    assert IWAE(3).bind(TrainingProgram(vae.model, vae.guide, num_data=100)).path == "direct"


def test_dreg_updates_batchnorm_statistics_once_per_step_as_the_plain_gradient_does():
    """DReG runs the guide twice (a draw, then a replay at detached leaves); set-up runs are
    throw-away: the running statistics after a few steps are those of one update a step."""
    x = (torch.rand(10, 6, generator=torch.Generator().manual_seed(1)) < 0.4).double()
    stats = []
    for dreg in (False, True):
        pyro.clear_param_store()
        vae = _normed_or_dropout_vae(nn.BatchNorm1d(8))
        bound = IWAE(3, dreg=dreg).bind(TrainingProgram(vae.model, vae.guide, num_data=100))
        bound.setup(x)
        for seed in range(3):
            torch.manual_seed(seed)
            bound.loss_and_grads(x)
        bn = vae.encoder[1]
        assert int(bn.num_batches_tracked) == 3
        stats.append((bn.running_mean.clone(), bn.running_var.clone()))
    for a, b in zip(*stats, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
