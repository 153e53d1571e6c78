"""Local refinement and the gap report against exact answers on a linear-Gaussian model:
the best diagonal Gaussian per datapoint, the amortization gap of a poor encoder, and the
approximation gap as the exact KL of the best diagonal fit."""

import pytest
import torch

from pyro_aevb import LinearGaussian, elbo_per_datapoint, log_marginal
from pyro_aevb.evaluate import gap_report
from pyro_aevb.infer import refine
from pyro_aevb.plots import plot_gaps


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = LinearGaussian(5, 2, sigma=0.6).double()
    with torch.no_grad():
        m.W.copy_(torch.tensor([[1.0, 0.8], [0.5, 1.2], [-0.7, 0.4], [0.3, -0.9], [1.1, 0.2]]))
        # a deliberately poor encoder: wrong mean map, too-wide scale
        m.enc_A.copy_(0.2 * torch.randn(2, 5))
        m.enc_log_var.fill_(0.5)
    return m


def best_diagonal(m, x):
    """argmin over diagonal Gaussians of KL(q || p(z|x)): posterior mean, 1 / diag(precision)."""
    mean, cov = m.posterior(x)
    var = 1.0 / torch.linalg.inv(cov).diagonal()
    return mean, var.expand_as(mean)


def test_refinement_reaches_the_best_diagonal_gaussian_per_datapoint(model):
    x = model.marginal().sample((6,)).detach()
    refined = refine(model.model, model.guide, x, steps=300, num_particles=16, estimator="B",
                     seed=0)  # fmt: skip
    mean, var = best_diagonal(model, x)
    with torch.no_grad():
        torch.testing.assert_close(refined.params["loc"], mean, atol=0.03, rtol=0)
        torch.testing.assert_close(refined.params["log_var"].exp(), var, atol=0, rtol=0.08)
    # the reported improvement estimates the amortization gap L[q*] - L[q] of each row
    with torch.no_grad():
        start = model.local_params(x)
        exact_gap = model.analytic_elbo(x, mean, var.sqrt()) - model.analytic_elbo(
            x, start["loc"], (0.5 * start["log_var"]).exp()
        )
    torch.testing.assert_close(refined.diagnostics["improvement"], exact_gap, rtol=0.15, atol=0.5)
    # the refined guide is a guide: its bound, evaluated by the library, is the exact optimum
    with torch.no_grad():
        exact_best = model.analytic_elbo(x, mean, var.sqrt())
        got = elbo_per_datapoint(model.model, refined, x, num_particles=2000)
    torch.testing.assert_close(got, exact_best, atol=0.05, rtol=0)
    # IWAE runs it on stacked copies of the rows; the rows in another order, or some of them
    # (a block of an evaluation in blocks), get their own parameters; other rows are refused
    assert log_marginal(model.model, refined, x, "iwae", num_particles=50).estimate.shape == (6,)
    with torch.no_grad():
        torch.testing.assert_close(
            elbo_per_datapoint(model.model, refined, x.flip(0), num_particles=2000),
            exact_best.flip(0),
            atol=0.05,
            rtol=0,
        )
    blocked = log_marginal(model.model, refined, x, "iwae", num_particles=50, block_size=4)
    assert blocked.estimate.shape == (6,)
    torch.testing.assert_close(blocked.estimate, exact_best, atol=0.2, rtol=0)
    with pytest.raises(ValueError, match="1 row\\(s\\) it was not refined on"):
        elbo_per_datapoint(model.model, refined, torch.cat([x[:2], x[2:3] + 1.0]))


def test_gap_report_recovers_both_gaps_exactly(model, tmp_path):
    x = model.marginal().sample((8,)).detach()
    report = gap_report(
        model.model,
        model.guide,
        x,
        refine_options={"steps": 300, "num_particles": 16, "estimator": "B"},
        log_marginal_method="iwae",
        log_marginal_options={"num_particles": 20000},
        num_particles=4000,
    )
    mean, var = best_diagonal(model, x)
    with torch.no_grad():
        exact_px = model.log_marginal(x)
        enc = model.local_params(x)
        exact_q = model.analytic_elbo(x, enc["loc"], (0.5 * enc["log_var"]).exp())
        exact_best = model.analytic_elbo(x, mean, var.sqrt())
    exact_amortization = exact_best - exact_q
    exact_approximation = exact_px - exact_best  # the KL of the best diagonal fit
    assert bool((exact_amortization > 1.0).all())  # the encoder is poor on purpose
    assert bool((exact_approximation > 0.01).all())  # the posterior is correlated
    # refinement error (a few hundredths) plus 4 Monte Carlo standard errors
    tol_am = 4 * report.amortization_gap_stderr + 0.05
    tol_ap = 4 * report.approximation_gap_stderr + 0.05
    assert bool(((report.amortization_gap - exact_amortization).abs() < tol_am).all())
    assert bool(((report.approximation_gap - exact_approximation).abs() < tol_ap).all())
    total = report.approximation_gap + report.amortization_gap
    torch.testing.assert_close(total, report.log_marginal.estimate - report.elbo)
    assert "amortization gap" in report.summary() and report.to_dict()["table"]
    assert plot_gaps(report, tmp_path / "gaps.png").stat().st_size > 1000


def test_guides_without_local_parameters_are_refused_by_name(ppca):
    with pytest.raises(TypeError, match="cannot be refined.*local_params"):
        refine(ppca.model, ppca.guide, ppca.simulate(3))
