import math

import arviz as az
import numpy as np
import pytest
import torch

from pyro_aevb.mcmc import hmc, sample
from pyro_aevb.mcmc.potential import PerDatapointPotential


def _std_normal(u):
    return 0.5 * (u * u).sum(-1)


def _ess(draws: np.ndarray) -> np.ndarray:
    """ArviZ ESS for the mean of (chain, draw, ...) arrays."""
    return az.ess(az.convert_to_dataset(draws), method="mean")["x"].values


def test_batched_hmc_matches_exact_gaussian_posterior(ppca):
    x = ppca.simulate(3)
    chains = 8
    pot = PerDatapointPotential(ppca.model, x, num_chains=chains, guide=ppca.guide)
    init, _ = pot.sample_guide()
    res = sample(
        pot,
        init,
        num_samples=300,
        num_warmup=150,
        num_chains=chains,
        generator=torch.Generator().manual_seed(1),
    )
    assert res.samples.shape == (300, 3 * chains, 2)
    draws = res.by_chain(res.samples).numpy()  # (C, S, B, D)
    mean, cov = ppca.posterior(x)
    mean, cov = mean.numpy(), cov.numpy()
    sd = np.sqrt(np.diag(cov))
    n = chains * 300
    # means: within 4 Monte Carlo standard errors (ArviZ ESS of each coordinate)
    est_mean = draws.mean((0, 1))
    mc_se = sd / np.sqrt(np.minimum(_ess(draws), n))
    assert np.all(np.abs(est_mean - mean) < 4 * mc_se), (est_mean - mean) / mc_se
    # covariances: each entry is the mean of centred products; its error uses their ESS
    centred = draws - mean
    for i in range(2):
        for j in range(i, 2):
            prod = centred[..., i] * centred[..., j]
            se = prod.std(axis=(0, 1)) / np.sqrt(np.minimum(_ess(prod), n))
            assert np.all(np.abs(prod.mean((0, 1)) - cov[i, j]) < 4 * se), (i, j)
    diag = res.diagnostics()
    assert diag["r_hat"].shape == (3,) and float(diag["r_hat"].max()) < 1.05
    assert int(diag["num_divergent"].sum()) == 0
    assert bool((diag["accept_rate"] > 0.8).all())


def test_step_accepts_and_rejects_per_chain_and_is_pure():
    position = torch.tensor([[1.0, -1.0], [1.0, -1.0], [1.0, -1.0]])
    state = hmc.init(_std_normal, position)
    step_size = torch.tensor([0.1, 0.5, 50.0])
    snapshot = [t.clone() for t in state]
    new, info = hmc.step(
        state,
        _std_normal,
        step_size=step_size,
        num_steps=4,
        generator=torch.Generator().manual_seed(0),
    )
    for before, after in zip(snapshot, state, strict=True):
        torch.testing.assert_close(before, after)
    assert info.accept_prob.shape == (3,)
    assert float(info.accept_prob[0]) > 0.99 and bool(info.accepted[0])
    # a step size of 50 blows the energy up: rejected, divergent, position kept
    assert float(info.accept_prob[2]) < 1e-6 and not bool(info.accepted[2])
    assert bool(info.diverging[2])
    torch.testing.assert_close(new.position[2], position[2])
    torch.testing.assert_close(new.potential, _std_normal(new.position))
    torch.testing.assert_close(new.grad, new.position)
    assert set(new._fields) == {"position", "potential", "grad"}  # step size is an argument


def test_non_finite_proposals_are_rejected():
    def potential(u):
        # finite only for u_0 < 1.5: a proposal past it must be rejected, not propagated
        return torch.where(u[:, 0] < 1.5, 0.5 * (u * u).sum(-1), torch.full_like(u[:, 0], math.nan))

    state = hmc.init(potential, torch.tensor([[1.4, 0.0], [0.0, 0.0]]))
    for seed in range(5):
        state, info = hmc.step(
            state,
            potential,
            step_size=1.0,
            num_steps=3,
            generator=torch.Generator().manual_seed(seed),
        )
        assert bool(torch.isfinite(state.position).all())
        assert bool(torch.isfinite(state.potential).all())
        assert bool((info.accept_prob >= 0).all())


def test_sampling_is_reproducible_and_adaptation_tracks_the_target():
    init = torch.zeros(20, 3)
    kw = {"num_samples": 40, "num_warmup": 150, "adapt_mass": False}
    a = sample(_std_normal, init, generator=torch.Generator().manual_seed(3), **kw)
    b = sample(_std_normal, init, generator=torch.Generator().manual_seed(3), **kw)
    torch.testing.assert_close(a.samples, b.samples)
    low = sample(
        _std_normal, init, target_accept=0.6, generator=torch.Generator().manual_seed(3), **kw
    )
    assert float(low.step_size.mean()) > float(a.step_size.mean())
    assert float(low.accept_rate.mean()) < float(a.accept_rate.mean())
    assert 0.45 < float(low.warmup_accept_rate.mean()) < 0.8
    assert 0.8 < float(a.warmup_accept_rate.mean()) <= 1.0


def test_inference_data_and_shapes():
    res = sample(
        _std_normal,
        torch.zeros(6, 2),
        num_samples=10,
        num_warmup=20,
        num_chains=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert res.batch_size == 3
    idata = res.to_inference_data()
    assert dict(idata.posterior["u"].sizes) == {"chain": 2, "draw": 10, "datapoint": 3, "u_dim": 2}
    assert set(idata.sample_stats) >= {"lp", "acceptance_rate", "diverging", "step_size"}
    assert res.by_chain(res.samples).shape == (2, 10, 3, 2)
    assert res.per_datapoint(res.step_size).shape == (2, 3)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match=r"position must have shape \(num_chains, D\)"):
        hmc.init(_std_normal, torch.zeros(3))
    with pytest.raises(ValueError, match="position contains non-finite"):
        hmc.init(_std_normal, torch.full((2, 2), math.nan))
    with pytest.raises(
        ValueError, match="potential is not finite at the initial position of chain 1"
    ):
        hmc.init(lambda u: u.sum(-1) + torch.tensor([0.0, math.inf]), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"potential_fn must return shape \(num_chains,\)"):
        hmc.init(lambda u: u.sum(), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="num_samples must be an int >= 1, got 0"):
        sample(_std_normal, torch.zeros(2, 2), num_samples=0)
    with pytest.raises(ValueError, match="num_chains=3"):
        sample(_std_normal, torch.zeros(4, 2), num_samples=2, num_chains=3)
    with pytest.raises(ValueError, match=r"step_size_jitter must be in \[0, 1\)"):
        sample(_std_normal, torch.zeros(2, 2), num_samples=2, step_size_jitter=1.0)
    with pytest.raises(ValueError, match=r"target_accept must be in \(0, 1\)"):
        sample(_std_normal, torch.zeros(2, 2), num_samples=2, target_accept=0.0)
    # tensor step sizes and masses: a zero, negative or NaN entry froze its chain silently
    for bad in (torch.tensor([0.1, 0.0]), torch.tensor([0.1, -0.1]), torch.tensor([math.nan])):
        with pytest.raises(ValueError, match="step_size must"):
            sample(_std_normal, torch.zeros(2, 2), num_samples=2, step_size=bad)
    with pytest.raises(ValueError, match=r"inverse_mass must be finite and > 0 .* index \(1, 0\)"):
        sample(_std_normal, torch.zeros(2, 2), num_samples=2,
               inverse_mass=torch.tensor([[1.0, 1.0], [0.0, 1.0]]))  # fmt: skip
    with pytest.raises(ValueError, match=r"inverse_mass must have shape \(2, 2\)"):
        sample(_std_normal, torch.zeros(2, 2), num_samples=2, inverse_mass=torch.ones(2))
    with pytest.raises(ValueError, match="max_delta_energy must be"):
        sample(_std_normal, torch.zeros(2, 2), num_samples=2, max_delta_energy=-1.0)
    state = hmc.init(_std_normal, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="num_steps must be an int >= 1, got 0"):
        hmc.step(state, _std_normal, step_size=0.1, num_steps=0)
    with pytest.raises(ValueError, match=r"step_size_jitter must be in \[0, 1\), got 1.5"):
        hmc.step(state, _std_normal, step_size=0.1, step_size_jitter=1.5)


def test_a_step_size_given_without_adaptation_stays_fixed_through_mass_adaptation():
    res = sample(_std_normal, torch.zeros(3, 2), num_samples=5, num_warmup=150, step_size=0.05,
                 adapt_step_size=False, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.equal(res.step_size, torch.full((3,), 0.05))
    assert not torch.equal(res.inverse_mass, torch.ones(3, 2))  # the mass did adapt


class _FailsOnRow0:
    """0.5 |u|^2 per row, but a Cholesky-style error for the whole batch whenever row 0 is
    past |u_0| = 0.5 (a density undefined there); ``own_grad`` computes its own gradient."""

    def __init__(self, own_grad: bool):
        self.provides_grad = own_grad
        self.failures = 0

    def _check(self, u):
        if float(u[0].abs().max()) > 0.5:
            self.failures += 1
            raise RuntimeError("linalg.cholesky: the input is not positive-definite")

    def __call__(self, u):
        self._check(u)
        return 0.5 * (u * u).sum(-1)

    def potential_and_grad(self, u, need_value=True):
        self._check(u)
        return (0.5 * (u * u).sum(-1) if need_value else None), u.clone()


@pytest.mark.parametrize("own_grad", [False, True])
def test_one_rows_numerical_failure_rejects_only_that_rows_move(own_grad):
    potential = _FailsOnRow0(own_grad)
    state = hmc.init(potential, torch.zeros(4, 2))
    others_accept = []
    for seed in range(20):
        state, info = hmc.step(state, potential, step_size=0.8, num_steps=3,
                               generator=torch.Generator().manual_seed(seed))  # fmt: skip
        assert bool(torch.isfinite(state.position).all())
        assert not bool(info.diverging[1:].any())  # the other chains never see row 0's error
        others_accept.append(info.accept_prob[1:])
    assert potential.failures > 0  # row 0 did hit the error
    assert float(torch.stack(others_accept).mean()) > 0.8  # they move as on N(0, I)


class _FailsAway(_FailsOnRow0):
    """An error whenever any row is past 0.5: with every row moved there, each fails alone."""

    def _check(self, u):
        if float(u.abs().max()) > 0.5:
            self.failures += 1
            raise RuntimeError("linalg.cholesky: the input is not positive-definite")


@pytest.mark.parametrize("own_grad", [False, True])
def test_every_rows_numerical_failure_rejects_every_move_and_keeps_the_shapes(own_grad):
    """Every row fails alone (a pilot's first step sizes): every move is rejected, and the
    gradient filled in keeps the positions' shape (it was (n,), and (n, D) positions became
    (n, n) after the next half step)."""
    potential = _FailsAway(own_grad)
    start = torch.full((3, 2), 0.4)
    state = hmc.init(potential, start)
    state, info = hmc.step(state, potential, step_size=5.0, num_steps=3,
                           generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert potential.failures > 0
    assert state.position.shape == (3, 2) and torch.equal(state.position, start)
    assert not bool(info.accepted.any())
