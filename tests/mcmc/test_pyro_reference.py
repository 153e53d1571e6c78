import arviz as az
import numpy as np
import pytest
import torch
from marginal_helpers import requires_data

from pyro_aevb.mcmc import sample
from pyro_aevb.mcmc.potential import PerDatapointPotential
from pyro_aevb.mcmc.pyro_reference import sample_posterior_pyro


def _mean_and_se(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-coordinate mean of (chain, draw, ...) draws and its MCMC standard error."""
    ess = az.ess(az.convert_to_dataset(draws), method="mean")["x"].values
    n = draws.shape[0] * draws.shape[1]
    return draws.mean((0, 1)), draws.std(axis=(0, 1)) / np.sqrt(np.minimum(ess, n))


def test_pyro_nuts_per_datapoint_recovers_exact_posterior(ppca):
    x = ppca.simulate(2)
    res = sample_posterior_pyro(
        ppca.model, x, num_samples=60, num_warmup=40, num_chains=2, guide=ppca.guide, seed=0
    )
    assert res.samples.shape == (2, 60, 2, 2)
    assert res.constrained["z"].shape == (2, 60, 2, 2)
    idata = res.inference_data
    assert dict(idata.posterior["z"].sizes) == {
        "chain": 2,
        "draw": 60,
        "datapoint": 2,
        "z_dim_0": 2,
    }
    assert "diverging" in idata.sample_stats
    mean, se = _mean_and_se(res.samples.numpy())
    exact, _ = ppca.posterior(x)
    assert np.all(np.abs(mean - exact.numpy()) < 4 * se)
    diag = res.diagnostics()
    assert diag["r_hat"].shape == (2,) and float(diag["r_hat"].max()) < 1.1
    assert bool((diag["step_size"] > 0).all())
    assert res.seconds_per_datapoint > 0


def test_runs_are_reproducible(ppca):
    x = ppca.simulate(1)
    kw = {"kernel": "hmc", "num_samples": 5, "num_warmup": 5, "seed": 3}
    a = sample_posterior_pyro(ppca.model, x, **kw)
    b = sample_posterior_pyro(ppca.model, x, **kw)
    torch.testing.assert_close(a.samples, b.samples)
    assert a.settings["kernel"] == "hmc" and a.settings["num_steps"] == 4


def test_bad_arguments(ppca):
    x = ppca.simulate(1)
    with pytest.raises(ValueError, match="kernel must be one of"):
        sample_posterior_pyro(ppca.model, x, kernel="mala")
    with pytest.raises(ValueError, match="num_samples must be an int >= 1"):
        sample_posterior_pyro(ppca.model, x, num_samples=0)


@requires_data
def test_batched_hmc_and_pyro_nuts_agree_on_a_vae_posterior(mnist_vae, mnist_test):
    """One MNIST test image: the batched sampler and Pyro's NUTS give the same posterior."""
    x = mnist_test[:1]
    nuts = sample_posterior_pyro(
        mnist_vae.model, x, num_samples=200, num_warmup=100, guide=mnist_vae.guide, seed=0
    )
    chains = 4
    pot = PerDatapointPotential(mnist_vae.model, x, num_chains=chains, guide=mnist_vae.guide)
    torch.manual_seed(0)
    init, _ = pot.sample_guide()
    res = sample(
        pot,
        init,
        num_samples=400,
        num_warmup=100,
        num_chains=chains,
        generator=torch.Generator().manual_seed(0),
    )
    m_nuts, se_nuts = _mean_and_se(nuts.samples[:, :, 0].numpy())
    m_hmc, se_hmc = _mean_and_se(res.by_chain(res.samples)[:, :, 0].numpy())
    z = (m_hmc - m_nuts) / np.sqrt(se_nuts**2 + se_hmc**2)
    assert np.all(np.abs(z) < 4), z
    # and the posterior spread agrees (same draws, relative error of the standard deviations)
    sd_nuts = nuts.samples[:, :, 0].reshape(-1, 3).std(0)
    sd_hmc = res.by_chain(res.samples)[:, :, 0].reshape(-1, 3).std(0)
    assert torch.allclose(sd_hmc, sd_nuts, rtol=0.25), (sd_hmc, sd_nuts)


def test_bounds_that_follow_another_latent_are_refused_and_bounds_from_the_data_are_not():
    """Pyro builds each site's transform once: for z ~ Uniform(0, s) with s a latent its
    draws would not be the posterior's, so the reference refuses the model up front, naming
    the site; bounds from the data hold per datapoint and run."""
    from user_models import bounded_by_data, bounded_by_latent

    x = torch.randn(2)
    with pytest.raises(ValueError, match=r"latent site\(s\) \['z'\] follow another latent"):
        sample_posterior_pyro(bounded_by_latent, x, num_samples=2, num_warmup=2)
    res = sample_posterior_pyro(bounded_by_data, x, num_samples=5, num_warmup=5)
    z = res.constrained["z"]
    assert bool(((z > 0) & (z < x.abs() + 1.0)).all())


def test_pyro_hmc_takes_num_steps_leapfrog_steps_at_the_adapted_step_size(ppca, monkeypatch):
    """The paper's 4 leapfrog steps per transition, whatever step size the adaptation finds
    (Pyro's HMC(num_steps=4) keeps step_size * 4 fixed instead)."""
    import pyro.infer.mcmc.hmc as pyro_hmc

    used = []
    original = pyro_hmc.HMC.sample

    def sample(self, params):
        if self._t >= self._warmup_steps:
            used.append(self.num_steps)
        return original(self, params)

    monkeypatch.setattr(pyro_hmc.HMC, "sample", sample)
    x = ppca.simulate(2)
    res = sample_posterior_pyro(
        ppca.model, x, kernel="hmc", num_steps=4, num_samples=10, num_warmup=30, guide=ppca.guide
    )
    assert set(used) == {4}
    # adapted away from 1 (where Pyro's own rule would take int(4 / step_size) steps)
    assert not bool(torch.isclose(res.step_size, torch.ones(())).any())
