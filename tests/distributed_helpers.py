"""Start a few ranks of a gloo process group inside the test suite, and what they run.

:func:`run_ranks` spawns ``nprocs`` processes (``torch.multiprocessing``, start method
"spawn"), each joining one gloo group through a file in the test's ``tmp_path``, with one torch
thread; a failure in any rank fails the test with that rank's traceback. The functions the
ranks run live here, at module level, so that the spawned processes can import them (this
folder is on ``sys.path``; see ``conftest.py``).
"""

from __future__ import annotations

from pathlib import Path

import pyro
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def run_ranks(fn, tmp_path: Path, *args, nprocs: int = 2) -> None:
    """Run ``fn(rank, *args)`` on ``nprocs`` ranks of a fresh gloo process group."""
    init = f"file://{Path(tmp_path) / 'process-group'}"
    mp.spawn(_entry, args=(fn, nprocs, init, args), nprocs=nprocs, join=True)


def _entry(rank: int, fn, nprocs: int, init: str, args: tuple) -> None:
    torch.set_num_threads(1)
    pyro.enable_validation(True)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=nprocs)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------- training cases
def case_data(case: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train (400 rows), test (100 rows))`` for a training case."""
    g = torch.Generator().manual_seed(0)
    if case == "fast":
        x = (torch.rand(500, 30, generator=g, dtype=torch.float64) < 0.3).double()
    else:
        x = torch.randn(500, 6, generator=g)
    return x[:400], x[400:]


def case_model(case: str, seed: int = 0):
    """``fast``: the paper's VAE (float64) on the fused fast path; ``pyro`` (and ``pyro4``, the
    same with 4 RNG shards): a user's model with a global latent and Pyro param-store entries
    (``GlobalNoiseModel``) on stock Pyro."""
    from user_models import GlobalNoiseModel

    from pyro_aevb import mlp_vae

    torch.manual_seed(seed)
    if case == "fast":
        return mlp_vae(30, 3, (16,), init_std=0.1).double()
    return GlobalNoiseModel()


def train_case(case: str, num_samples: int, out_dir=None, *, resume=False, model_seed=0, **kw):
    """Train a case; returns ``(FitResult, {param-store name: value})`` (every trained tensor:
    ``pyro.module`` entries and ``pyro.param`` entries)."""
    from pyro_aevb import fit

    pyro.clear_param_store()
    train, test = case_data(case)
    model = case_model(case, model_seed)
    options = {"estimator": "B", "fast": "on"} if case == "fast" else {"estimator": "A"}
    if case == "pyro4":  # two shards per rank: DDP's no_sync accumulation
        kw.setdefault("shards", 4)
    result = fit(
        model,
        train,
        test,
        batch_size=64,  # 400 = 6 x 64 + 16: every epoch ends with a short minibatch
        lr=0.05,
        seed=7,
        eval_every=400,
        progress=False,
        num_samples=num_samples,
        out_dir=out_dir,
        resume=resume,
        **options,
        **kw,
    )
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
    return result, params


def train_worker(rank: int, case: str, out: Path) -> None:
    """An uninterrupted run of 1200 samples (run directory ``out/straight``), a run stopped at
    600 (``out/half``), and the continuation to 1200 of a run that one process stopped at 600
    (``out/one-half``, written before the ranks start); each rank saves its history and
    parameters."""
    for name, num_samples, resume in (
        ("straight", 1200, False),
        ("half", 600, False),
        ("one-half", 1200, True),
    ):
        result, params = train_case(case, num_samples, out / name, resume=resume, model_seed=rank)
        torch.save(
            {"history": result.history, "params": params, "config": result.config},
            out / f"{name}-rank{rank}.pt",
        )


def gpu_train_worker(rank: int, out: Path) -> None:
    """The fast case on the GPU (``tests/test_cuda.py``): 1200 samples, parameters saved."""
    result, params = train_case("fast", 1200, device="cuda")
    params = {k: v.cpu() for k, v in params.items()}
    torch.save({"history": result.history, "params": params}, out / f"gpu-rank{rank}.pt")


# ---------------------------------------------------------------------------- evaluation cases
#: Small settings of each sharded-evaluation method (the PPCA model of marginal_helpers).
EVAL_CASES = {
    "iwae": {"num_particles": 50},
    "ais": {"num_chains": 4, "num_temps": 20, "pilot_chains": 2},
    "appendix_d": {"num_samples": 20, "num_warmup": 20},
}


def eval_case(method: str, **kw):
    """``log_marginal`` of the first 7 simulated PPCA points with ``method``."""
    from marginal_helpers import PPCA

    from pyro_aevb import log_marginal

    ppca = PPCA()
    x = ppca.simulate(7)
    return log_marginal(ppca.model, ppca.guide, x, method, seed=3, **EVAL_CASES[method], **kw)


def eval_worker(rank: int, out: Path) -> None:
    """Every method over the ranks in blocks of 3 rows (7 rows: blocks of 3, 3 and 1)."""
    results = {m: eval_case(m, block_size=3) for m in EVAL_CASES}
    saved = {
        m: {
            "estimate": r.estimate,
            "stderr": r.stderr,
            "settings": r.settings,
            "diagnostics": {k: v for k, v in r.diagnostics.items() if torch.is_tensor(v)},
        }
        for m, r in results.items()
    }
    torch.save(saved, out / f"eval-rank{rank}.pt")


class BatchNormModel(torch.nn.Module):
    """``z_i ~ N(0, I_2)``, ``x_i ~ N(W z_i, I)``; the guide's encoder has a BatchNorm layer."""

    def __init__(self, d: int = 6):
        super().__init__()
        self.W = torch.nn.Linear(2, d)
        self.enc = torch.nn.Sequential(torch.nn.Linear(d, 8), torch.nn.BatchNorm1d(8))
        self.head = torch.nn.Linear(8, 2)

    def model(self, x):
        import pyro.distributions as pdist

        pyro.module("bn_model", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pdist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", pdist.Normal(self.W(z), 1.0).to_event(1), obs=x)

    def guide(self, x):
        import pyro.distributions as pdist

        pyro.module("bn_model", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pdist.Normal(self.head(self.enc(x)), 0.5).to_event(1))


def batchnorm_worker(rank: int, out: Path) -> None:
    """8 steps of the BatchNorm model on 2 ranks; each rank saves its BatchNorm buffers."""
    from pyro_aevb import fit

    pyro.clear_param_store()
    torch.manual_seed(0)
    m = BatchNormModel()
    x = torch.randn(80, 6, generator=torch.Generator().manual_seed(0))
    fit(m.model, x, guide=m.guide, num_samples=80, batch_size=10, progress=False, distributed=True)
    torch.save(dict(m.enc[1].named_buffers()), out / f"bn-rank{rank}.pt")


def mismatch_worker(rank: int, out: Path) -> None:
    """Ranks given different data (rank 1's rows reversed: the same size) or different
    estimators: each saves the error it gets (all ranks raise together, none waits)."""
    from pyro_aevb import fit

    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    errors = {}
    for case, data, estimator in (
        ("data", x if rank == 0 else x.flip(0), "A"),
        ("estimator", x, "A" if rank == 0 else "B"),
    ):
        pyro.clear_param_store()
        m = case_model("pyro")
        try:
            fit(
                m.model,
                data,
                guide=m.guide,
                estimator=estimator,
                num_samples=40,
                batch_size=10,
                progress=False,
                distributed=True,
            )
        except ValueError as err:
            errors[case] = str(err)
    # each rank resumes from its own folder, at another point of the run (not a shared out_dir)
    own = out / f"own-rank{rank}"
    kw = dict(guide=None, num_samples=40 * (rank + 1), batch_size=10, progress=False, out_dir=own)
    for distributed, resume in ((False, False), (True, True)):
        pyro.clear_param_store()
        m = case_model("pyro")
        kw.update(guide=m.guide, distributed=distributed, resume=resume)
        if resume:
            kw["num_samples"] = 120
        try:
            fit(m.model, x, **kw)
        except ValueError as err:
            errors["checkpoint"] = str(err)
    torch.save(errors, out / f"mismatch-rank{rank}.pt")


def one_rank_signalled_worker(rank: int, out: Path) -> None:
    """Rank 1 alone gets SIGTERM in its third step; each rank saves what it was told."""
    import os
    import signal

    from pyro_aevb import fit
    from pyro_aevb.train.distributed import DataParallelObjective
    from pyro_aevb.train.interrupt import TrainingInterrupted

    step = DataParallelObjective.train_step
    calls = []

    def signalled_step(self, *args, **kwargs):
        calls.append(None)
        if rank == 1 and len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # deferred by the trainer to the step's end
        return step(self, *args, **kwargs)

    DataParallelObjective.train_step = signalled_step
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(0))
    m = case_model("pyro")
    try:
        fit(
            m.model,
            x,
            guide=m.guide,
            num_samples=2000,
            batch_size=10,
            progress=False,
            distributed=True,
            out_dir=out / "run",
        )
    except TrainingInterrupted as err:
        told = {"signum": int(err.signum), "checkpoint": str(err.checkpoint)}
        torch.save(told, out / f"signal-rank{rank}.pt")
