import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_aevb.evaluate import log_marginal
from pyro_aevb.mcmc import importance_resampled_init, sample_posterior_pyro
from pyro_aevb.mcmc.potential import PerDatapointPotential
from pyro_aevb.mcmc.pyro_reference import _unflatten_unconstrained

CHAINS = 2000


def _constrained_model(x):
    n = x.shape[0]
    with pyro.plate("data", n):
        rate = pyro.sample("rate", dist.Gamma(torch.full((n,), 2.0), 3.0))
        mix = pyro.sample("mix", dist.Dirichlet(torch.ones(n, 3)))
        mean = (mix * torch.arange(3.0)).sum(-1, keepdim=True)
        pyro.sample("x", dist.Normal(mean, 1.0 / rate.unsqueeze(-1)).to_event(1), obs=x)


def _chain_means(init: torch.Tensor, batch: int) -> torch.Tensor:
    return init.reshape(CHAINS, batch, -1).mean(0)


@pytest.mark.parametrize("proposal", ["prior", "guide"])
def test_resampled_starts_follow_the_posterior(ppca, proposal):
    torch.manual_seed(0)
    x = ppca.simulate(2)
    mean, cov = ppca.posterior(x)
    pot = PerDatapointPotential(ppca.model, x, num_chains=CHAINS, guide=ppca.guide)
    tol = 5 * cov.diagonal().sqrt() / CHAINS**0.5
    plain = importance_resampled_init(pot, 1, proposal=proposal)
    resampled = importance_resampled_init(pot, 500, proposal=proposal, chunk_size=64)
    assert resampled.shape == (CHAINS * 2, 2)
    # one draw is the proposal itself: the prior (mean 0) or the encoder (mean off by 0.1)
    assert ((_chain_means(plain, 2) - mean).abs() > tol).any()
    assert ((_chain_means(resampled, 2) - mean).abs() < tol).all()
    spread = resampled.reshape(CHAINS, 2, 2).var(0)
    torch.testing.assert_close(spread, cov.diagonal().expand(2, 2), rtol=0.15, atol=0.0)


def test_chunking_does_not_change_the_draw_distribution(ppca):
    x = ppca.simulate(3)
    pot = PerDatapointPotential(ppca.model, x, num_chains=CHAINS)
    mean, cov = ppca.posterior(x)
    tol = 5 * cov.diagonal().sqrt() / CHAINS**0.5
    for chunk in (1, 7, 300):
        torch.manual_seed(1)
        init = importance_resampled_init(pot, 300, chunk_size=chunk)
        assert torch.isfinite(init).all()
        assert ((_chain_means(init, 3) - mean).abs() < tol).all()


def test_bad_arguments_are_named(ppca):
    pot = PerDatapointPotential(ppca.model, ppca.simulate(2))
    with pytest.raises(ValueError, match="num_particles"):
        importance_resampled_init(pot, 0)
    with pytest.raises(ValueError, match="guide="):
        importance_resampled_init(pot, 10, proposal="guide")
    with pytest.raises(ValueError, match="proposal"):
        importance_resampled_init(pot, 10, proposal="encoder")


def test_appendix_d_starts_from_resampled_prior_without_a_guide(ppca):
    x = ppca.simulate(4)
    res = log_marginal(ppca.model, None, x, method="appendix_d", num_samples=200)
    assert res.settings["init_particles"] == 1000
    err = (res.estimate - ppca.log_marginal(x)).abs()
    assert (err < 4 * res.stderr + 0.05).all()


def test_pyro_sampler_takes_flat_unconstrained_starts(ppca):
    x = ppca.simulate(2)
    with pytest.raises(ValueError, match="initial_positions"):
        sample_posterior_pyro(
            ppca.model, x, num_samples=5, num_warmup=5, initial_positions=torch.zeros(1, 2, 3)
        )
    # Pyro's initial_params are per-site unconstrained values; the flat layout round-trips
    pot = PerDatapointPotential(_constrained_model, torch.randn(1, 2))
    u = torch.randn(3)
    params = _unflatten_unconstrained(u, pot.layout)
    values = {s.name: s.transform(params[s.name]) for s in pot.layout.sites}
    torch.testing.assert_close(pot.layout.flatten(values)[0], u, atol=1e-5, rtol=1e-5)
