"""The vectorised ESS / R-hat of ``pyro_aevb.mcmc.diagnostics`` against ArviZ itself.

Everything is float64, so agreement is to ``rtol=1e-10``: the only differences are rounding
(torch's FFT, sums and ``ndtri`` vs numpy's / scipy's), about ``1e-15`` relative.
"""

import logging

import arviz as az
import numpy as np
import pytest
import torch

from pyro_aevb.mcmc import ess_mean, ess_rhat

RTOL = 1e-10
PHIS = (-0.95, -0.7, 0.0, 0.3, 0.9, 0.99)  # AR(1) correlations, several series each


@pytest.fixture(autouse=True)
def _quiet_arviz():
    """ArviZ logs a warning for every NaN series and for single-chain R-hat shapes."""
    logger = logging.getLogger("arviz")
    level = logger.level
    logger.setLevel(logging.ERROR)
    with np.errstate(all="ignore"):
        yield
    logger.setLevel(level)


def _az(arr: np.ndarray, method: str) -> np.ndarray:
    """ArviZ per series of a ``(C, S, *T)`` array: ESS by ``method`` or ``"rhat"``."""
    ds = az.convert_to_dataset(arr)
    out = az.rhat(ds) if method == "rhat" else az.ess(ds, method=method)
    return out["x"].values


def _ar1(rng, chains, draws, phis=PHIS, reps=2) -> np.ndarray:
    """AR(1) chains ``(C, S, len(phis) * reps)`` started from their stationary law."""
    phi = np.repeat(np.asarray(phis), reps)
    x = np.empty((chains, draws, phi.size))
    x[:, 0] = rng.standard_normal((chains, phi.size))
    for t in range(1, draws):
        x[:, t] = phi * x[:, t - 1] + np.sqrt(1 - phi**2) * rng.standard_normal(x[:, t].shape)
    return x + rng.standard_normal(phi.size)  # chains of one series share their offset


def _metropolis(rng, chains, draws, series, scale=6.0) -> np.ndarray:
    """Random-walk Metropolis on N(0, 1) with a big step: most proposals are rejected, so
    the chains repeat positions exactly (ties), as HMC rejections do."""
    x = np.empty((chains, draws, series))
    cur = rng.standard_normal((chains, series))
    for t in range(draws):
        prop = cur + scale * rng.standard_normal(cur.shape)
        accept = np.log(rng.uniform(size=cur.shape)) < 0.5 * (cur**2 - prop**2)
        cur = np.where(accept, prop, cur)
        x[:, t] = cur
    return x


def _check(ours: torch.Tensor, ref: np.ndarray) -> float:
    ours = ours.numpy()
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=0)
    ok = ~np.isnan(ref)
    return float(np.max(np.abs(ours[ok] / ref[ok] - 1), initial=0.0))


def _check_all(arr: np.ndarray) -> None:
    """Per-series bulk ESS, R-hat and mean ESS of a ``(C, S, K)`` array against ArviZ."""
    res = ess_rhat(torch.from_numpy(arr[..., None]))  # D = 1: no reduction
    _check(res["ess_bulk"], _az(arr, "bulk"))
    if arr.shape[0] > 1:
        _check(res["r_hat"], _az(arr, "rhat"))
    else:
        assert "r_hat" not in res
    _check(ess_mean(torch.from_numpy(arr)), _az(arr, "mean"))


@pytest.mark.parametrize("chains", [1, 2, 4])
@pytest.mark.parametrize("draws", [4, 5, 7, 50, 51, 200])
def test_ar1_matches_arviz(chains, draws):
    rng = np.random.default_rng(1000 * chains + draws)
    _check_all(_ar1(rng, chains, draws))


@pytest.mark.parametrize("chains", [1, 2, 4])
@pytest.mark.parametrize("draws", [7, 50, 51, 200])
def test_ties_match_arviz(chains, draws):
    rng = np.random.default_rng(7 * chains + draws)
    mh = _metropolis(rng, chains, draws, 6)
    assert np.mean(mh[:, 1:] == mh[:, :-1]) > 0.5  # mostly rejections
    rounded = np.round(_ar1(rng, chains, draws, phis=(0.0, 0.8), reps=2), 1)
    coarse = rng.integers(0, 3, size=(chains, draws, 2)).astype(float)  # few distinct values
    _check_all(np.concatenate([mh, rounded, coarse], axis=-1))


@pytest.mark.parametrize("draws", [50, 51])
def test_special_series_match_arviz(draws):
    rng = np.random.default_rng(draws)
    c = 2
    base = rng.standard_normal((c, draws, 9))
    base[..., 0] = 1.5  # constant: ESS = number of split values
    base[..., 1] = 1.5
    base[:, draws // 2, 1] = 3.0  # odd S: constant once split (middle draw dropped)
    base[0, 3, 2] = np.nan  # a NaN draw
    base[..., 3] = rng.integers(0, 2, size=(c, draws)) * 4e-16  # span < resolution: mean only
    base[1, 5, 4] = np.inf  # one infinite draw
    base[:, : 3 * draws // 4, 5] = np.inf  # infinite median: ArviZ's tail R-hat is NaN
    base[..., 6] *= 1e160  # variance overflows: every rho is NaN for the mean ESS
    base[0, :, 7] += 10.0  # a chain stuck elsewhere: large R-hat
    base[..., 8] = np.where(np.arange(draws) % 2, 1.0, -1.0)  # alternating: rho_1 = -1
    _check_all(base)
    res = ess_rhat(torch.from_numpy(base[..., None]))
    if draws % 2:
        assert res["ess_bulk"][1] == 2 * c * (draws // 2)
    assert res["ess_bulk"][0] == 2 * c * (draws // 2)
    assert torch.isnan(res["ess_bulk"][2]) and torch.isnan(res["r_hat"][2])
    assert res["r_hat"][7] > 1.5
    assert torch.isnan(ess_mean(torch.from_numpy(base))[6])


def test_float32_input():
    rng = np.random.default_rng(3)
    arr = _ar1(rng, 2, 50).astype(np.float32)
    res = ess_rhat(torch.from_numpy(arr[..., None]))
    # ess_rhat works on the draws in float64, as it always has: compare with ArviZ there
    arr64 = arr.astype(np.float64)
    _check(res["ess_bulk"], _az(arr64, "bulk"))
    _check(res["r_hat"], _az(arr64, "rhat"))
    # ArviZ's mean ESS itself casts to float64
    _check(ess_mean(torch.from_numpy(arr)), _az(arr, "mean"))


def test_too_few_draws():
    arr = np.random.default_rng(0).standard_normal((2, 3, 4, 2))
    assert ess_rhat(torch.from_numpy(arr)) == {}
    ref = _az(arr[..., 0], "mean")
    assert np.isnan(ref).all()
    out = ess_mean(torch.from_numpy(arr))
    assert out.shape == (4, 2) and torch.isnan(out).all()


def test_ess_rhat_reduces_over_coordinates():
    rng = np.random.default_rng(5)
    c, s, b, d = 4, 50, 5, 3
    arr = _ar1(rng, c, s, phis=(0.0, 0.5, 0.9), reps=5).reshape(c, s, b, d)
    arr[0, 7, 1, 2] = np.nan  # one coordinate of datapoint 1
    arr[1, 3, 2, :] = np.nan  # every coordinate of datapoint 2
    res = ess_rhat(torch.from_numpy(arr))
    ess = _az(arr, "bulk")
    rhat = _az(arr, "rhat")
    ok = [0, 1, 3, 4]
    _check(res["ess_bulk"][ok], np.nanmin(ess[ok], axis=-1))
    _check(res["r_hat"][ok], np.nanmax(rhat[ok], axis=-1))
    assert torch.isnan(res["ess_bulk"][2]) and torch.isnan(res["r_hat"][2])
    assert res["ess_bulk"].shape == res["r_hat"].shape == (b,)
    assert res["ess_bulk"].dtype == torch.float64
    assert "r_hat" not in ess_rhat(torch.from_numpy(arr), rhat=False)
    assert "r_hat" not in ess_rhat(torch.from_numpy(arr[:1]))


def test_ess_mean_trailing_shape():
    rng = np.random.default_rng(6)
    arr = _ar1(rng, 2, 51, phis=(0.2, 0.7), reps=3).reshape(2, 51, 2, 3)
    out = ess_mean(torch.from_numpy(arr))
    assert out.shape == (2, 3)
    _check(out, _az(arr, "mean"))


def test_blocks_of_series_give_the_same_numbers(monkeypatch):
    """Series are processed in blocks of bounded size: any block size gives the same result."""
    from pyro_aevb.mcmc import diagnostics

    rng = np.random.default_rng(7)
    arr = _ar1(rng, 2, 20, reps=4).reshape(2, 20, 8, 3)
    arr[1, 5, 2, 1] = np.nan
    draws = torch.from_numpy(arr)
    whole = ess_rhat(draws)
    whole_mean = ess_mean(draws)
    monkeypatch.setattr(diagnostics, "_CHUNK_VALUES", 2 * 20 * 5)  # blocks of 5 series
    blocks = ess_rhat(draws)
    for key in ("ess_bulk", "r_hat"):
        torch.testing.assert_close(blocks[key], whole[key], equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(ess_mean(draws), whole_mean, equal_nan=True, rtol=0, atol=0)
    empty = ess_rhat(torch.zeros(2, 20, 0, 3))
    assert empty["ess_bulk"].shape == (0,)
