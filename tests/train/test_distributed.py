"""Data-parallel training: 2 gloo ranks against one process, resume across world sizes,
RNG shards, and the errors of configurations that cannot be sharded."""

import json

import pytest
import torch
from distributed_helpers import (
    batchnorm_worker,
    case_model,
    mismatch_worker,
    one_rank_signalled_worker,
    run_ranks,
    train_case,
    train_worker,
)

from pyro_aevb import fit, mlp_vae
from pyro_aevb.infer.objectives import WakeSleep
from pyro_aevb.train import distributed as distributed_module
from pyro_aevb.train.distributed import ShardScale, derive_seed, shard_bounds

# float64 on the fast path: the split sums differ from one process's only by rounding;
# float32 on the stock-Pyro path (the user model's pyro.param entries are float32)
TOLERANCE = {
    "fast": {"rtol": 1e-10, "atol": 1e-12},
    "pyro": {"rtol": 2e-5, "atol": 1e-6},
    "pyro4": {"rtol": 2e-5, "atol": 1e-6},
}
SHARDS = {"fast": None, "pyro": 2, "pyro4": 4}


def _close(a, b, case):
    return torch.allclose(torch.as_tensor(a), torch.as_tensor(b), **TOLERANCE[case])


@pytest.mark.parametrize("case", ["fast", "pyro", "pyro4"])
def test_two_ranks_train_like_one_process_and_resume_in_one(tmp_path, case):
    # one process stops a run at 600 samples; the ranks will continue it
    shards = SHARDS[case]
    train_case(case, 600, tmp_path / "one-half", shards=shards)
    # (the ranks start from different initial values: rank 0's are broadcast)
    run_ranks(train_worker, tmp_path, case, tmp_path)
    ranks = [torch.load(tmp_path / f"straight-rank{r}.pt", weights_only=False) for r in (0, 1)]

    # the ranks hold exactly the same parameters and the same history
    for name, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][name]), name
    assert [h["loss"] for h in ranks[0]["history"]] == [h["loss"] for h in ranks[1]["history"]]
    assert ranks[0]["config"]["data_parallel"] == {
        "world_size": 2,
        "shards": shards or 2,
        "backend": "gloo",
    }
    assert ranks[0]["config"]["path"] == case[:4]
    saved = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert saved["data_parallel"]["world_size"] == 2

    # one process at the same global batch and seed follows the same trajectory (the stock
    # path computes its minibatch as the same 2 shards with the same streams)
    single, single_params = train_case(case, 1200, shards=shards)
    parallel = ranks[0]["history"]
    assert [h["samples"] for h in single.history] == [h["samples"] for h in parallel]
    assert [h["samples"] for h in parallel] == [400, 800, 1200]
    for h1, hp in zip(single.history, parallel, strict=True):
        assert _close(h1["loss"], hp["loss"], case)
        assert _close(h1["test_bound"], hp["test_bound"], case)
    for name, value in single_params.items():
        assert _close(value, ranks[0]["params"][name], case), name
    # training moved the parameters well beyond the tolerance
    assert parallel[-1]["loss"] < parallel[0]["loss"] - 0.1

    # a checkpoint written by 2 ranks at 600 samples continues in one process exactly as the
    # uninterrupted 2-rank run (the stock path keeps its 2 shards from the checkpoint)
    resumed, resumed_params = train_case(case, 1200, tmp_path / "half", resume=True, model_seed=5)
    if shards:
        assert resumed.config["data_parallel"] == {
            "world_size": 1,
            "shards": shards,
            "backend": None,
        }
    else:  # the fast path needs no shards: the resumed run is a plain one-process run
        assert "data_parallel" not in resumed.config
    by_samples = {h["samples"]: h for h in resumed.history}
    for h in parallel[1:]:
        assert _close(by_samples[h["samples"]]["test_bound"], h["test_bound"], case)
    # a history's loss is the mean since the previous record (the resumed run has one at 600)
    assert _close(resumed.history[-1]["loss"], parallel[-1]["loss"], case)
    for name, value in resumed_params.items():
        assert _close(value, ranks[0]["params"][name], case), name

    # and the other way round: 2 ranks continue a one-process checkpoint
    continued = torch.load(tmp_path / "one-half-rank0.pt", weights_only=False)
    for name, value in continued["params"].items():
        assert _close(value, ranks[0]["params"][name], case), name
    assert _close(continued["history"][-1]["test_bound"], parallel[-1]["test_bound"], case)


def test_shards_in_one_process_resume_bit_for_bit(tmp_path):
    """With RNG shards the stock path's draws depend on (seed, step, shard): a resumed run
    equals the uninterrupted one exactly."""
    straight, p_straight = train_case("pyro", 1200, tmp_path / "a", shards=3)
    train_case("pyro", 600, tmp_path / "b", shards=3)
    resumed, p_resumed = train_case("pyro", 1200, tmp_path / "b", resume=True, model_seed=9)
    for name, value in p_straight.items():
        assert torch.equal(value, p_resumed[name]), name
    by_samples = {h["samples"]: h for h in resumed.history}
    assert [h["test_bound"] for h in straight.history] == [
        by_samples[n]["test_bound"] for n in (400, 800, 1200)
    ]
    # (a history's loss is the mean since the previous record: the resumed run has one at 600)
    assert straight.history[-1]["loss"] == resumed.history[-1]["loss"]
    assert resumed.config["data_parallel"] == {"world_size": 1, "shards": 3, "backend": None}


def test_shard_bounds_and_seeds():
    assert shard_bounds(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert shard_bounds(64, 2) == [(0, 32), (32, 64)]
    bounds = shard_bounds(16, 5)
    assert [b - a for a, b in bounds] == [4, 3, 3, 3, 3] and bounds[-1][1] == 16
    seeds = {derive_seed(7, 1, step, k) for step in range(50) for k in range(4)}
    assert len(seeds) == 200 and all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(7, 1, 2, 3) == derive_seed(7, 1, 2, 3)


def test_shard_scale_multiplies_only_data_plate_sites():
    import pyro
    import pyro.distributions as dist
    import pyro.poutine as poutine

    def model(x):
        pyro.sample("g", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    with ShardScale("data", 2.5):
        trace = poutine.trace(model).get_trace(torch.zeros(3))
    assert trace.nodes["g"]["scale"] == 1.0
    assert trace.nodes["x"]["scale"] == 2.5


def test_configurations_that_cannot_be_sharded_are_refused(monkeypatch):
    x = (torch.rand(100, 30) < 0.3).float()
    vae = mlp_vae(30, 3, (16,))
    with pytest.raises(ValueError, match="WakeSleep trains in one process: leave out --nproc"):
        fit(vae, x, objective=WakeSleep(), shards=2, num_samples=100, progress=False)
    with pytest.raises(ValueError, match="batch_size=3 is smaller than the 4 shards"):
        fit(vae, x, fast="off", shards=4, batch_size=3, num_samples=100, progress=False)
    with pytest.raises(ValueError, match="last minibatch of each epoch has 2 row"):
        fit(vae, x, fast="off", shards=3, batch_size=49, num_samples=100, progress=False)
    # under 2 ranks, a shard count that 2 does not divide
    monkeypatch.setattr(distributed_module, "world", lambda: (0, 2))
    with pytest.raises(ValueError, match="shards=3 cannot be split over 2 ranks"):
        fit(vae, x, fast="off", shards=3, num_samples=100, progress=False)
    with pytest.raises(ValueError, match="no torch.distributed process group"):
        fit(vae, x, distributed=True, num_samples=100, progress=False)


def test_fast_path_shards_average_to_the_whole_minibatch():
    """Two ranks' fast-path shards (noise drawn for the whole minibatch, scale P N / M, the
    weight prior on each) average to one process's loss and gradients on the same draws."""
    from marginal_helpers import bound_objective

    from pyro_aevb.infer.objectives import ELBO

    torch.manual_seed(0)
    vae = mlp_vae(30, 3, (16,), init_std=0.3, weight_prior_std=1.0).double()
    x = (torch.rand(37, 30, dtype=torch.float64) < 0.3).double()
    kernel = bound_objective(ELBO("B", num_particles=2), vae, 400, x, fast="on").kernel
    torch.manual_seed(5)
    whole = float(kernel.loss_and_grads(x, 400))
    expected = [p.grad.clone() for p in kernel.params]
    losses, grads = [], [torch.zeros_like(g) for g in expected]
    for start, stop in shard_bounds(37, 2):
        torch.manual_seed(5)  # every rank's global RNG is in the same state
        loss = kernel.loss_and_grads(x[start:stop], 400, scale=2 * 400 / 37, noise_rows=(start, 37))
        losses.append(float(loss))
        for acc, p in zip(grads, kernel.params, strict=True):
            acc += p.grad / 2
    assert sum(losses) / 2 == pytest.approx(whole, rel=1e-13)
    for g, e in zip(grads, expected, strict=True):
        assert torch.allclose(g, e, rtol=1e-11, atol=1e-13)
    with pytest.raises(ValueError, match="noise_rows=\\(30, 37\\) does not hold the 10 rows"):
        kernel.loss_and_grads(x[:10], 400, noise_rows=(30, 37))


def test_a_one_process_run_resumed_under_ranks_that_cannot_split_it_says_so(
    tmp_path, monkeypatch, caplog
):
    """A checkpoint without a data_parallel entry was trained unsharded (shards=1): two ranks
    cannot continue its streams, so the resume takes 2 shards and warns that the draws
    differ from an uninterrupted run (it used to switch silently)."""
    import logging

    x = torch.randn(60, 6)
    m = case_model("pyro")
    fit(m.model, x, guide=m.guide, num_samples=60, batch_size=20, out_dir=tmp_path, progress=False)

    class Taken(Exception):
        pass

    def stub(objective, *, shards, **kwargs):
        raise Taken(shards)

    monkeypatch.setattr(distributed_module, "world", lambda: (0, 2))
    monkeypatch.setattr(distributed_module, "resolve_distributed", lambda d, name="": True)
    monkeypatch.setattr(distributed_module, "check_same_settings", lambda *s: None)
    monkeypatch.setattr(distributed_module, "DataParallelObjective", stub)
    with caplog.at_level(logging.WARNING, logger="pyro_aevb"), pytest.raises(Taken) as taken:
        fit(
            m.model,
            x,
            guide=m.guide,
            num_samples=120,
            batch_size=20,
            out_dir=tmp_path,
            resume=True,
            progress=False,
        )
    assert taken.value.args == (2,)
    assert "trained with shards=1, which 2 ranks cannot split" in caplog.text


def test_two_ranks_update_batchnorm_statistics_once_per_step(tmp_path):
    """DDP's set-up pass (which finds the parameters without a gradient) leaves the buffers
    alone: 8 steps update BatchNorm's statistics 8 times (the pass made it 9 on every new
    Trainer, so a resumed run was not its uninterrupted self)."""
    run_ranks(batchnorm_worker, tmp_path, tmp_path)
    for rank in (0, 1):
        buffers = torch.load(tmp_path / f"bn-rank{rank}.pt")
        assert int(buffers["num_batches_tracked"]) == 8


def test_ranks_given_other_data_or_another_estimator_all_refuse_naming_it(tmp_path):
    run_ranks(mismatch_worker, tmp_path, tmp_path)
    for rank in (0, 1):
        errors = torch.load(tmp_path / f"mismatch-rank{rank}.pt")
        assert "different training settings (data: rank 0" in errors["data"]
        assert "different training settings (training: rank 0" in errors["estimator"]
        assert "different checkpoints to resume from" in errors["checkpoint"]
        assert "progress: rank 0 (4, 40, " in errors["checkpoint"]


def test_a_signal_that_reaches_one_rank_stops_all_naming_it_and_the_checkpoint(tmp_path):
    """SIGTERM to rank 1 alone: both ranks stop at the same step, both name SIGTERM (rank 0
    said SIGINT), and both name the checkpoint rank 0 saved (rank 1 said none)."""
    import signal

    run_ranks(one_rank_signalled_worker, tmp_path, tmp_path)
    told = [torch.load(tmp_path / f"signal-rank{rank}.pt") for rank in (0, 1)]
    checkpoint = str(tmp_path / "run" / "checkpoint.pt")
    assert told == [{"signum": int(signal.SIGTERM), "checkpoint": checkpoint}] * 2
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
