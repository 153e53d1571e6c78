"""A model or option an amortized guide cannot serve is an error that names the site or the
argument and says what to do."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from marginal_helpers import PPCA
from user_models import GlobalNoiseModel, TwoLatentModel, bounded_by_data, bounded_by_latent

from pyro_aevb import WakeSleep, fit
from pyro_aevb.autoguide import (
    AmortizedIAF,
    AmortizedMultivariateNormal,
    AmortizedNormal,
    build_guide,
)

X = torch.randn(6, 5, dtype=torch.float64)


def _call(model, x=X, **options):
    return AmortizedNormal(model, **options)(x)


def test_models_an_amortized_guide_cannot_serve():
    def no_local(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0).expand([x.shape[0], 5]).to_event(1), obs=x)

    with pytest.raises(ValueError, match=r"no latent site inside the plate 'data'.*\['mu'\]"):
        _call(no_local)

    def discrete(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(c.unsqueeze(-1), 1.0).expand([6, 5]).to_event(1), obs=x)

    with pytest.raises(ValueError, match=r"site 'c' is discrete \(Bernoulli\).*hide=\['c'\]"):
        _call(discrete)

    def sequential(x):
        with pyro.plate("data", x.shape[0]):
            for j in pyro.plate("features", 2):
                pyro.sample(f"z{j}", dist.Normal(torch.zeros(x.shape[0]), 1.0))

    with pytest.raises(ValueError, match=r"'z0' is inside the sequential plate 'features'"):
        _call(sequential)

    def sequential_data(x):
        for i in pyro.plate("data", x.shape[0]):
            pyro.sample(f"z_{i}", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    with pytest.raises(ValueError, match=r"'z_0' is inside the data plate 'data' used as a Py"):
        _call(sequential_data)

    with pytest.raises(ValueError, match=r"plate named 'batch'"):
        _call(PPCA().model, plate_name="batch")
    noise = GlobalNoiseModel()
    with pytest.raises(ValueError, match=r"global latent site\(s\) \['sigma'\].*global_guide"):
        _call(noise.model, x=torch.randn(4, 6), global_guide=None)


def test_calls_and_options_that_do_not_fit():
    guide = AmortizedNormal(PPCA().model, hidden_dims=())
    with pytest.raises(TypeError, match="encodes the first one"):
        guide()
    guide(X)
    with pytest.raises(ValueError, match=r"built for rows of shape \(5,\)"):
        guide(torch.randn(3, 4, dtype=torch.float64))
    conv = AmortizedNormal(PPCA().model, encoder="conv")
    with pytest.raises(ValueError, match="image-shaped rows"):
        conv(X)
    assert not conv.built and conv.nets is None  # not left half-built
    for bad, match in (
        ({"encoder": "rnn"}, "encoder must be one of"),
        ({"global_guide": "laplace"}, "global_guide must be one of"),
        ({"init_std": -1.0}, "init_std must be"),
        ({"activation": "swish"}, "activation must be one of"),
        ({"hidden_dims": (0,)}, "hidden_dims must be"),
    ):
        with pytest.raises(ValueError, match=match):
            AmortizedNormal(PPCA().model, **bad)
    with pytest.raises(ValueError, match="num_flows must be"):
        AmortizedIAF(PPCA().model, num_flows=0)
    with pytest.raises(ValueError, match=r"flow_hidden_dims \[1\] must all be >= D = 2"):
        AmortizedIAF(PPCA().model, flow_hidden_dims=(1,))(X)
    with pytest.raises(ValueError, match="names no amortized guide"):
        build_guide({"guide": "mystery"}, PPCA().model)
    with pytest.raises(RuntimeError, match="has not read the model yet"):
        AmortizedNormal(PPCA().model).latent_dim  # noqa: B018


def test_wake_sleep_refuses_a_guide_with_auxiliary_sites():
    torch.manual_seed(0)
    model = TwoLatentModel()
    x = torch.randn(40, 5)
    guide = AmortizedMultivariateNormal(model.model, hidden_dims=(8,))
    with pytest.raises(ValueError, match=r"sleep phase .*auxiliary site\(s\)"):
        fit(model.model, x, guide=guide, objective=WakeSleep("A"), num_samples=20,
            batch_size=20, progress=False)  # fmt: skip
    # a guide that samples the model's sites directly is fine
    result = fit(model.model, x, guide=AmortizedNormal(model.model, hidden_dims=(8,)),
                 objective="wake-sleep", num_samples=40, batch_size=20, progress=False)  # fmt: skip
    assert result.path == "wake-sleep"


def test_supports_bounded_per_row_are_refused_and_one_valued_bounds_train():
    for model in (bounded_by_latent, bounded_by_data):
        # a transform fixed at set-up would keep the first batch's bounds for every batch
        with pytest.raises(ValueError, match=r"site 'z' has a support whose bounds differ"):
            AmortizedNormal(model)(torch.randn(4))

    def one_valued(x):
        n = x.shape[0]
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Uniform(torch.zeros(n), torch.full((n,), 2.0)))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    pyro.clear_param_store()
    guide = AmortizedNormal(one_valued)
    guide(torch.randn(4))
    trace = pyro.poutine.trace(guide).get_trace(torch.randn(3))  # another number of rows
    z = trace.nodes["z"]["value"]
    assert z.shape == (3,) and bool(((z > 0) & (z < 2)).all())


def test_a_local_support_that_follows_a_global_latent_is_refused():
    def model(x):
        g = pyro.sample("g", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Uniform(0.0, g))  # one bound for every row, new each run
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    pyro.clear_param_store()
    with pytest.raises(ValueError, match=r"site 'z' has a support whose bounds change from run"):
        AmortizedNormal(model, global_guide="normal")(torch.randn(4))


def test_a_model_that_subsamples_its_own_data_plate_gets_a_guide_of_the_same_scale():
    """pyro.plate("data", N, subsample=idx) in the model scales its sites by N/M; the
    amortized guide's plate takes that N (as Pyro's autoguides take their plates' sizes),
    so stock Trace_ELBO weighs log q as it weighs log p."""
    import pyro
    import pyro.distributions as dist
    from pyro import poutine

    from pyro_aevb import AmortizedNormal

    N = 1000

    def model(x, idx):
        with pyro.plate("data", N, subsample=idx):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(idx), 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)

    pyro.clear_param_store()
    x, idx = torch.randn(10, 1), torch.arange(10)
    guide = AmortizedNormal(model, hidden_dims=(4,))
    guide_trace = poutine.trace(guide).get_trace(x, idx)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, idx)
    assert guide_trace.nodes["z"]["scale"] == model_trace.nodes["z"]["scale"] == N / 10
    # and a call on the whole data set is not scaled
    full = poutine.trace(guide).get_trace(torch.randn(N, 1), torch.arange(N))
    assert full.nodes["z"]["scale"] == 1.0


def test_conv_trunk_fits_any_image_size_and_refuses_mlp_options():
    """Images larger than the 32-pixel square of the example are padded to a square that
    holds them; hidden_dims, an MLP option, is an error with encoder='conv', not ignored."""
    import pyro
    import pyro.distributions as dist

    from pyro_aevb import AmortizedNormal

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            loc = z.sum(-1)[:, None, None, None].expand_as(x)
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(3), obs=x)

    for shape, side in [((1, 48, 48), 48), ((3, 20, 17), 32), ((1, 64, 40), 64)]:
        pyro.clear_param_store()
        guide = AmortizedNormal(model, encoder="conv")
        guide(torch.rand(4, *shape))
        assert guide.nets["trunk"].padded_size == side
    with pytest.raises(ValueError, match=r"hidden_dims=\[999\] applies to encoder='mlp'"):
        AmortizedNormal(model, encoder="conv", hidden_dims=999)


def test_joint_guides_under_vectorised_particles_say_so():
    import pyro
    import pyro.distributions as dist
    from pyro.infer import Trace_ELBO

    from pyro_aevb import AmortizedMultivariateNormal
    from pyro_aevb.poutine.plates import ProgramContractError

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            s = pyro.sample("s", dist.LogNormal(torch.zeros(x.shape[0]), 1.0))
            pyro.sample(
                "x", dist.Normal(z.sum(-1, keepdim=True) * s[:, None], 1.0).to_event(1), obs=x
            )

    pyro.clear_param_store()
    guide = AmortizedMultivariateNormal(model, hidden_dims=(4,))
    x = torch.randn(5, 1)
    guide(x)
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    with pytest.raises(ProgramContractError, match="which joint guides do not support"):
        elbo.differentiable_loss(model, guide, x)
