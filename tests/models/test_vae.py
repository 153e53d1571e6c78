import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO
from torch import nn

from pyro_aevb import (
    VAE,
    build_model,
    elbo_per_datapoint,
    mlp_vae,
    paper_frey_face_vae,
    paper_mnist_vae,
)
from pyro_aevb.models import vae as vae_module
from pyro_aevb.models.vae import program_override


@pytest.fixture
def vae():
    return mlp_vae(12, 3, (8,), init_std=0.1)


def test_paper_presets_sizes_and_init():
    m = paper_mnist_vae(latent_dim=20)
    assert (m.data_dim, m.encoder.hidden_dims, m.latent_dim, m.likelihood.name) == (
        784,
        (500,),
        20,
        "bernoulli",
    )
    assert (m.encoder.in_dim, m.encoder.out_dim, m.decoder.out_dim) == (784, 40, 784)
    w = m.decoder.out.weight.detach()
    assert abs(float(w.std()) - 0.1) < 5e-3 and abs(float(w.mean())) < 1e-2  # variance 0.01
    f = paper_frey_face_vae(latent_dim=5)
    assert (f.data_dim, f.decoder.hidden_dims, f.likelihood.name, f.likelihood.sigmoid_mean) == (
        560,
        (200,),
        "gaussian",
        True,
    )
    assert m.weight_prior_std == 1.0 and f.weight_prior_std == 1.0


def test_config_rebuilds_the_same_architecture(vae):
    clone = build_model(vae.config)
    assert [p.shape for p in clone.parameters()] == [p.shape for p in vae.parameters()]
    assert clone.config == vae.config and vae.config["preset"] == "mlp_vae"


def test_a_vae_composed_by_hand_from_any_networks():
    """Image-shaped data with user networks: the VAE composes whatever maps x -> 2J and
    z -> k D; a Gaussian head splits the decoder output into mean and log-variance images."""
    enc = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.Flatten(), nn.LazyLinear(6))
    dec = nn.Sequential(nn.Linear(3, 2 * 8 * 8), nn.Unflatten(-1, (2, 8, 8)))
    vae = VAE(enc, dec, "gaussian", latent_dim=3, event_shape=(1, 8, 8))
    x = torch.rand(5, 1, 8, 8)
    loc, scale = vae.encode(x)
    assert loc.shape == scale.shape == (5, 3)
    tr = poutine.trace(vae.model).get_trace(x)
    assert tr.nodes["x"]["fn"].event_shape == (1, 8, 8) and tr.nodes["x"]["fn"].batch_shape == (5,)
    assert vae.decode(torch.zeros(2, 3)).shape == (2, 1, 8, 8)
    assert vae.config is None  # not a preset: load_run needs it passed in
    with pytest.raises(ValueError, match="decoder gives 128 outputs"):
        VAE(enc, dec, "bernoulli", latent_dim=3, event_shape=(1, 8, 8)).likelihood_dist(
            torch.zeros(1, 3)
        )


def test_float64_data_is_converted_at_the_boundary(vae):
    x = torch.rand(3, 12, dtype=torch.float64)
    tr = poutine.trace(vae.model).get_trace(x)
    assert tr.nodes["x"]["value"].dtype == torch.float32


def test_trace_sites_and_shapes(vae):
    x = torch.rand(5, 12)
    tr = poutine.trace(vae.model).get_trace(x, num_data=50)
    assert tr.nodes["z"]["value"].shape == (5, 3)
    assert tr.nodes["x"]["is_observed"]
    assert tr.nodes["z"]["scale"] == pytest.approx(10.0)  # N / M
    assert "weight_prior" in tr.nodes
    gtr = poutine.trace(vae.guide).get_trace(x, num_data=50)
    assert gtr.nodes["z"]["fn"].batch_shape == (5,) and gtr.nodes["z"]["fn"].event_shape == (3,)


def test_stock_svi_predictive_and_generation(vae):
    x = torch.rand(6, 12)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x, num_data=60) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    post = Predictive(vae.model, guide=vae.guide, num_samples=4, return_sites=["z", "x"])(x)
    assert post["z"].shape == (4, 6, 3)
    prior = Predictive(vae.model, num_samples=2, return_sites=["x"])(None, batch_size=3)
    assert prior["x"].shape == (2, 3, 12)
    assert set(prior["x"].unique().tolist()) <= {0.0, 1.0}


def test_stock_mcmc_runs_on_the_model(vae):
    x = torch.rand(2, 12)
    mcmc = MCMC(NUTS(vae.model), num_samples=10, warmup_steps=10, disable_progbar=True)
    mcmc.run(x)
    assert mcmc.get_samples()["z"].shape == (10, 2, 3)


def test_gaussian_decoder_sigmoid_mean():
    vae = mlp_vae(10, 2, 6, likelihood="gaussian", sigmoid_mean=True)
    z = torch.randn(4, 2) * 50
    mean = vae.decode(z)
    assert mean.shape == (4, 10) and bool(((mean >= 0) & (mean <= 1)).all())
    x = torch.randn(3, 10) * 3  # real data outside [0, 1] is fine for a Gaussian decoder
    tr = poutine.trace(vae.model).get_trace(x)
    assert torch.isfinite(tr.log_prob_sum())


def test_weight_prior_value(vae):
    expected = -0.5 * sum(float((p**2).sum()) for p in vae.parameters())
    assert float(vae.log_weight_prior()) == pytest.approx(expected, rel=1e-6)
    no_prior = mlp_vae(12, 3, 8, weight_prior_std=None)
    assert "weight_prior" not in poutine.trace(no_prior.model).get_trace(torch.rand(2, 12)).nodes


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(4, 11), r"shape \(batch, \*\(12,\)\)"),
        (torch.rand(4, 3, 4), r"reshape it with x.reshape"),
        (torch.full((2, 12), float("nan")), "non-finite"),
        (torch.rand(3, 12) + 1.0, r"\[0, 1\]"),
        (torch.rand(0, 12), "empty"),
    ],
)
def test_bad_input_raises_clear_error(vae, bad, match):
    with pytest.raises(ValueError, match=match):
        vae.model(bad)
    with pytest.raises(ValueError, match=match):
        vae.guide(bad)


def test_bad_dtype_and_num_data(vae):
    with pytest.raises(TypeError, match="floating dtype"):
        vae.model(torch.zeros(2, 12, dtype=torch.uint8))
    with pytest.raises(ValueError, match="num_data"):
        vae.model(torch.rand(5, 12), num_data=3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"likelihood": "poisson"}, "likelihood"),
        ({"hidden_dims": 0}, "hidden_dims"),
        ({"weight_prior_std": -1.0}, "weight_prior_std"),
        ({"sigmoid_mean": True}, "sigmoid_mean"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mlp_vae(12, 3, **{"hidden_dims": 8, **kwargs})


def test_per_datapoint_bound_of_the_vae(vae):
    x = torch.rand(4, 12)
    torch.manual_seed(2)
    a = elbo_per_datapoint(vae.model, vae.guide, x, estimator="A")
    torch.manual_seed(2)
    b = elbo_per_datapoint(vae.model, vae.guide, x, estimator="B")
    assert a.shape == b.shape == (4,)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()


def test_weight_prior_is_a_factor_computed_only_when_read(vae, monkeypatch):
    from pyro.poutine.util import site_is_factor

    from pyro_aevb.mcmc.potential import PerDatapointPotential

    calls = []
    original = vae.log_weight_prior
    monkeypatch.setattr(vae, "log_weight_prior", lambda: calls.append(1) or original())
    x = torch.rand(4, 12)
    PerDatapointPotential(vae.model, x).potential_and_grad(torch.randn(4, 3))
    assert calls == []  # per-datapoint potentials never read the global factor
    tr = poutine.trace(vae.model).get_trace(x)
    site = tr.nodes["weight_prior"]
    assert site_is_factor(site) and site["is_observed"] and site["infer"]["is_auxiliary"]
    # a consumer of the whole model's density gets exactly -|theta|^2 / 2, computed once
    tr.compute_log_prob()
    torch.testing.assert_close(
        site["log_prob"], -0.5 * sum(p.pow(2).sum() for p in vae.parameters())
    )
    tr.log_prob_sum()
    assert len(calls) == 1


PROGRAM_MEMBERS = sorted(
    n
    for n, m in vars(VAE).items()
    if not n.startswith("__")
    and n not in vae_module._NOT_IN_PROGRAMS
    and (callable(m) or isinstance(m, property))
)


@pytest.mark.parametrize("name", PROGRAM_MEMBERS)
def test_overriding_any_member_the_programs_call_is_reported(vae, name):
    """The hand-derived paths (fast training, direct IWAE, hand-derived potential) reproduce
    VAE's programs; a subclass replacing any member they call must not get them."""
    assert program_override(vae) is None
    member = vars(VAE)[name]
    if isinstance(member, property):
        override = property(lambda self: member.fget(self))
    else:
        override = lambda self, *args, **kwargs: member(self, *args, **kwargs)  # noqa: E731
    sub = type("Sub", (VAE,), {name: override})  # the same arithmetic, but who could know
    mine = sub.__new__(sub)
    mine.__dict__ = vae.__dict__
    assert program_override(mine) == f"Sub overrides VAE.{name}"
    if not isinstance(member, property):
        vae.__dict__[name] = getattr(vae, name)  # replaced on the instance
        assert program_override(vae) == f"the instance replaces VAE.{name}"


def test_overriding_conveniences_keeps_the_hand_derived_paths(vae):
    class Pretty(VAE):
        def decode(self, z):
            return super().decode(z).clamp(0, 1)

        def reconstruct(self, x):
            return super().reconstruct(x)

    mine = Pretty.__new__(Pretty)
    mine.__dict__ = vae.__dict__
    assert program_override(mine) is None
    assert {"_check_x", "encode", "likelihood_dist", "model", "guide"} <= set(PROGRAM_MEMBERS)
