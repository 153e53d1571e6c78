"""The compiled path equals stock Pyro (estimators A and B) on the same draws, for a panel of
user models, and falls back to stock Pyro, visibly, for programs it cannot record or that
change."""

import shutil
import warnings

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam
from torch import nn
from user_models import (
    GlobalNoiseModel,
    PyroExampleVAE,
    TinyConvVAE,
    TwoLatentModel,
    counting,
)

from pyro_aevb import AmortizedNormal, fit
from pyro_aevb.infer import ELBO, AnalyticKLError
from pyro_aevb.infer.elbo import make_elbo
from pyro_aevb.infer.objectives import CompiledELBOObjective, PyroELBOObjective
from pyro_aevb.infer.objectives.compiled import INDUCTOR_MIN_STEPS, elbo_loss_particle
from pyro_aevb.poutine import TrainingProgram


class AmortizedGuide(PyroModule):
    """A guide written as a ``PyroModule`` (as Pyro's autoguides are): a ``PyroModule``
    encoder, a constrained ``PyroParam``, the site in the data plate."""

    def __init__(self, d, k, site="z"):
        super().__init__()
        self.net = PyroModule[nn.Linear](d, 2 * k)
        self.floor = PyroParam(torch.tensor(0.05), constraint=constraints.positive)
        self.site = site

    def forward(self, x):
        mu, s = self.net(x.reshape(len(x), -1)).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample(
                self.site, dist.Normal(mu, nn.functional.softplus(s) + self.floor).to_event(1)
            )


class WithAmortizedGuide(nn.Module):
    """``TwoLatentModel``'s observation model with one latent and a PyroModule guide."""

    def __init__(self, d=5, k=2):
        super().__init__()
        self.W = nn.Parameter(0.3 * torch.randn(d, k))
        self.guide = AmortizedGuide(d, k)
        self.k = k

    def model(self, x):
        pyro.module("amortized_model", self, update_module_params=False)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.k), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T, 0.5).to_event(1), obs=x)


def _panel():
    torch.manual_seed(0)
    return {
        # Pyro's example VAE with a pyro.param in the guide (softplus MLPs, Bernoulli probs)
        "pyro-example": (
            lambda: PyroExampleVAE(z_dim=3, hidden_dim=16, temperature=True),
            lambda: (torch.rand(12, 784) < 0.3).double(),
        ),
        # two local latents, one of them constrained (LogNormal, positive)
        "two-latents": (TwoLatentModel, lambda: torch.randn(12, 5)),
        # a global latent outside the plate, with pyro.param's in the guide
        "global-latent": (GlobalNoiseModel, lambda: torch.randn(12, 6)),
        # image-shaped data (N, 1, 28, 28) through conv layers
        "image": (TinyConvVAE, lambda: (torch.rand(12, 1, 28, 28) < 0.3).double()),
        # a PyroModule guide (the shape of Pyro's autoguides and of pyro_aevb's)
        "pyromodule-guide": (WithAmortizedGuide, lambda: torch.randn(12, 5)),
    }


class WithAutoguide(nn.Module):
    """A panel model's ``model`` with its guide replaced by an autoguide built from it."""

    def __init__(self, base, autoguide_cls):
        super().__init__()
        self.base = base
        self.guide = autoguide_cls(base.model)

    def model(self, x):
        return self.base.model(x)


def _autoguide_cases():
    """AUTOGUIDE HOOK: one case per amortized autoguide of ``pyro_aevb.autoguide`` (issue 10),
    on two local sites one of them positive, once that package exists. The autoguides are
    ordinary Pyro guides (PyroModules): the compiled path needs nothing else for them."""
    try:
        from pyro_aevb import autoguide
    except ImportError:
        return {}
    names = ("AmortizedNormal", "AmortizedMultivariateNormal", "AmortizedIAF")
    classes = {name: getattr(autoguide, name) for name in names if hasattr(autoguide, name)}
    return {
        f"autoguide-{name}": (
            lambda cls=cls: WithAutoguide(TwoLatentModel(), cls),
            lambda: torch.randn(12, 5),
        )
        for name, cls in classes.items()
    }


PANEL = {**_panel(), **_autoguide_cases()}


def _programs(name, dtype=torch.float64):
    pyro.clear_param_store()
    build, make_x = PANEL[name]
    torch.manual_seed(1)
    module = build().to(dtype)
    x = make_x().to(dtype)
    guide = module.guide
    return module.model, guide, x


def _step(objective, x, seed):
    torch.manual_seed(seed)
    loss = objective.loss_and_grads(x)
    return loss.clone(), [None if p.grad is None else p.grad.clone() for p in objective.params]


# estimator B has no closed-form KL for a flow guide, nor for a full-covariance guide over
# two sites (a joint auxiliary draw): refused, tested with the autoguides
CASES = [
    (name, est, 1)
    for name in PANEL
    for est in ("A", "B")
    if not (est == "B" and ("IAF" in name or "MultivariateNormal" in name))
] + [
    ("pyro-example", "A", 2),
    ("two-latents", "B", 3),
]


@pytest.mark.parametrize("name, estimator, num_particles", CASES)
def test_losses_and_gradients_equal_stock_pyro_on_the_same_draws(name, estimator, num_particles):
    model, guide, x = _programs(name)
    program = TrainingProgram(model, guide, num_data=300)
    compiled = ELBO(estimator, num_particles).bind(program)
    stock = PyroELBOObjective(program, estimator, num_particles)
    assert isinstance(compiled, CompiledELBOObjective) and compiled.path == "compiled"
    compiled.setup(x)
    stock.setup(x)
    assert [id(p) for p in compiled.params] == [id(p) for p in stock.params]
    for seed in range(5):  # steps 1, 2 and 4 are checks, 3 and 5 pure replays
        loss_c, grads_c = _step(compiled, x, seed)
        loss_s, grads_s = _step(stock, x, seed)
        assert loss_c.shape == () and not loss_c.requires_grad
        torch.testing.assert_close(loss_c, loss_s, rtol=1e-12, atol=0)
        for gc, gs in zip(grads_c, grads_s, strict=True):
            assert (gc is None) == (gs is None)
            if gs is not None:
                torch.testing.assert_close(gc, gs, rtol=1e-12, atol=1e-12)
    assert compiled.path == "compiled" and compiled.num_checks == 3 and compiled.steps == 5
    assert compiled.engine == "replay" and "replay engine" in compiled.path_reason


@pytest.mark.parametrize("name", ["global-latent", "two-latents", "pyro-example"])
@pytest.mark.parametrize("estimator", ["A", "B"])
def test_the_replay_engine_is_bitwise_stock_pyro_in_float32(name, estimator):
    """Trace_ELBO sums its loss value as Python floats; the recording sums the same terms
    in float64 in the same order, so the float32 loss is Pyro's to the bit, as are the
    gradients (steps 3, 5, 6 and 7 are pure replays)."""
    model, guide, x = _programs(name, torch.float32)
    program = TrainingProgram(model, guide, num_data=300)
    compiled = ELBO(estimator, engine="replay").bind(program)
    stock = PyroELBOObjective(program, estimator)
    compiled.setup(x)
    stock.setup(x)
    for seed in range(7):
        loss, grads = _step(compiled, x, seed)
        loss_s, grads_s = _step(stock, x, seed)
        assert loss.dtype == torch.float32 and torch.equal(loss, loss_s), seed
        for g, gs in zip(grads, grads_s, strict=True):
            assert (g is None and gs is None) or torch.equal(g, gs)
    assert compiled.path == "compiled"


@pytest.mark.parametrize("estimator", ["A", "B"])
def test_elbo_loss_particle_is_pyros_loss(estimator):
    """The loss formed from the traces is the one Pyro's ELBO classes differentiate."""
    model, guide, x = _programs("two-latents")
    program = TrainingProgram(model, guide, num_data=300)
    elbo = make_elbo(estimator)
    torch.manual_seed(0)
    (traces,) = list(elbo._get_traces(program.model_n, program.guide_n, (x,), {}))
    ours = elbo_loss_particle(*traces, estimator)
    torch.manual_seed(0)
    theirs = elbo.differentiable_loss(program.model_n, program.guide_n, x)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)


def test_fit_on_the_compiled_path_follows_the_stock_run_exactly():
    x = (torch.rand(120, 784) < 0.2).float()
    kw = dict(batch_size=20, lr=0.01, optimizer="adam", eval_every=600, progress=False, seed=3)
    runs = {}
    for fast in ("auto", "off"):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = PyroExampleVAE(z_dim=3, hidden_dim=16, temperature=True)
        runs[fast] = (fit(vae, x, num_samples=1200, fast=fast, **kw), vae)
    (compiled, vae_c), (stock, vae_s) = runs["auto"], runs["off"]
    assert compiled.path == "compiled" and stock.path == "pyro"
    assert "not a pyro_aevb VAE" in compiled.path_reason
    assert [r["loss"] for r in compiled.history] == [r["loss"] for r in stock.history]
    for p, q in zip(vae_c.parameters(), vae_s.parameters(), strict=True):
        assert torch.equal(p, q)


# ------------------------------------------------------------------ fallback
class DataDependent(nn.Module):
    """Samples an extra site when the batch mean is large: Python reads a tensor value."""

    def __init__(self):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(3))

    def model(self, x):
        pyro.module("dd", self)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(self.loc.expand(len(x), 3), 1.0).to_event(1))
            if x.mean() > 0.0:
                z = z * 2
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("dd", self)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x, 1.0).to_event(1))


def test_data_dependent_control_flow_runs_on_stock_pyro_visibly():
    m = DataDependent()
    x = torch.randn(8, 3)
    program = TrainingProgram(m.model, m.guide, num_data=40)
    objective = ELBO("A").bind(program)
    with pytest.warns(UserWarning, match="read a tensor value in Python"):
        objective.setup(x)
    assert objective.path == "pyro" and "read a tensor value" in objective.path_reason
    stock = PyroELBOObjective(program, "A")
    stock.setup(x)
    assert torch.equal(_step(objective, x, 0)[0], _step(stock, x, 0)[0])
    strict = ELBO("A").bind(TrainingProgram(m.model, m.guide, num_data=40), fast="on")
    with pytest.raises(ValueError, match="fast='on'.*cannot be compiled"):
        strict.setup(x)


def _read_by_tolist(z, x):
    return z * 2 if x[:, 0].tolist()[0] > 0 else z  # no error from the tracer: a silent read


def _read_by_numpy(z, x):
    return z * 2 if float(x.numpy().sum()) > 0 else z


def _observed_by_mask(z, x):
    return z  # observed below through x != 0: the missing-data idiom, a data-dependent shape


def _read_by_nonzero(z, x):
    return z * torch.nonzero(x > 0).shape[0]


@pytest.mark.parametrize(
    "read, match",
    [
        (_read_by_tolist, "Tensor.tolist"),
        (_read_by_numpy, "Tensor.numpy"),
        (_observed_by_mask, "with a boolean mask"),
        (_read_by_nonzero, "aten.nonzero"),
    ],
)
def test_silent_value_reads_and_value_shaped_tensors_run_on_stock_pyro_visibly(read, match):
    """Reads the tracer does not stop at (.tolist(), .numpy()) and tensors whose shape depends
    on the data would bake the recording run's values into every later step."""

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 3), 1.0).to_event(1))
            loc = read(z, x)
            if read is not _observed_by_mask:
                pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)
        if read is _observed_by_mask:
            observed = x != 0
            pyro.sample("x", dist.Normal(loc[observed], 1.0).to_event(1), obs=x[observed])

    def guide(x):
        loc = pyro.param("loc", torch.zeros(3))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(loc + x, 1.0).to_event(1))

    pyro.clear_param_store()
    x = torch.randn(8, 3)
    # the observation outside the plate is right only on the whole data set (no N/M scale)
    num_data = len(x) if read is _observed_by_mask else 40
    objective = ELBO("A").bind(TrainingProgram(model, guide, num_data=num_data))
    with pytest.warns(UserWarning, match=match):
        objective.setup(x)
    assert objective.path == "pyro" and match in objective.path_reason
    strict = ELBO("A").bind(TrainingProgram(model, guide, num_data=num_data), fast="on")
    with pytest.raises(ValueError, match="fast='on'.*cannot be compiled"):
        strict.setup(x)


def _annealed_pair(cls):
    """``(module, x, compiled objective, stock objective)``, both set up, estimator A."""
    torch.manual_seed(0)
    m = cls().double()
    x = torch.randn(10, 3, dtype=torch.float64)
    program = TrainingProgram(m.model, m.guide, num_data=50)
    objective = ELBO("A").bind(program)
    stock = PyroELBOObjective(program, "A")
    objective.setup(x)
    stock.setup(x)
    return m, x, objective, stock


class BufferAnnealed(nn.Module):
    """KL annealing by a factor kept in a buffer (a 0-d tensor) and updated in place, and a
    prior built once, with validation on, outside the programs."""

    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(torch.randn(3, 2))
        self.enc = nn.Linear(3, 4)
        self.register_buffer("beta", torch.tensor(1.0))
        with pyro.validation_enabled(True):
            self.noise_prior = dist.LogNormal(0.0, 1.0)

    def model(self, x):
        pyro.module("buffer_annealed", self)
        noise = pyro.sample("noise", self.noise_prior)
        with pyro.plate("data", len(x)):
            with poutine.scale(scale=self.beta):
                z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T, noise).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("buffer_annealed", self)
        q = pyro.param("q_noise", torch.tensor(0.1))
        pyro.sample("noise", dist.LogNormal(q, 0.1))
        mu, s = self.enc(x).chunk(2, -1)
        with pyro.plate("data", len(x)):
            with poutine.scale(scale=self.beta):
                pyro.sample("z", dist.Normal(mu, s.exp()).to_event(1))


def test_a_buffer_annealing_factor_and_a_prebuilt_prior_stay_compiled_and_exact():
    """Nothing the user's Python reads: the factor's value is not read while recording (the
    recording reads the buffer at every run, so in-place updates are followed), and a prior
    made before recording with validation on does not check its samples there."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback
        m, x, objective, stock = _annealed_pair(BufferAnnealed)
        for seed in range(7):  # steps 3, 5, 6 and 7 are pure replays
            if seed == 4:
                m.beta.fill_(0.3)
            loss, grads = _step(objective, x, seed)
            loss_s, grads_s = _step(stock, x, seed)
            torch.testing.assert_close(loss, loss_s, rtol=1e-12, atol=0)
            for a, b in zip(grads, grads_s, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert objective.path == "compiled"


class Annealed(nn.Module):
    """KL annealing through Python state: ``beta`` scales the latent site, ``noise`` is a
    plain float read at every call; both may change between steps."""

    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(torch.randn(3, 2))
        self.enc = nn.Linear(3, 4)
        self.beta, self.noise = 1.0, 0.5

    def model(self, x):
        pyro.module("annealed", self)
        with pyro.plate("data", len(x)):
            with poutine.scale(scale=self.beta):
                z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T, self.noise).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("annealed", self)
        mu, s = self.enc(x).chunk(2, -1)
        with pyro.plate("data", len(x)):
            with poutine.scale(scale=self.beta):
                pyro.sample("z", dist.Normal(mu, s.exp()).to_event(1))


class Switchable(Annealed):
    """``Annealed`` with Python switches: an optional observed site, and a bias that only a
    flag puts into the likelihood (so it gets a gradient only then)."""

    def __init__(self):
        super().__init__()
        self.extra_site = False
        self.use_bias = False
        self._offset = 0.0  # a private attribute is state too
        self.bias = nn.Parameter(torch.zeros(3))
        self.dropout = nn.Dropout(0.5)

    def model(self, x):
        pyro.module("switchable", self)
        with pyro.plate("data", len(x)):
            with poutine.scale(scale=self.beta):
                z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 2), 1.0).to_event(1))
            loc = z @ self.W.T + (self.bias if self.use_bias else 0.0) + self._offset
            pyro.sample("x", dist.Normal(loc, self.noise).to_event(1), obs=x)
            if self.extra_site:
                pyro.sample("x2", dist.Normal(z.sum(-1), 1.0), obs=x[:, 0])

    def guide(self, x):
        pyro.module("switchable", self)
        mu, s = self.enc(x).chunk(2, -1)
        with pyro.plate("data", len(x)):
            with poutine.scale(scale=self.beta):
                pyro.sample("z", dist.Normal(mu, s.exp()).to_event(1))


def _freeze_W(m):
    m.W.requires_grad_(False)


def _replace_encoder(m):
    m.enc = nn.Linear(3, 4).double()


CHANGES = {
    "float attribute (structure)": (lambda m: setattr(m, "beta", 0.25), "Switchable.beta"),
    "float attribute (numbers)": (lambda m: setattr(m, "noise", 0.25), "Switchable.noise"),
    "flag adding a site": (lambda m: setattr(m, "extra_site", True), "Switchable.extra_site"),
    "flag adding a gradient": (lambda m: setattr(m, "use_bias", True), "without a gradient"),
    "private attribute": (lambda m: setattr(m, "_offset", 0.5), "Switchable._offset"),
    "requires_grad_(False)": (_freeze_W, "Switchable.parameters"),
    "replaced submodule": (_replace_encoder, "Switchable.parameters, buffers or submodules"),
}


def _assert_same_step(objective, stock, x, seed):
    loss, grads = _step(objective, x, seed)
    loss_s, grads_s = _step(stock, x, seed)
    torch.testing.assert_close(loss, loss_s, rtol=1e-12, atol=0)
    for a, b in zip(grads, grads_s, strict=True):
        assert (a is None) == (b is None)
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("change", list(CHANGES))
def test_python_state_changed_between_checks_makes_the_next_step_a_check(change):
    """Python state the recording holds (attributes, flags, requires_grad, submodules) is
    compared at every step: a change between two regular checks (here after step 4; the
    next regular check is step 8) makes the next step run on Pyro's traces and the programs
    are recorded anew (KL annealing by epoch stays compiled); a change again within
    RECORD_AGAIN_MIN_STEPS steps falls back to stock Pyro, visibly. Every step has the stock
    numbers."""
    apply, _ = CHANGES[change]
    torch.manual_seed(0)
    m, x, objective, stock = _annealed_pair(Switchable)
    for seed in range(4):
        _assert_same_step(objective, stock, x, seed)
    assert objective.path == "compiled" and objective.num_checks == 3
    apply(m)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="training on stock Pyro")  # no fallback
        for seed in range(4, 8):  # step 5: a check; 6: recorded anew; 7: a replay; 8: a check
            _assert_same_step(objective, stock, x, seed)
    assert objective.path == "compiled" and objective.num_recorded_again == 1
    assert objective.num_checks == 5
    m.noise = 0.3  # again, 4 steps later
    with pytest.warns(UserWarning, match="at step 9, after a change of Switchable.noise"):
        _assert_same_step(objective, stock, x, 8)
    assert objective.path == "pyro"
    _assert_same_step(objective, stock, x, 9)


def test_changes_are_named_when_they_fall_back():
    for change, (apply, match) in CHANGES.items():
        m, x, objective, _ = _annealed_pair(Switchable)
        objective._recorded_again_at = 0  # as if recorded anew just now: no second time
        for seed in range(4):
            _step(objective, x, seed)
        apply(m)
        with pytest.warns(UserWarning, match="at step 5"):
            _step(objective, x, 4)
        assert objective.path == "pyro" and match in objective.path_reason, change


def test_eval_mode_between_checks_is_noticed():
    """``module.eval()`` switches dropout off: the next step is a check and falls back."""

    class WithDropout(Switchable):
        def guide(self, x):
            pyro.module("switchable", self)
            mu, s = self.enc(self.dropout(x)).chunk(2, -1)
            with pyro.plate("data", len(x)):
                pyro.sample("z", dist.Normal(mu, s.exp()).to_event(1))

    m, x, objective, _ = _annealed_pair(WithDropout)
    for seed in range(4):
        _step(objective, x, seed)
    objective._recorded_again_at = 0  # no recording anew: the check falls back
    m.eval()
    with pytest.warns(UserWarning, match="Dropout.training"):
        _step(objective, x, 4)
    assert objective.path == "pyro"


def test_a_counter_changed_at_every_step_is_checked_three_times_then_not_watched():
    m, x, objective, stock = _annealed_pair(Switchable)
    for seed in range(4):
        _step(objective, x, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback
        for seed in range(4, 7):
            m.unrelated_counter = seed  # a user's bookkeeping, read by nothing
            _step(objective, x, seed)
    # steps 5, 6 and 7 were checks (three consecutive harmless changes: a counter)
    assert objective.path == "compiled" and objective.num_checks == 6
    for seed in (7, 8):  # step 8: a regular check; step 9: a replay
        m.unrelated_counter = 100 + seed
        _step(objective, x, seed)
    assert objective.num_checks == 7


def test_an_epoch_counter_that_changes_the_numbers_only_later_is_still_watched():
    """KL warm-up by epoch: the first change of the epoch leaves the numbers equal (still
    warming up); the later one that switches beta on must not replay the old recording."""

    class WarmUp(Annealed):
        def __init__(self):
            super().__init__()
            self.epoch = 0

        def model(self, x):
            self.beta = 0.01 if self.epoch < 2 else 1.0
            super().model(x)

        def guide(self, x):
            self.beta = 0.01 if self.epoch < 2 else 1.0
            super().guide(x)

    m, x, objective, stock = _annealed_pair(WarmUp)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="training on stock Pyro")  # no fallback
        for seed in range(120):
            m.epoch = seed // 60  # epochs of 60 steps: 0, 1 (beta unchanged)
            _assert_same_step(objective, stock, x, seed)
        for seed in range(120, 130):
            m.epoch = 2  # beta switches on between regular checks
            _assert_same_step(objective, stock, x, seed)
    assert objective.path == "compiled" and objective.num_recorded_again == 1


def test_a_batchnorm_momentum_changed_between_checks_updates_the_statistics_as_stock():
    """A momentum is read in Python and changes no loss or gradient, only the running
    statistics: the check compares the buffers too, and the programs are recorded anew."""
    import copy

    class Normed(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Linear(8, 4))
            self.W = nn.Parameter(0.3 * torch.randn(3, 2))

        def model(self, x):
            pyro.module(self.pname, self)
            with pyro.plate("data", len(x)):
                z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 2), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(z @ self.W.T, 0.5).to_event(1), obs=x)

        def guide(self, x):
            pyro.module(self.pname, self)
            mu, s = self.enc(x).chunk(2, -1)
            with pyro.plate("data", len(x)):
                pyro.sample("z", dist.Normal(mu, s.exp()).to_event(1))

    torch.manual_seed(0)
    pyro.clear_param_store()
    mc = Normed().double()
    ms = copy.deepcopy(mc)
    mc.pname, ms.pname = "bn_compiled", "bn_stock"
    xs = [torch.randn(10, 3, dtype=torch.float64) + i for i in range(12)]
    compiled = ELBO("A").bind(TrainingProgram(mc.model, mc.guide, num_data=50))
    stock = PyroELBOObjective(TrainingProgram(ms.model, ms.guide, num_data=50), "A")
    compiled.setup(xs[0])
    stock.setup(xs[0])
    for seed in range(12):
        if seed == 5:  # between the checks of steps 4 and 8
            mc.enc[1].momentum = ms.enc[1].momentum = 0.9
        _step(compiled, xs[seed], seed)
        _step(stock, xs[seed], seed)
        for name in ("running_mean", "running_var"):
            torch.testing.assert_close(
                getattr(mc.enc[1], name), getattr(ms.enc[1], name), rtol=1e-12, atol=0
            )
    assert compiled.path == "compiled" and compiled.num_recorded_again == 1


def test_a_program_drawing_from_pythons_or_numpys_rng_runs_on_stock_pyro():
    import random

    import numpy as np

    class Coin(Annealed):
        def model(self, x):
            # a Python draw deciding a branch: a recording would freeze the branch
            self.noise = 0.5 if random.random() < 0.5 else 2.0
            super().model(x)

    class NumpyCoin(Annealed):
        def model(self, x):
            self.noise = 0.5 if np.random.rand() < 0.5 else 2.0  # noqa: NPY002
            super().model(x)

    for cls, name in ((Coin, "Python"), (NumpyCoin, "NumPy")):
        random.seed(0)
        np.random.seed(0)  # noqa: NPY002
        with pytest.warns(UserWarning, match=f"drew from {name}'s random number generator"):
            m, x, objective, _ = _annealed_pair(cls)
        assert objective.path == "pyro"


@pytest.mark.parametrize("fast", ["auto", "off"])
def test_a_pyro_param_created_after_training_started_is_an_error_not_left_untrained(fast):
    """Pyro's SVI would start training it; an optimizer built on the first minibatch's
    parameters would leave it at its initial value: an error naming it."""

    class Lazy(Annealed):
        def __init__(self):
            super().__init__()
            self.with_bias = False

        def model(self, x):
            pyro.module("annealed", self)
            bias = pyro.param("out_bias", torch.zeros(3, dtype=x.dtype)) if self.with_bias else 0
            with pyro.plate("data", len(x)):
                z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 2), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(z @ self.W.T + bias, 0.5).to_event(1), obs=x)

    pyro.clear_param_store()
    torch.manual_seed(0)
    m = Lazy().double()
    x = torch.randn(40, 3, dtype=torch.float64)

    def switch_on(trainer, record):
        m.with_bias = True

    with pytest.raises(ValueError, match="param site 'out_bias' holds a tensor that was not"):
        fit(
            m,
            x,
            batch_size=10,
            num_samples=200,
            eval_every=40,
            fast=fast,
            progress=False,
            callback=switch_on,
            seed=0,
        )


@pytest.mark.parametrize("fast", ["auto", "off"])
def test_a_parameter_unfrozen_mid_run_is_trained(fast):
    torch.manual_seed(0)
    pyro.clear_param_store()
    m = Annealed().double()
    m.W.requires_grad_(False)
    x = torch.randn(40, 3, dtype=torch.float64)
    at_unfreeze = {}

    def unfreeze(trainer, record):
        if not at_unfreeze:
            m.W.requires_grad_(True)
            at_unfreeze["W"] = m.W.detach().clone()

    res = fit(
        m,
        x,
        batch_size=10,
        num_samples=200,
        eval_every=40,
        fast=fast,
        progress=False,
        callback=unfreeze,
        seed=0,
    )
    assert res.path == ("compiled" if fast == "auto" else "pyro")
    assert not torch.equal(m.W.detach(), at_unfreeze["W"])


_NOISE = 0.5  # a global read by the plain-function model below


def test_a_global_variable_of_a_plain_function_program_is_watched():
    torch.manual_seed(0)
    lin = nn.Linear(3, 4).double()
    W = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    x = torch.randn(10, 3, dtype=torch.float64)

    def model(x):
        pyro.param("W_global", W)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T, _NOISE).to_event(1), obs=x)

    def guide(x):
        pyro.module("lin_global", lin)
        mu, s = lin(x).chunk(2, -1)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(mu, s.exp()).to_event(1))

    pyro.clear_param_store()
    program = TrainingProgram(model, guide, num_data=50)
    objective, stock = ELBO("A").bind(program), PyroELBOObjective(program, "A")
    objective.setup(x)
    stock.setup(x)
    for seed in range(4):
        _step(objective, x, seed)
    globals()["_NOISE"] = 2.0
    try:
        for seed in (4, 5, 6):
            _assert_same_step(objective, stock, x, seed)
        assert objective.path == "compiled" and objective.num_recorded_again == 1
        objective._recorded_again_at = objective.steps  # no second recording: falls back
        globals()["_NOISE"] = 1.0
        with pytest.warns(UserWarning, match="global '_NOISE' of model"):
            _step(objective, x, 7)
    finally:
        globals()["_NOISE"] = 0.5
    assert objective.path == "pyro"


class ReadsBuffer(Annealed):
    """Reads an annealing factor held in a buffer as a Python number (``float(buffer)``)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("factor", torch.tensor(1.0))

    def model(self, x):
        pyro.module("reads_buffer", self)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T, float(self.factor)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("reads_buffer", self)
        mu, s = self.enc(x).chunk(2, -1)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(mu, s.exp()).to_event(1))


@pytest.mark.parametrize("how", ["in place", "through .data"])
def test_a_tensor_value_read_in_python_and_updated_in_place_is_noticed(how):
    m, x, objective, stock = _annealed_pair(ReadsBuffer)
    for seed in range(4):
        _step(objective, x, seed)
    for seed in range(4):
        _step(stock, x, seed)
    (m.factor if how == "in place" else m.factor.data).fill_(3.0)
    for seed in (4, 5, 6):  # a check, then recorded anew, then a replay
        _assert_same_step(objective, stock, x, seed)
    assert objective.path == "compiled" and objective.num_recorded_again == 1
    objective._recorded_again_at = objective.steps  # no second recording: falls back
    m.factor.fill_(2.0)
    with pytest.warns(UserWarning, match="a tensor the programs read in Python"):
        _assert_same_step(objective, stock, x, 7)
    assert objective.path == "pyro"


def test_a_model_drawing_from_its_own_generator_runs_on_stock_pyro():
    class OwnGenerator(Annealed):
        def __init__(self):
            super().__init__()
            self.gen = torch.Generator().manual_seed(0)

        def model(self, x):
            pyro.module("own_gen", self)
            noise = torch.randn(x.shape, generator=self.gen, dtype=x.dtype)
            with pyro.plate("data", len(x)):
                z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 2), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(z @ self.W.T + 0.01 * noise, 1.0).to_event(1), obs=x)

    state = None
    with pytest.warns(UserWarning, match="torch.Generator"):
        m, x, objective, _ = _annealed_pair(OwnGenerator)
        state = m.gen.get_state()
    assert objective.path == "pyro"
    # refused before drawing: the recording did not advance the user's generator
    assert torch.equal(m.gen.get_state(), state)


def test_a_score_function_guide_site_runs_on_stock_pyro():
    def model(x):
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Bernoulli(torch.full((len(x),), 0.3)))
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    def guide(x):
        p = pyro.param("p", torch.full((len(x),), 0.5), constraint=constraints.unit_interval)
        with pyro.plate("data", len(x)):
            pyro.sample("c", dist.Bernoulli(p))

    pyro.clear_param_store()
    objective = ELBO("A").bind(TrainingProgram(model, guide, num_data=10))
    with pytest.warns(UserWarning, match="not reparameterised"):
        objective.setup(torch.randn(10))
    assert objective.path == "pyro"


def test_an_estimator_b_refusal_is_raised_at_setup_not_reported_as_a_fallback():
    """A guide with no closed-form KL (the global sigma is set from an auxiliary site by Pyro's
    AutoNormal inside the autoguide) under estimator B: the user's choice is wrong on every
    path, so setup raises AnalyticKLError naming the site, without first warning that it falls
    back to stock Pyro."""
    m = GlobalNoiseModel()
    guide = AmortizedNormal(m.model, hidden_dims=(4,))
    pyro.clear_param_store()
    objective = ELBO("B").bind(TrainingProgram(m.model, guide, num_data=8))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with pytest.raises(AnalyticKLError, match="sigma_unconstrained"):
            objective.setup(torch.randn(8, 6))
    assert not objective.fell_back


def test_checkpoint_state_round_trip_and_stock_resume():
    model, guide, x = _programs("two-latents")
    program = TrainingProgram(model, guide, num_data=300)
    objective = ELBO("B").bind(program)
    objective.plan(20)
    objective.setup(x)
    for seed in range(3):
        _step(objective, x, seed)
    state = objective.state_dict()
    assert state == {"compiled_engine": 1, "compiled_fell_back": 0, "compiled_steps": 3}
    again = ELBO("B").bind(program)
    again.setup(x)
    again.load_state_dict(state)
    assert again.engine == "replay" and again.steps == 3
    # the next step (4) is a check in both
    _step(objective, x, 9)
    _step(again, x, 9)
    assert objective.num_checks == 3 and again.num_checks == 1
    stock = PyroELBOObjective(program, "B")
    stock.load_state_dict(state)  # a compiled run's checkpoint resumes on stock Pyro
    with pytest.raises(ValueError, match="unknown state keys"):
        again.load_state_dict({"other": 1})


def test_engine_auto_compiles_only_long_runs():
    model, guide, x = _programs("two-latents")
    short = ELBO("B").bind(TrainingProgram(model, guide, num_data=300))
    short.plan(INDUCTOR_MIN_STEPS - 1)
    short.setup(x)
    _step(short, x, 0)
    assert short.engine == "replay"
    long = ELBO("B").bind(TrainingProgram(model, guide, num_data=300))
    long.plan(INDUCTOR_MIN_STEPS)
    long._resolve_engine()
    assert long.engine == "inductor"
    assert ELBO("B", engine="replay").settings()["engine"] == "replay"
    assert "engine" not in ELBO("B").settings()
    with pytest.raises(ValueError, match="engine"):
        ELBO("B", engine="jit")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cc") is None,
                    reason="inductor needs a C++ compiler")  # fmt: skip
def test_inductor_engine_equals_stock_pyro_to_rounding():
    """The engine long runs use: fused kernels, same draws (fallback_random), float32."""
    pyro.clear_param_store()
    torch.manual_seed(1)
    vae = PyroExampleVAE(z_dim=3, hidden_dim=16, temperature=True)
    x = (torch.rand(12, 784) < 0.3).float()
    program = TrainingProgram(vae.model, vae.guide, num_data=300)
    compiled = ELBO("A", engine="inductor").bind(program)
    stock = PyroELBOObjective(program, "A")
    compiled.setup(x)
    stock.setup(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback to replay or stock
        for seed in range(3):
            loss_c, grads_c = _step(compiled, x, seed)
            loss_s, grads_s = _step(stock, x, seed)
            torch.testing.assert_close(loss_c, loss_s, rtol=1e-5, atol=0)
            for gc, gs in zip(grads_c, grads_s, strict=True):
                torch.testing.assert_close(gc, gs, rtol=1e-4, atol=1e-4 * float(gs.abs().max()))
    rec = next(iter(compiled._recordings.values()))
    assert compiled.engine == "inductor" and rec.fn.engine == "inductor"
    assert compiled.path == "compiled" and compiled.num_checks == 2


class BatchNormEncoderVAE(nn.Module):
    """A guide whose encoder has a BatchNorm layer: its running statistics are updated in
    place at every run of the guide."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 4))
        self.dec = nn.Linear(2, 5)

    def model(self, x):
        pyro.module("bn_vae", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            probs = torch.sigmoid(self.dec(z))
            pyro.sample("x", dist.Bernoulli(probs=probs).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("bn_vae", self)
        h = self.enc(x)
        with pyro.plate("data", x.shape[0]):
            scale = nn.functional.softplus(h[:, 2:])
            pyro.sample("z", dist.Normal(h[:, :2], scale).to_event(1))


def _batchnorm_run(engine: str, plain_functions: bool = False):
    """Setup and 5 steps (checks at 1, 2 and 4) of :class:`BatchNormEncoderVAE` on stock Pyro
    (``engine="stock"``) or the compiled path, no fallback allowed: ``(objective, steps,
    BatchNorm state)``. With ``plain_functions`` the programs are functions that reach the
    module only through ``pyro.module`` (no owner module to find)."""
    x = (torch.rand(10, 5, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = BatchNormEncoderVAE()
    if plain_functions:
        program = TrainingProgram(lambda x: vae.model(x), lambda x: vae.guide(x), num_data=100)
        assert program.modules == []
    else:
        program = TrainingProgram(vae.model, vae.guide, num_data=100)
    if engine == "stock":
        objective = PyroELBOObjective(program, "B")
    else:
        objective = ELBO("B", engine=engine).bind(program)
    objective.setup(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback
        steps = [_step(objective, x, seed) for seed in range(5)]
    if engine != "stock":
        assert objective.path == "compiled" and objective.num_checks == 3
    return objective, steps, {k: v.clone() for k, v in vae.enc[1].state_dict().items()}


@pytest.mark.parametrize("plain_functions", [False, True], ids=["methods", "plain-functions"])
def test_recording_and_checks_leave_buffers_as_stock_pyro_does(plain_functions):
    """Every training step updates BatchNorm's running statistics once, as a stock Pyro loop
    does: the set-up traces, the recording run and the checks' replays beside the traced step
    leave them alone, also when the module is reached only through ``pyro.module``."""
    _, stock_steps, stock_state = _batchnorm_run("stock", plain_functions)
    _, steps, state = _batchnorm_run("replay", plain_functions)
    assert int(stock_state["num_batches_tracked"]) == int(state["num_batches_tracked"]) == 5
    for key, value in stock_state.items():
        assert torch.equal(state[key], value), key
    for (loss, grads), (loss_s, grads_s) in zip(steps, stock_steps, strict=True):
        assert torch.equal(loss, loss_s)
        assert all(torch.equal(g, gs) for g, gs in zip(grads, grads_s, strict=True))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cc") is None,
                    reason="inductor needs a C++ compiler")  # fmt: skip
def test_inductor_keeps_a_batchnorm_model_whose_exact_zero_gradients_round_differently():
    """BatchNorm makes the bias before it irrelevant: its gradient is rounding noise, which
    fused kernels round differently. The checks judge it on the scale of the other gradients,
    so the run stays compiled, and equals stock Pyro to rounding, buffers included."""
    _, stock_steps, stock_state = _batchnorm_run("stock")
    _, steps, state = _batchnorm_run("inductor")
    for (loss, grads), (loss_s, grads_s) in zip(steps, stock_steps, strict=True):
        torch.testing.assert_close(loss, loss_s, rtol=1e-5, atol=0)
        top = max(float(g.abs().max()) for g in grads_s)
        for g, gs in zip(grads, grads_s, strict=True):
            torch.testing.assert_close(g, gs, rtol=1e-4, atol=1e-5 * top)
    for key, value in stock_state.items():
        torch.testing.assert_close(state[key], value)


def test_a_recording_that_fails_where_stock_pyro_runs_falls_back_visibly():
    model, guide, x = _programs("two-latents")
    program = TrainingProgram(model, guide, num_data=300)
    compiled, stock = ELBO("B").bind(program), PyroELBOObjective(program, "B")
    compiled.setup(x)
    stock.setup(x)
    for seed in range(2):
        _step(compiled, x, seed)
        _step(stock, x, seed)
    rec = next(iter(compiled._recordings.values()))

    def broken(*inputs):
        raise RuntimeError("shape mismatch in a recorded view")

    rec.fn._run = broken
    with pytest.warns(UserWarning, match="step 3 the recording failed.*shape mismatch"):
        loss, grads = _step(compiled, x, 2)  # step 3: not a check
    loss_s, grads_s = _step(stock, x, 2)
    assert compiled.path == "pyro" and "recording failed" in compiled.path_reason
    torch.testing.assert_close(loss, loss_s, rtol=1e-12, atol=0)
    for a, b in zip(grads, grads_s, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_programs_that_change_their_own_python_state_run_on_stock_pyro():
    """A counter the model increments while it runs (an annealing schedule kept by the
    program itself) would stand still in replays: refused at recording, visibly."""

    with pytest.warns(UserWarning, match=r"change their own Python state .*Counting.calls"):
        m, x, objective, stock = _annealed_pair(counting(Annealed))
    assert objective.path == "pyro"
    loss, _ = _step(objective, x, 0)
    loss_s, _ = _step(stock, x, 0)
    torch.testing.assert_close(loss, loss_s, rtol=1e-12, atol=0)


def test_an_attribute_the_programs_set_from_their_input_is_not_a_counter():
    """``self.batch_size = len(x)`` changes between minibatch shapes (a smaller last batch),
    but a second run on the same minibatch leaves it: recorded, not refused."""

    class SetsBatchSize(Annealed):
        def model(self, x):
            self.batch_size = len(x)
            super().model(x)

    m, x, objective, stock = _annealed_pair(SetsBatchSize)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="training on stock Pyro")
        for seed, rows in enumerate([10, 10, 4, 10, 4, 10]):
            _assert_same_step(objective, stock, x[:rows], seed)
    assert objective.path == "compiled"


def test_kl_annealing_by_epoch_through_fit_stays_compiled_and_equals_stock():
    """A callback that raises ``beta`` after every epoch: the programs are recorded anew at
    each change, and the run equals the stock-Pyro run."""
    states = {}
    for fast in ("auto", "off"):
        pyro.clear_param_store()
        torch.manual_seed(0)
        m = Annealed().double()
        m.beta = 0.25
        x = torch.randn(600, 3, dtype=torch.float64)  # epochs of 60 steps

        def anneal(trainer, record, m=m):
            m.beta = min(1.0, m.beta + 0.25)

        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="training on stock Pyro")
            result = fit(
                m,
                x,
                batch_size=10,
                num_samples=3 * 600,
                estimator="A",
                fast=fast,
                progress=False,
                eval_every=600,
                checkpoint_every_seconds=None,
                callback=anneal,
                seed=0,
            )
        assert result.path == ("compiled" if fast == "auto" else "pyro"), result.path_reason
        states[fast] = {k: v.clone() for k, v in m.state_dict().items()}
    for name, value in states["off"].items():
        torch.testing.assert_close(states["auto"][name], value, rtol=1e-9, atol=1e-12)


def test_an_attribute_set_from_the_input_does_not_make_the_last_minibatch_a_check():
    """``self.n = len(x)`` in the model: every run sets it, a replay does not need it, so a
    smaller last minibatch at the end of each epoch is not a reason to check."""

    class Sized(Annealed):
        def model(self, x):
            self.n = x.shape[0]
            super().model(x)

    torch.manual_seed(0)
    m = Sized().double()
    program = TrainingProgram(m.model, m.guide, num_data=50)
    objective = ELBO("A").bind(program)
    objective.setup(torch.randn(20, 3, dtype=torch.float64))
    for step in range(30):  # epochs of 20 + 20 + 10 rows
        rows = 10 if step % 3 == 2 else 20
        _step(objective, torch.randn(rows, 3, dtype=torch.float64), step)
    # steps 1, 2, 4, 8, 16 and the first use of each shape's recording
    assert objective.path == "compiled" and objective.num_checks <= 7
