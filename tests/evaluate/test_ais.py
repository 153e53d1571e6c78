import pyro
import pyro.distributions as dist
import pytest
import torch
from user_models import bounded_by_latent

from pyro_aevb.evaluate.ais import ais, annealing_schedule, bdmc, simulate_data


def test_annealing_schedules():
    for kind in ("sigmoid", "linear"):
        betas = annealing_schedule(50, kind)
        assert betas.shape == (51,) and betas[0] == 0 and betas[-1] == 1
        assert bool((betas.diff() > 0).all())
    sig = annealing_schedule(50).diff()
    assert sig[0] < sig[25] and sig[-1] < sig[25]  # denser near both ends


def test_ais_from_the_encoder_matches_exact(ppca):
    x = ppca.simulate(4)
    torch.manual_seed(0)
    res = ais(
        ppca.model,
        ppca.guide,
        x,
        num_chains=64,
        num_temps=300,
        generator=torch.Generator().manual_seed(0),
    )
    err = res.estimate - ppca.log_marginal(x)
    assert bool((err.abs() < 4 * res.stderr).all()), err / res.stderr
    assert float(err.abs().max()) < 0.05
    assert res.log_weights.shape == (64, 4)
    assert bool((res.accept_rate > 0.6).all())


def test_ais_from_the_prior_matches_exact_within_its_error(ppca):
    # from the prior the path is much longer (KL(posterior || prior) of several nats), so the
    # same budget gives a larger, but honestly reported, error
    x = ppca.simulate(4)
    torch.manual_seed(1)
    res = ais(
        ppca.model,
        None,
        x,
        init="prior",
        num_chains=32,
        num_temps=300,
        generator=torch.Generator().manual_seed(1),
    )
    err = res.estimate - ppca.log_marginal(x)
    assert bool((err.abs() < 4 * res.stderr).all()), err / res.stderr
    assert float(res.stderr.max()) < 0.15


def test_bdmc_sandwiches_the_exact_value_on_simulated_data(ppca):
    torch.manual_seed(2)
    x, z = simulate_data(ppca.model, ppca.simulate(4))
    assert x.shape == (4, 5) and set(z) == {"z"} and z["z"].shape == (4, 2)
    exact = ppca.log_marginal(x)
    forward, reverse = bdmc(
        ppca.model,
        ppca.guide,
        x,
        z,
        num_chains=32,
        num_temps=200,
        generator=torch.Generator().manual_seed(2),
    )
    assert bool((forward.estimate - 4 * forward.stderr < exact).all())
    assert bool((reverse.estimate + 4 * reverse.stderr > exact).all())
    gap = reverse.estimate - forward.estimate
    assert float(gap.mean()) < 0.1, gap


def test_simulate_data_uses_the_model():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0]), 1.0))
            pyro.sample("x", dist.Normal(z.unsqueeze(-1).expand(-1, 2), 1e-3).to_event(1), obs=x)

    torch.manual_seed(0)
    x, z = simulate_data(model, torch.zeros(3, 2))
    torch.testing.assert_close(x, z["z"].unsqueeze(-1).expand(-1, 2), atol=0.01, rtol=0)


def test_bad_arguments(ppca):
    x = ppca.simulate(2)
    with pytest.raises(ValueError, match="num_temps must be an int >= 2, got 1"):
        ais(ppca.model, ppca.guide, x, num_temps=1)
    with pytest.raises(ValueError, match="init='encoder' anneals from the guide"):
        ais(ppca.model, None, x, num_temps=5)
    with pytest.raises(ValueError, match="init must be one of"):
        ais(ppca.model, ppca.guide, x, num_temps=5, init="posterior")
    with pytest.raises(ValueError, match="schedule must be one of"):
        annealing_schedule(5, "cosine")
    with pytest.raises(ValueError, match=r"expected unconstrained shape \(batch, D\) = \(2, 2\)"):
        bdmc(ppca.model, ppca.guide, x, torch.zeros(3, 2, dtype=torch.float64), num_temps=3)
    with pytest.raises(ValueError, match="missing"):
        bdmc(ppca.model, ppca.guide, x, {"w": torch.zeros(2, 2)}, num_temps=3)


def test_ais_on_a_latent_bounded_by_another_matches_quadrature():
    # z ~ Uniform(0, s): the transform of z differs per chain and per step, and must be
    # taken where the model runs (a transform fixed from a first trace targets another
    # density); p(x) = int LogNormal(s) (Phi(s - x) - Phi(-x)) / s ds, by quadrature
    import numpy as np
    from scipy import integrate, stats

    x = torch.tensor([0.3, 1.5, -0.7], dtype=torch.float64)

    def marginal(xi):
        def f(s):
            return stats.lognorm.pdf(s, 1.0) * (stats.norm.cdf(s - xi) - stats.norm.cdf(-xi)) / s

        return np.log(integrate.quad(f, 0, np.inf)[0])

    exact = torch.tensor([marginal(float(xi)) for xi in x])
    res = ais(
        bounded_by_latent,
        None,
        x.float(),
        init="prior",
        num_chains=64,
        num_temps=200,
        generator=torch.Generator().manual_seed(3),
    )
    err = res.estimate.double() - exact
    assert bool((err.abs() < 4 * res.stderr).all()), (err, res.stderr)
    assert float(res.stderr.max()) < 0.03


def test_ais_from_an_exact_single_site_guide_rejects_moves_out_of_its_support():
    # Gamma-Poisson with the exact Gamma posterior as the guide: log q(u) is evaluated at
    # every step, also where a trajectory leaves the guide's support (there a rejected move,
    # not a validation error); every weight is then log p(x) itself
    torch.manual_seed(1)
    counts = dist.Poisson(dist.Gamma(2.0, 1.0).sample((4, 1)).expand(4, 5)).sample()

    def model(x):
        with pyro.plate("data", len(x)):
            r = pyro.sample("r", dist.Gamma(2.0, 1.0))
            pyro.sample("x", dist.Poisson(r.unsqueeze(-1)).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("r", dist.Gamma(2.0 + x.sum(-1), 1.0 + x.shape[-1]))

    a, b, n, s = 2.0, 1.0, counts.shape[1], counts.sum(-1)
    exact = (
        a * torch.log(torch.tensor(b))
        - torch.lgamma(torch.tensor(a))
        + torch.lgamma(a + s)
        - (a + s) * torch.log(torch.tensor(b + n))
        - torch.lgamma(counts + 1).sum(-1)
    )
    for fast in ("auto", "off"):
        res = ais(model, guide, counts, num_chains=16, num_temps=50, fast=fast)
        torch.testing.assert_close(res.estimate, exact, atol=1e-4, rtol=0)


def test_a_guide_with_a_parameter_per_datapoint_is_named_when_chains_need_more_rows():
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z.unsqueeze(-1), 0.7).to_event(1), obs=x)

    def guide(x):
        loc = pyro.param("loc_per_row", torch.zeros(len(x)))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(loc, 1.0))

    pyro.clear_param_store()
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"replicated once per chain \(4 chains x 5 datapoints"):
        ais(model, guide, x, num_chains=4, num_temps=5)
    assert ais(model, None, x, init="prior", num_chains=4, num_temps=5).estimate.shape == (5,)


def test_one_chain_carrying_the_estimate_is_named(caplog):
    from user_models import concentrated_gamma_poisson

    model, _, x, exact = concentrated_gamma_poisson()
    with caplog.at_level("WARNING", logger="pyro_aevb"):
        res = ais(model, None, x, num_chains=8, num_temps=20, init="prior",
                  generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert float(res.diagnostics["ess"][0]) < 2 and float(exact[0] - res.estimate[0]) > 5
    assert "ais: 1 of 2 datapoints have fewer than 2 effective chains (first: [0])" in caplog.text
    assert res.diagnostics["ess"].shape == (2,) and float(res.diagnostics["ess"][1]) >= 2


def test_a_per_row_covariate_outside_x_is_named_when_chains_need_more_rows():
    import functools

    def model(x, covariate):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x)), 1.0))
            loc = (z + covariate).unsqueeze(-1)
            pyro.sample("x", dist.Normal(loc, 0.7).to_event(1), obs=x)

    x, covariate = torch.randn(5, 3), torch.randn(5)
    bound = functools.partial(model, covariate=covariate)
    with pytest.raises(ValueError, match=r"the model failed on x replicated .* a covariate"):
        ais(bound, None, x, init="prior", num_chains=4, num_temps=5)
    from pyro_aevb.evaluate.appendix_d import appendix_d

    # one chain from the prior: its start is resampled from 1000 prior draws per datapoint
    with pytest.raises(ValueError, match=r"the model failed on x replicated .* a covariate"):
        appendix_d(bound, None, x, num_chains=1, num_warmup=5, num_samples=10)


class _SingularAway:
    """Per row: log p_0 = -|u|^2 / 2, increment = -|u - 1|^2 / 2, and a "not positive
    definite" error for the whole batch whenever a row is past |u| = 1.2 (a density undefined
    there); with ``provides_grad`` it gives its own gradients, else autograd does."""

    def __init__(self, provides_grad: bool):
        self.provides_grad = provides_grad
        self.failures = 0

    def _check(self, u):
        if float(u.abs().max()) > 1.2:
            self.failures += 1
            raise RuntimeError("linalg.cholesky: the input is not positive-definite")

    def parts(self, u):
        self._check(u)
        return -0.5 * (u * u).sum(-1), -0.5 * ((u - 1) ** 2).sum(-1)

    def parts_and_grads(self, u, need_value=True):
        log_p0, increment = self.parts(u)
        return log_p0, increment, -u, -(u - 1)

    def potential(self, beta):
        from pyro_aevb.evaluate.ais import _Annealed

        return _Annealed.potential(self, beta)

    def evaluate(self, u, beta):
        from pyro_aevb.evaluate.ais import _Annealed

        return _Annealed.evaluate(self, u, beta)


def test_kept_parts_after_rows_evaluated_apart_equal_a_fresh_evaluation():
    """A potential with its own gradients keeps each transition's end-point parts for the next
    temperature; when the kernel had to evaluate the rows apart (a singular matrix in some
    rows), those parts held only the last piece's rows, and the other accepted chains kept
    their old positions' parts (AIS lower bounds 3.4 standard errors above log p(x)). Same
    draws, own gradients vs autograd's fresh evaluation at every temperature: equal weights."""
    from pyro_aevb.evaluate.ais import _run

    betas = annealing_schedule(30)
    start = torch.linspace(-1.0, 1.0, 24, dtype=torch.float64).reshape(12, 2)
    steps = torch.full((30, 6), 0.6, dtype=torch.float64)
    weights = []
    for provides_grad in (True, False):
        annealed = _SingularAway(provides_grad)
        log_w, accept, _ = _run(
            annealed, start, betas, steps, num_leapfrog=4,
            generator=torch.Generator().manual_seed(0), reverse=False, num_chains=2,
        )  # fmt: skip
        assert annealed.failures > 0
        weights.append(log_w)
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-9, atol=1e-9)
