"""Refining the amortized autoguides per datapoint (``local_params`` / ``local_guide``), against
exact answers on linear-Gaussian models: the diagonal guide reaches the best diagonal Gaussian
of each datapoint, the full-covariance guide the exact posterior (its bound reaches
``log p(x)``), through an auxiliary site with a positive latent too; a flow's refinement
improves every datapoint's bound; the refined guides evaluate like any guide."""

import pyro
import pytest
import torch
from marginal_helpers import PPCA
from user_models import LogLinearGaussian

from pyro_aevb import elbo_per_datapoint, log_marginal
from pyro_aevb.autoguide import AmortizedIAF, AmortizedMultivariateNormal, AmortizedNormal
from pyro_aevb.evaluate import gap_report
from pyro_aevb.infer import refine, supports_refinement


def _correlated_ppca():
    model = PPCA(d=5, k=2, sigma=0.5)
    g = torch.Generator().manual_seed(3)
    w = torch.randn(5, generator=g, dtype=torch.float64)
    model.W = torch.stack([w, w + 0.4 * torch.randn(5, generator=g, dtype=torch.float64)], 1)
    return model


def _guide(cls, model, x, **options):
    pyro.clear_param_store()
    torch.manual_seed(0)
    guide = cls(model.model, hidden_dims=(), **options)  # an untrained linear encoder
    guide(x)  # build
    return guide


def test_every_autoguide_exposes_its_per_datapoint_parameters():
    model = _correlated_ppca()
    x = model.simulate(4)
    for cls, keys in (
        (AmortizedNormal, {"z.loc", "z.log_var"}),
        (AmortizedMultivariateNormal, {"loc", "log_var", "lower"}),
        (AmortizedIAF, {"loc", "log_var", "context"}),
    ):
        guide = _guide(cls, model, x)
        assert supports_refinement(guide)
        params = guide.local_params(x)
        assert set(params) == keys and all(v.shape[0] == 4 for v in params.values())
        # the encoder's own parameters give the encoder's own guide: same draws, same values
        with pyro.poutine.trace() as a, torch.random.fork_rng(devices=[]):
            torch.manual_seed(5)
            guide(x)
        with pyro.poutine.trace() as b, torch.random.fork_rng(devices=[]):
            torch.manual_seed(5)
            guide.local_guide(params)(x)
        ta, tb = a.trace, b.trace
        ta.compute_log_prob()
        tb.compute_log_prob()
        for name in ("z",):
            torch.testing.assert_close(ta.nodes[name]["value"], tb.nodes[name]["value"])
            torch.testing.assert_close(ta.nodes[name]["log_prob"], tb.nodes[name]["log_prob"])
        with pytest.raises(ValueError, match="rows"):
            guide.local_guide(params)(x[:2])


def test_refining_the_diagonal_guide_reaches_the_best_diagonal_gaussian_per_datapoint():
    model = _correlated_ppca()
    x = model.simulate(6)
    guide = _guide(AmortizedNormal, model, x)
    refined = refine(model.model, guide, x, steps=400, num_particles=16, estimator="B", seed=0)
    mean, cov = model.posterior(x)
    best_var = 1.0 / torch.linalg.inv(cov).diagonal()
    torch.testing.assert_close(refined.params["z.loc"], mean, atol=0.03, rtol=0)
    torch.testing.assert_close(
        refined.params["z.log_var"].exp(), best_var.expand_as(mean), atol=0, rtol=0.1
    )
    assert bool(refined.diagnostics["improvement"].gt(0).all())


@pytest.mark.parametrize("case", ["ppca", "positive latent (auxiliary site)"])
def test_refining_the_full_covariance_guide_reaches_log_p_x(case):
    model = _correlated_ppca() if case == "ppca" else LogLinearGaussian()
    x = model.simulate(6)
    guide = _guide(AmortizedMultivariateNormal, model, x)
    refined = refine(model.model, guide, x, steps=400, num_particles=16, seed=0)
    with torch.no_grad():
        bound = elbo_per_datapoint(model.model, refined, x, estimator="A", num_particles=4000)
    # the exact posterior is in the family: the refined bound is log p(x) (the KL -> 0)
    torch.testing.assert_close(bound, model.log_marginal(x), atol=0.05, rtol=0)
    assert log_marginal(model.model, refined, x, "iwae", num_particles=50).estimate.shape == (6,)


def test_refining_a_flow_improves_every_bound_and_the_gap_report_takes_it():
    model = _correlated_ppca()
    x = model.simulate(5)
    guide = _guide(AmortizedIAF, model, x, num_flows=1)
    report = gap_report(
        model.model,
        guide,
        x,
        refine_options={"steps": 200, "num_particles": 8},
        log_marginal_method="iwae",
        log_marginal_options={"num_particles": 2000},
        num_particles=500,
    )
    assert bool((report.amortization_gap > 3 * report.amortization_gap_stderr).all())
    exact = model.log_marginal(x)
    torch.testing.assert_close(report.log_marginal.estimate, exact, atol=0.1, rtol=0)
