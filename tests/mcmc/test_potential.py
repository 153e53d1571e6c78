import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from marginal_helpers import GLOBAL_FACTOR
from torch.distributions.transforms import AffineTransform
from user_models import bounded_by_data, bounded_by_latent

from pyro_aevb.mcmc.potential import PerDatapointPotential
from pyro_aevb.poutine import LatentLayout, replicate_rows


def test_log_joint_matches_closed_form_and_excludes_global_factor(ppca):
    x = ppca.simulate(5)
    pot = PerDatapointPotential(ppca.model, x, num_chains=3)
    u = torch.randn(15, 2, dtype=torch.float64)
    xr = replicate_rows(x, 3)
    expected = dist.Normal(0.0, 1.0).log_prob(u).sum(-1) + dist.Normal(
        u @ ppca.W.T + ppca.b, ppca.sigma
    ).log_prob(xr).sum(-1)
    got = pot.log_joint(u)
    assert got.shape == (15,)
    # the global factor (-123) would shift every value if it were included
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, expected + GLOBAL_FACTOR)
    # chain-major replication: row c * B + i is datapoint i
    torch.testing.assert_close(xr[7], x[2])


def test_gradient_is_per_datapoint(ppca):
    x = ppca.simulate(4)
    pot = PerDatapointPotential(ppca.model, x)
    u = torch.randn(4, 2, dtype=torch.float64)
    value, grad = pot.potential_and_grad(u)
    # dU/du for U = -log N(u; 0, I) - log N(x; W u + b, sigma^2 I)
    expected = u - (x - u @ ppca.W.T - ppca.b) @ ppca.W / ppca.sigma**2
    torch.testing.assert_close(grad, expected)
    torch.testing.assert_close(value, -pot.log_joint(u))


def _constrained_model(x):
    n = x.shape[0]
    with pyro.plate("data", n):
        rate = pyro.sample("rate", dist.Gamma(torch.full((n,), 2.0), 3.0))
        mix = pyro.sample("mix", dist.Dirichlet(torch.ones(n, 3)))
        loc = pyro.sample("loc", dist.Normal(torch.zeros(n, 2), 1.0).to_event(1))
        mean = loc.sum(-1, keepdim=True) + (mix * torch.arange(3.0)).sum(-1, keepdim=True)
        pyro.sample("x", dist.Normal(mean, 1.0 / rate.unsqueeze(-1)).to_event(1), obs=x)


def test_constrained_sites_use_unconstrained_coordinates_with_jacobian():
    x = torch.randn(4, 2)
    pot = PerDatapointPotential(_constrained_model, x)
    layout = pot.layout
    # Gamma: 1 coordinate; Dirichlet on the 3-simplex: 2 (stick-breaking); Normal: 2
    assert [(s.name, s.size) for s in layout.sites] == [("rate", 1), ("mix", 2), ("loc", 2)]
    assert pot.dim == 5
    u = torch.randn(4, 5)
    values, log_jac = layout.unflatten(u)
    torch.testing.assert_close(layout.flatten(values), u, atol=1e-5, rtol=1e-5)
    rate = values["rate"]
    torch.testing.assert_close(rate, torch.exp(u[:, 0]))
    assert torch.allclose(values["mix"].sum(-1), torch.ones(4))
    # log p(x, u) = log p(x, z(u)) + log |dz/du|, summed over all sites
    mix_t = layout.sites[1].transform
    expected = (
        dist.Gamma(2.0, 3.0).log_prob(rate)
        + u[:, 0]
        + dist.Dirichlet(torch.ones(3)).log_prob(values["mix"])
        + mix_t.log_abs_det_jacobian(u[:, 1:3], values["mix"])
        + dist.Normal(0.0, 1.0).log_prob(u[:, 3:]).sum(-1)
        + dist.Normal(
            u[:, 3:].sum(-1, keepdim=True) + (values["mix"] * torch.arange(3.0)).sum(-1, True),
            1.0 / rate.unsqueeze(-1),
        )
        .log_prob(x)
        .sum(-1)
    )
    torch.testing.assert_close(pot.log_joint(u), expected, atol=1e-5, rtol=1e-5)


def test_global_latent_is_conditioned_on_given_values_or_refused_by_name():
    def model(x):
        scale = pyro.sample("scale", dist.HalfNormal(1.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0]), 1.0))
            pyro.sample("x", dist.Normal(z, scale), obs=x[:, 0])

    x = torch.randn(3, 1)
    with pytest.raises(ValueError, match=r"global latent sites \['scale'\].*global_values"):
        PerDatapointPotential(model, x)
    pot = PerDatapointPotential(model, x, global_values={"scale": torch.tensor(0.7)})
    assert pot.layout.names == ("z",)
    u = torch.randn(3, 1)
    expected = dist.Normal(0.0, 1.0).log_prob(u[:, 0]) + dist.Normal(u[:, 0], 0.7).log_prob(x[:, 0])
    torch.testing.assert_close(pot.log_joint(u), expected)


def test_wrong_plate_name_and_no_latents_raise(ppca):
    x = ppca.simulate(2)
    with pytest.raises(ValueError, match="plate named 'obs'"):
        PerDatapointPotential(ppca.model, x, plate_name="obs")

    def no_latents(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, 1.0).expand([x.shape[0], 1]).to_event(1), obs=x)

    with pytest.raises(ValueError, match="no local latent sample site"):
        PerDatapointPotential(no_latents, torch.randn(3, 1))


def test_bad_x_and_position_are_rejected(ppca):
    with pytest.raises(ValueError, match="x contains non-finite"):
        PerDatapointPotential(ppca.model, torch.full((2, 5), math.nan, dtype=torch.float64))
    with pytest.raises(ValueError, match="x must have a batch dimension"):
        PerDatapointPotential(ppca.model, torch.tensor(0.0, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"site 'x' has a value of shape \(3, 4\).* \(3, 5\)"):
        PerDatapointPotential(ppca.model, ppca.simulate(3)[:, :4])  # a column short
    pot = PerDatapointPotential(ppca.model, ppca.simulate(3), num_chains=2)
    with pytest.raises(ValueError, match=r"position must have shape .* \(6, 2\)"):
        pot.log_joint(torch.zeros(3, 2, dtype=torch.float64))
    # every entry point, before autograd or torch meet the position
    for call in (pot.log_joint, pot.potential_and_grad, pot.parts_and_grads):
        for dtype in (torch.float32, torch.int64):
            with pytest.raises(TypeError, match=f"position has dtype {dtype} but .*float64"):
                call(torch.zeros(6, 2, dtype=dtype))
        with pytest.raises(TypeError, match="position must be a torch.Tensor"):
            call([[0.0, 0.0]] * 6)


def test_guide_density_and_draws(ppca):
    x = ppca.simulate(3)
    pot = PerDatapointPotential(ppca.model, x, num_chains=2, guide=ppca.guide)
    u, log_q = pot.sample_guide()
    assert u.shape == (6, 2)
    q = ppca.guide_dist(replicate_rows(x, 2))
    torch.testing.assert_close(log_q, q.log_prob(u))
    torch.testing.assert_close(pot.log_guide(u), q.log_prob(u))
    assert LatentLayout.from_trace(pyro.poutine.trace(ppca.model).get_trace(x)).dim == 2


def test_nested_plates_flatten_per_datapoint():
    def model(x):
        with pyro.plate("data", x.shape[0], dim=-2), pyro.plate("feature", 3, dim=-1):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))  # (B, 3)
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    x = torch.randn(4, 3)
    pot = PerDatapointPotential(model, x, num_chains=2)
    assert pot.dim == 3
    u = torch.randn(8, 3)
    values, _ = pot.layout.unflatten(u)
    assert values["z"].shape == (8, 3)
    torch.testing.assert_close(pot.layout.flatten(values), u)
    expected = dist.Normal(0.0, 1.0).log_prob(u).sum(-1) + dist.Normal(u, 0.5).log_prob(
        replicate_rows(x, 2)
    ).sum(-1)
    torch.testing.assert_close(pot.log_joint(u), expected)


def test_masks_given_as_python_bools_are_applied():
    """``poutine.mask(mask=False)`` (Pyro takes a plain bool) switches a term off."""
    from pyro import poutine

    def model(x, on):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0]), 1.0))
            with poutine.mask(mask=on):
                pyro.factor("penalty", -(z**2))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    x = torch.randn(3, dtype=torch.float64)
    u = torch.randn(3, 1, dtype=torch.float64)
    expected = dist.Normal(0.0, 1.0).log_prob(u[:, 0]) + dist.Normal(u[:, 0], 1.0).log_prob(x)
    off = PerDatapointPotential(lambda x: model(x, False), x)
    torch.testing.assert_close(off.log_joint(u), expected)
    on = PerDatapointPotential(lambda x: model(x, True), x)
    torch.testing.assert_close(on.log_joint(u), expected - u[:, 0] ** 2)


def test_a_latent_whose_transform_changes_its_event_dims_is_laid_out_per_datapoint():
    """A Cholesky factor of a correlation matrix, (4, 4) per datapoint, is 6 unconstrained
    numbers (CorrCholesky's transform maps a vector to a matrix): the data plate sits at
    another position in the unconstrained value. The per-row potentials sum to Pyro's own
    potential of the batch at the same unconstrained point, traced and compiled."""
    from pyro.infer.mcmc.util import initialize_model

    from pyro_aevb.mcmc.potentials import make_potential

    def model(x):
        with pyro.plate("data", x.shape[0]):
            L = pyro.sample("L", dist.LKJCholesky(4, torch.tensor(1.5, dtype=x.dtype)))
            pyro.sample("x", dist.MultivariateNormal(x.new_zeros(4), scale_tril=L), obs=x)

    torch.manual_seed(0)
    x = torch.randn(3, 4, dtype=torch.float64)
    u = torch.randn(3, 6, dtype=torch.float64)
    _, potential_fn, _, _ = initialize_model(model, model_args=(x,))
    expected = potential_fn({"L": u})
    for fast in ("off", "auto"):
        pot = make_potential(model, x, fast=fast)
        assert pot.dim == 6 and pot.path == ("traced" if fast == "off" else "compiled")
        U, _ = pot.potential_and_grad(u)
        torch.testing.assert_close(U.sum(), expected, rtol=1e-12, atol=1e-12)
        values = pot.layout.unflatten_constrained(u)
        torch.testing.assert_close(pot.layout.flatten(values), u, rtol=1e-9, atol=1e-9)


def test_log_guide_follows_in_place_updates_of_the_encoder():
    """The guide's distribution of a one-latent model is kept between calls (AIS evaluates q
    at every step), but made again after the encoder changes, in place included (an
    optimizer's step, Monte Carlo EM's M-steps)."""
    from torch import nn

    from pyro_aevb.mcmc.potentials import make_potential

    enc = nn.Linear(3, 4).double()
    W = torch.randn(2, 3, dtype=torch.float64)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W, 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.module("enc_in_place", enc)
        h = enc(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(h[:, :2], h[:, 2:].exp()).to_event(1))

    pyro.clear_param_store()
    torch.manual_seed(0)
    x, u = torch.randn(4, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    for fast in ("auto", "off"):
        pot = make_potential(model, x, num_chains=2, guide=guide, fast=fast)
        before = pot.log_guide(u)
        with torch.no_grad():
            enc.weight.mul_(2.0)
        fresh = PerDatapointPotential(model, x, num_chains=2, guide=guide).log_guide(u)
        after = pot.log_guide(u)
        with torch.no_grad():
            enc.weight.div_(2.0)
        assert not torch.allclose(before, fresh)
        torch.testing.assert_close(after, fresh, rtol=1e-12, atol=1e-12)


def _bounded_guide(x):
    loc = pyro.param("s_loc", torch.tensor(0.3))
    with pyro.plate("data", x.shape[0]):
        s = pyro.sample("s", dist.LogNormal(loc, 0.5))
        # z = s * w, w ~ Beta(2, 3): inside the model's (0, s)
        w = dist.Beta(torch.full_like(s, 2.0), 3.0)
        pyro.sample("z", dist.TransformedDistribution(w, [AffineTransform(0.0, s)]))


@pytest.mark.parametrize("fast", ["off", "auto"])
def test_supports_from_other_latents_or_the_data_are_taken_per_row(fast):
    from pyro_aevb.mcmc.potentials import make_potential

    x = torch.randn(3)
    rows = replicate_rows(x, 2)
    sig = torch.sigmoid

    def by_latent(u):
        s = u[:, 0].exp()
        z = s * sig(u[:, 1])
        return (
            dist.LogNormal(0.0, 1.0).log_prob(s)
            + u[:, 0]
            + dist.Uniform(0.0, s).log_prob(z)
            + torch.log(s * sig(u[:, 1]) * (1 - sig(u[:, 1])))
            + dist.Normal(z, 1.0).log_prob(rows)
        )

    def by_data(u):
        hi = rows.abs() + 1.0
        z = hi * sig(u[:, 0])
        return (
            -hi.log()
            + torch.log(hi * sig(u[:, 0]) * (1 - sig(u[:, 0])))
            + dist.Normal(z, 1.0).log_prob(rows)
        )

    for model, exact in ((bounded_by_latent, by_latent), (bounded_by_data, by_data)):
        pot = make_potential(model, x, num_chains=2, fast=fast)
        u = torch.randn(6, pot.dim)
        value, grad = pot.potential_and_grad(u)
        uu = u.clone().requires_grad_(True)
        expected = exact(uu)
        (g,) = torch.autograd.grad(expected.sum(), uu)
        torch.testing.assert_close(value, -expected.detach())
        torch.testing.assert_close(grad, -g)
        assert pot.path == ("traced" if fast == "off" else "compiled")


def test_guide_draws_map_through_the_models_per_row_support():
    pyro.clear_param_store()
    x = torch.randn(4)
    pot = PerDatapointPotential(bounded_by_latent, x, num_chains=2, guide=_bounded_guide)
    torch.manual_seed(0)
    u, log_q = pot.sample_guide()
    s = u[:, 0].exp()
    w = torch.sigmoid(u[:, 1])
    # log q(u) = log q(s) + log|ds/du| + log q(z | s) + log|dz/du|, z = s * sigmoid(u_z):
    # log q(z | s) = log Beta(w) - log s, log|dz/du| = log(s w (1 - w))
    expected = (
        dist.LogNormal(0.3, 0.5).log_prob(s)
        + u[:, 0]
        + dist.Beta(2.0, 3.0).log_prob(w)
        + torch.log(w * (1 - w))
    )
    assert bool(torch.isfinite(u).all())
    torch.testing.assert_close(log_q, expected)
    torch.testing.assert_close(pot.log_guide(u), log_q)
