"""Sharded marginal likelihoods: seeded blocks, 2 gloo ranks against one process, exact merge."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from distributed_helpers import EVAL_CASES, eval_case, eval_worker, run_ranks

from pyro_aevb import log_marginal
from pyro_aevb.evaluate import sharded
from pyro_aevb.evaluate.sharded import block_bounds, block_seed, merge_means
from pyro_aevb.train import distributed as distributed_module


def test_two_ranks_give_the_per_datapoint_estimates_of_one_process(tmp_path):
    run_ranks(eval_worker, tmp_path, tmp_path)
    ranks = [torch.load(tmp_path / f"eval-rank{r}.pt", weights_only=False) for r in (0, 1)]
    for method in EVAL_CASES:
        one = eval_case(method, block_size=3)
        for rank in ranks:
            got = rank[method]
            # the same arithmetic on the same rows with the same seeds (one torch thread in the
            # ranks, possibly more here: equal up to the last bits of a float64 sum)
            assert torch.allclose(got["estimate"], one.estimate, rtol=1e-12, atol=1e-12), method
            assert torch.allclose(got["stderr"], one.stderr, rtol=1e-9, atol=1e-12), method
            assert got["settings"]["num_blocks"] == 3 and got["settings"]["block_size"] == 3
            for key, value in got["diagnostics"].items():
                if value.shape[:1] == (7,) and value.is_floating_point():
                    assert torch.allclose(value, one.diagnostics[key], rtol=1e-6, equal_nan=True)
        assert one.estimate.shape == (7,) and torch.isfinite(one.estimate).all()


def test_blocks_are_independently_seeded_estimates_of_their_rows(ppca):
    x = ppca.simulate(7)
    kw = dict(seed=3, num_particles=50)
    blocked = log_marginal(ppca.model, ppca.guide, x, "iwae", block_size=3, **kw)
    for k, (start, stop) in enumerate(block_bounds(7, 3)):
        alone = log_marginal(
            ppca.model, ppca.guide, x[start:stop], "iwae", **{**kw, "seed": block_seed(3, k)}
        )
        assert torch.equal(blocked.estimate[start:stop], alone.estimate)
        assert torch.equal(blocked.stderr[start:stop], alone.stderr)
        assert torch.equal(blocked.diagnostics["ess"][start:stop], alone.diagnostics["ess"])
    assert blocked.settings["seed"] == 3 and blocked.settings["num_blocks"] == 3
    # a proper estimate: IWAE is a lower bound near the exact log p(x) of PPCA
    exact = ppca.log_marginal(x)
    assert (blocked.estimate - exact).abs().max() < 0.5
    # the merged mean and its error are those of the per-part summaries
    parts = [
        (stop - start, float(blocked.estimate[start:stop].double().mean()), 0.0)
        for start, stop in block_bounds(7, 3)
    ]
    for i, (start, stop) in enumerate(block_bounds(7, 3)):
        se = blocked.stderr[start:stop].double()
        parts[i] = (parts[i][0], parts[i][1], float(se.pow(2).sum().sqrt() / se.numel()))
    mean, stderr = merge_means(parts)
    assert math.isclose(mean, blocked.mean(), rel_tol=1e-14)
    assert math.isclose(stderr, blocked.mean_stderr(), rel_tol=1e-12)


def test_block_seeds_differ_and_a_group_needs_a_block_size(ppca, monkeypatch):
    assert len({block_seed(0, k) for k in range(100)}) == 100
    assert block_seed(0, 1) != block_seed(1, 1)
    assert block_bounds(7, 3) == [(0, 3), (3, 6), (6, 7)]
    monkeypatch.setattr(distributed_module, "world", lambda: (0, 2))
    monkeypatch.setattr(sharded, "world", lambda: (0, 2))
    with pytest.raises(ValueError, match="needs block_size="):
        log_marginal(ppca.model, ppca.guide, ppca.simulate(4), "iwae", num_particles=5)
    with pytest.raises(ValueError, match="block_size must be"):
        log_marginal(
            ppca.model, ppca.guide, ppca.simulate(4), "iwae", block_size=0, distributed=False
        )


def _normal_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0]), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _guide_bad_above_5(x):
    """The exact posterior N(x/2, 1/2), except a poor proposal for rows with x > 5."""
    loc = torch.where(x > 5, torch.full_like(x, -10.0), 0.5 * x)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc, math.sqrt(0.5)))


def test_warnings_about_unreliable_rows_name_them_among_all_rows_once(caplog):
    x = torch.zeros(12)
    x[9] = 8.0  # only row 9 has a poor proposal; blocks of 4: it is row 1 of block 2
    with caplog.at_level("WARNING", logger="pyro_aevb"):
        log_marginal(_normal_model, _guide_bad_above_5, x, "iwae", num_particles=50, block_size=4)
    flagged = [r.getMessage() for r in caplog.records if "effective weights" in r.getMessage()]
    assert len(flagged) == 1
    assert "1 of 12 datapoints" in flagged[0] and "(first: [9])" in flagged[0]


def test_an_option_with_as_many_entries_as_rows_is_not_cut_into_blocks():
    """A grid of KDE bandwidths that happens to have one entry per row is the same for
    every block (only per-datapoint options such as BDMC's z are cut)."""

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.5 * x, math.sqrt(0.5)))

    x = torch.linspace(-2, 2, 6)
    grid = torch.tensor([0.01, 0.02, 0.04, 0.3, 0.6, 1.2])
    kw = dict(density="kde", bandwidths=grid, num_samples=40, num_warmup=50, seed=0)
    blocked = log_marginal(_normal_model, guide, x, "appendix_d", block_size=3, **kw)
    assert torch.equal(blocked.settings["bandwidths"], grid)
    assert "block_settings" not in blocked.settings
