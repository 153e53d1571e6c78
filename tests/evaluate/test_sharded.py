"""Sharded marginal likelihoods: seeded blocks, 2 gloo ranks against one process, exact merge."""

import math

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
