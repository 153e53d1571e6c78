"""The amortized guides' plates under stock Pyro: the data plate stands for as many datapoints
as the model's and covers the rows the model uses (its own subsample indices kept, or drawn by
the guide as a Pyro guide would), plates shared by several sites, bounds per coordinate, and
the guide following its networks' dtype."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_aevb.autoguide import AmortizedIAF, AmortizedMultivariateNormal, AmortizedNormal

FAMILIES = [AmortizedNormal, AmortizedMultivariateNormal, AmortizedIAF]


def _traces(model, guide, *args, **kwargs):
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return guide_trace, model_trace


@pytest.mark.parametrize("family", FAMILIES)
def test_fit_gives_the_guide_num_data_when_the_model_has_another_default(family):
    """``model(x, num_data=60000)`` trained on N = 200 rows: fit calls the model with
    num_data=200 and the guide (which passes its arguments to the model) too, so both data
    plates are scaled by N / M = 10, not the guide's by the model's default 60000 / M."""
    from pyro_aevb import fit
    from pyro_aevb.poutine import TrainingProgram

    def model(x, num_data=60000):
        n = x.shape[0]
        with pyro.plate("data", num_data, subsample=torch.arange(n)):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            loc = z.sum(-1, keepdim=True).expand(n, 3)
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    pyro.clear_param_store()
    torch.manual_seed(0)
    x = torch.randn(200, 3)
    guide = family(model, hidden_dims=(4,))
    program = TrainingProgram(model, guide, num_data=200)
    guide_trace, model_trace = _traces(program.model_n, program.guide_n, x[:20])
    assert guide_trace.nodes["z"]["scale"] == model_trace.nodes["z"]["scale"] == 10.0
    result = fit(model, x, guide=guide, batch_size=20, epochs=1, progress=False, estimator="A")
    assert result.samples == 200


@pytest.mark.parametrize("family", FAMILIES)
def test_the_model_keeps_the_subsample_indices_it_is_given(family):
    """pyro.plate("data", N, subsample=idx) over the minibatch x = X[idx]: under the guide the
    model still sees idx (a per-datapoint covariate read with them stays on its rows), and
    both programs are scaled by N / M."""
    N, covariate = 50, torch.arange(50.0)

    def model(x, idx):
        with pyro.plate("data", N, subsample=idx) as rows:
            z = pyro.sample("z", dist.Normal(torch.zeros(len(rows), 2), 1.0).to_event(1))
            loc = z.sum(-1) + covariate[rows]
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x[:, 0])

    pyro.clear_param_store()
    idx = torch.tensor([40, 7, 33, 21])
    x = (covariate[idx] + 0.1).unsqueeze(-1)
    guide = family(model, hidden_dims=(4,))
    guide_trace, model_trace = _traces(model, guide, x, idx)
    assert torch.equal(model_trace.nodes["data"]["value"], idx)
    assert model_trace.nodes["x"]["scale"] == N / 4
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and not name == "data":
            assert site["scale"] == N / 4, name


def test_a_model_drawing_its_minibatch_from_x_gets_a_guide_encoding_those_rows():
    """pyro.plate("data", len(x), subsample_size=M) with x all N rows (Pyro's SVI part II
    pattern): the guide draws the M rows, encodes x at them, and the model gets the same rows
    by replay; both are scaled by N / M."""
    N, M = 30, 6

    def model(x):
        with pyro.plate("data", len(x), subsample_size=M) as rows:
            z = pyro.sample("z", dist.Normal(torch.zeros(M, 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1), 1.0), obs=x[rows, 0])

    pyro.clear_param_store()
    torch.manual_seed(0)
    x = torch.randn(N, 3)
    guide = AmortizedNormal(model, hidden_dims=(4,))
    guide_trace, model_trace = _traces(model, guide, x)
    rows = guide_trace.nodes["data"]["value"]
    assert rows.shape == (M,) and torch.equal(model_trace.nodes["data"]["value"], rows)
    loc, _ = guide.encode(x[rows])["z"]
    assert torch.allclose(guide_trace.nodes["z"]["fn"].base_dist.loc, loc)
    assert guide_trace.nodes["z"]["scale"] == model_trace.nodes["z"]["scale"] == N / M
    # stock SVI trains it
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.Trace_ELBO())
    assert all(torch.isfinite(torch.tensor(svi.step(x))) for _ in range(3))


def test_the_full_size_follows_num_data_on_every_call():
    """A guide first called with num_data=1000 (svi.step(x, num_data=N)) and then without it
    (svi.evaluate_loss(x)): its plate follows the call, as the model's does, and with the
    exact posterior the ELBO is -log p(x) exactly."""
    sigma = 0.5

    def model(x, num_data=None):
        n = x.shape[0]
        with pyro.plate("data", num_data or n, subsample=torch.arange(n)):
            z = pyro.sample("z", dist.Normal(torch.zeros(n), 1.0))
            pyro.sample("x", dist.Normal(z, sigma), obs=x[:, 0])

    pyro.clear_param_store()
    x = torch.randn(10, 1)
    guide = AmortizedNormal(model, hidden_dims=())
    guide(x, num_data=1000)
    # the exact posterior N(x / (1 + sigma^2), sigma^2 / (1 + sigma^2))
    head = guide.nets["heads"][0]
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1 / (1 + sigma**2)], [0.0]]))
        head.bias.copy_(torch.tensor([0.0, torch.log(torch.tensor(sigma**2 / (1 + sigma**2)))]))
    exact = -dist.Normal(0.0, (1 + sigma**2) ** 0.5).log_prob(x[:, 0]).sum()
    loss = pyro.infer.Trace_ELBO(num_particles=3).loss
    assert loss(model, guide, x) == pytest.approx(float(exact), rel=1e-5)
    assert loss(model, guide, x, num_data=1000) == pytest.approx(100 * float(exact), rel=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("global_guide", ["normal", "delta"])
def test_sites_sharing_an_inner_plate_and_a_global_in_it(family, global_guide):
    """Two local latents in one feature plate, and a global latent in that plate too (one
    plate object, Pyro's reuse idiom): one plate per call in the guide, the global guide's
    own where it made it."""

    def model(x):
        feat = pyro.plate("feat", 3, dim=-1)
        with feat:
            mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0], dim=-2), feat:
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            w = pyro.sample("w", dist.LogNormal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z * w, 1.0), obs=x)

    pyro.clear_param_store()
    x = torch.randn(5, 3)
    guide = family(model, hidden_dims=(4,), global_guide=global_guide)
    guide_trace, model_trace = _traces(model, guide, x)
    assert guide_trace.nodes["z"]["value"].shape == (5, 3)
    assert bool((guide_trace.nodes["w"]["value"] > 0).all())
    assert torch.isfinite(torch.tensor(pyro.infer.Trace_ELBO().loss(model, guide, x)))


@pytest.mark.parametrize("family", FAMILIES)
def test_bounds_per_coordinate_the_same_for_every_row(family):
    """Uniform(lo, hi) with a bound per coordinate (and the same expanded over the rows): the
    guide's draws keep to each coordinate's interval, whatever the number of rows."""
    lo, hi = torch.tensor([0.0, -1.0, 10.0]), torch.tensor([1.0, 1.0, 20.0])

    def model(x):
        n = x.shape[0]
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Uniform(lo.expand(n, 3), hi.expand(n, 3)).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1), 1.0), obs=x[:, 0])

    pyro.clear_param_store()
    guide = family(model, hidden_dims=(4,))
    guide(torch.randn(4, 2))
    for n in (1, 7):
        x = torch.randn(n, 2)
        z = guide(x)["z"]
        assert z.shape == (n, 3)
        assert bool(((z > lo) & (z < hi)).all())
        assert torch.isfinite(torch.tensor(pyro.infer.Trace_ELBO().loss(model, guide, x)))


def test_a_guide_converted_to_float64_computes_in_float64():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            loc = torch.zeros(x.shape[0], 2, dtype=x.dtype)
            z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)

    pyro.clear_param_store()
    guide = AmortizedNormal(model, hidden_dims=(4,))
    guide(torch.randn(5, 1))
    guide.double()
    z = guide(torch.randn(5, 1, dtype=torch.float64))["z"]
    assert z.dtype == torch.float64
    assert guide.get_extra_state()["dtype"] == "float64"


def test_plates_the_guide_cannot_serve_are_named():
    def wrong_dim(x):  # the plate over x's columns, not its rows
        with pyro.plate("data", x.shape[1]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[1]), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[0])

    pyro.clear_param_store()
    with pytest.raises(ValueError, match=r"data plate 'data' has 7 rows .* x has 3 rows"):
        AmortizedNormal(wrong_dim)(torch.randn(3, 7))

    def learnt_bound(x):
        ub = pyro.param("ub", torch.tensor(2.0), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Uniform(0.0, ub))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[:, 0])

    pyro.clear_param_store()
    with pytest.raises(ValueError, match=r"site 'z' has a support whose bounds follow a param"):
        AmortizedNormal(learnt_bound)(torch.randn(3, 1))

    def wishart(x):
        with pyro.plate("data", x.shape[0]):
            s = pyro.sample("S", dist.Wishart(torch.tensor(4.0), torch.eye(2)))
            pyro.sample("x", dist.Normal(s.diagonal(dim1=-2, dim2=-1), 1.0).to_event(1), obs=x)

    pyro.clear_param_store()
    with pytest.raises(ValueError, match=r"site 'S' has support .* no bijection"):
        AmortizedNormal(wishart)(torch.randn(3, 2))

    with pytest.raises(ValueError, match=r"hidden_dims and activation .* would be ignored"):
        AmortizedNormal(wishart, encoder=torch.nn.Linear(2, 4), hidden_dims=(64,))


def test_whether_the_model_subsamples_is_read_for_each_kind_of_call():
    """A guide first called without the model's indices (no subsampling), later with them;
    and one set up on few rows (or loaded into a fresh guide) for a model whose
    subsample_size is min(10, len(x)): each kind of call is read from the model, so the
    model keeps its rows and both programs are scaled alike."""
    N = 50

    def model(x, idx=None):
        with pyro.plate("data", len(x), subsample=idx) as rows:
            z = pyro.sample("z", dist.Normal(torch.zeros(len(rows)), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[rows, 0])

    pyro.clear_param_store()
    x, idx = torch.randn(N, 2), torch.tensor([3, 7, 11, 20, 41])
    guide = AmortizedNormal(model, hidden_dims=(4,))
    guide(x)
    guide_trace, model_trace = _traces(model, guide, x, idx)
    assert torch.equal(model_trace.nodes["data"]["value"], idx)
    assert guide_trace.nodes["z"]["scale"] == model_trace.nodes["z"]["scale"] == N / 5
    guide_trace, model_trace = _traces(model, guide, x)  # and back to all rows
    assert guide_trace.nodes["z"]["value"].shape == (N,) and model_trace.nodes["z"]["scale"] == 1

    def capped(x):
        with pyro.plate("data", len(x), subsample_size=min(10, len(x))) as rows:
            z = pyro.sample("z", dist.Normal(torch.zeros(len(rows)), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[rows, 0])

    pyro.clear_param_store()
    small = AmortizedNormal(capped, hidden_dims=(4,))
    small(torch.randn(5, 2))
    fresh = AmortizedNormal(capped, hidden_dims=(4,))
    fresh.load_state_dict(small.state_dict())
    for guide in (small, fresh):
        guide_trace, model_trace = _traces(capped, guide, x)
        assert torch.equal(model_trace.nodes["data"]["value"], guide_trace.nodes["data"]["value"])
        assert guide_trace.nodes["z"]["scale"] == model_trace.nodes["z"]["scale"] == N / 10
