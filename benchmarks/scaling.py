#!/usr/bin/env python
"""Scaling beyond one CPU: data-parallel training and sharded AIS on ``torch.distributed``, and
training speed on one GPU. A script, not a test.

Rows (the paper's MNIST model, 784-500-20, Bernoulli decoder, N(0, I) weight prior, Adagrad
step size 0.02, estimator B on the fused fast path, batch 100):

* ``train 1 process x 1 thread``  -- the trainer's samples/s in one process, one torch thread;
* ``train 1 process x 2 threads`` -- the same with two torch threads (intra-op parallelism);
* ``train 2 ranks x 1 thread``    -- two gloo ranks, one thread each, data-parallel
  (:mod:`pyro_aevb.train.distributed`: each rank computes half of every global minibatch of
  100, then the gradients are all-reduced). Reported with its *scaling efficiency*
  ``rate(2 ranks) / (2 x rate(1 x 1))`` and its ratio to ``1 process x 2 threads``.
* ``ais 1 rank`` / ``ais 2 ranks`` -- datapoints/s of sharded AIS (``log_marginal(...,
  "ais", block_size=...)``; 16 chains x 100 temperatures by default) on test points, one
  thread per rank; the two runs must give the same per-datapoint estimates (checked and
  recorded).
* ``gpu ...`` -- on one CUDA GPU, samples/s of the fast path (the trainer's step), stock Pyro
  (``SVI`` + ``Trace_ELBO``) and a hand-written PyTorch loop (``benchmarks/speed.py``'s
  reference model) at batch 100 and 1000; "not measured" without a GPU.

Training rates come from the trainer's own clock (``history[i]["train_seconds"]``: time inside
training steps, all-reduces included, evaluations and start-up excluded), taken between an
evaluation after ``--warmup`` samples and the end of the run. Each configuration is measured
``--repeats`` times (the one-process configurations interleaved in this process; the 2-rank
configuration in a spawned gloo group) and the median is reported.

**What the numbers mean on a small machine.** With 2 cores, "2 ranks x 1 thread" and
"1 process x 2 threads" use the same two cores: the comparison says whether splitting the
minibatch across processes (plus an all-reduce of the ~1.6 M gradient values every step) uses
two cores better or worse than torch's intra-op threads, and the efficiency against
``2 x (1 x 1)`` is bounded by how well two processes share the machine's caches and memory
bandwidth; it is not a measure of multi-node scaling, where the all-reduce crosses a network.

Data: MNIST from ``PYRO_AEVB_DATA`` if available, else the embedded MNIST slice.

Usage::

    python benchmarks/scaling.py --json benchmarks/results/scaling.json   # full (~10 min)
    python benchmarks/scaling.py --quick --json /tmp/scaling.json         # smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------- settings
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny budgets (smoke test)")
    p.add_argument("--warmup", type=int, default=2000, help="samples before timing starts")
    p.add_argument("--samples", type=int, default=30000, help="timed training samples")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--hidden", type=int, default=500)
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--ais-points", type=int, default=200, help="test points for AIS")
    p.add_argument("--ais-block", type=int, default=25, help="block_size of sharded AIS")
    p.add_argument("--ais-chains", type=int, default=16)
    p.add_argument("--ais-temps", type=int, default=100)
    p.add_argument("--gpu-steps", type=int, default=200, help="timed steps per GPU variant")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.warmup, args.samples, args.repeats = 200, 400, 1
        args.ais_points, args.ais_block, args.ais_chains, args.ais_temps = 8, 4, 2, 5
        args.gpu_steps = 5
    return args


def load_data():
    """``(train, test, source)``: MNIST if ``PYRO_AEVB_DATA`` has it, else the embedded slice."""
    from pyro_aevb.data import load_dataset

    if os.environ.get("PYRO_AEVB_DATA"):
        try:
            ds = load_dataset("mnist", download=False)
            return ds.train, ds.test, "MNIST from $PYRO_AEVB_DATA"
        except Exception as err:  # incomplete data directory: say so, use the slice
            print(f"[scaling] MNIST not loaded ({type(err).__name__}: {err}); embedded slice")
    ds = load_dataset("embedded-mnist")
    return ds.train, ds.test, "embedded MNIST slice (5000 train rows)"


def build_model(args, seed=0):
    from pyro_aevb.models import paper_mnist_vae

    torch.manual_seed(seed)
    return paper_mnist_vae(args.latent_dim, args.hidden)


# ---------------------------------------------------------------------------- measurements
def train_rate(args, train) -> float:
    """Samples/s of the trainer between the warm-up evaluation and the end of a run (in this
    process, or as one rank of an initialised process group)."""
    from pyro_aevb.train import Trainer

    total = args.warmup + args.samples
    trainer = Trainer(
        build_model(args),
        train,
        batch_size=args.batch_size,
        lr=0.02,
        num_samples=total,
        eval_every=args.warmup,
        eval_size=100,
        seed=0,
        progress=False,
    )
    if trainer.objective.path != "fast":
        raise RuntimeError(f"expected the fast path, got {trainer.objective.path}")
    history = trainer.run().history
    first, last = history[0], history[-1]
    return (last["samples"] - first["samples"]) / (last["train_seconds"] - first["train_seconds"])


def ais_run(args, test):
    """``(datapoints/s, per-datapoint estimates)`` of sharded AIS on the first test points."""
    from pyro_aevb import log_marginal

    vae = build_model(args)
    x = test[: args.ais_points]
    result = log_marginal(
        vae.model,
        vae.guide,
        x,
        "ais",
        seed=0,
        block_size=args.ais_block,
        num_chains=args.ais_chains,
        num_temps=args.ais_temps,
    )
    return x.shape[0] / result.seconds, result.estimate


def _rank_main(rank: int, world_size: int, init: str, args, out: str) -> None:
    """One rank of the 2-rank measurements: training repeats, then sharded AIS."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    try:
        train, test, _ = load_data()
        rates = [train_rate(args, train) for _ in range(args.repeats)]
        ais_rate, estimate = ais_run(args, test)
        if rank == 0:
            torch.save({"train": rates, "ais": ais_rate, "estimate": estimate}, out)
    finally:
        dist.destroy_process_group()


def two_ranks(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        init = f"file://{Path(tmp) / 'group'}"
        out = str(Path(tmp) / "rank0.pt")
        mp.spawn(_rank_main, args=(2, init, args, out), nprocs=2, join=True)
        return torch.load(out, weights_only=False)


# ---------------------------------------------------------------------------- GPU rows
def gpu_rows(args, train) -> list[dict]:
    variants = ("fast path", "stock Pyro", "PyTorch loop")
    if not torch.cuda.is_available():
        return [
            {"variant": v, "batch_size": b, "samples_per_s": None, "note": "not measured (no GPU)"}
            for b in (100, 1000)
            for v in variants
        ]
    sys.path.insert(0, str(HERE))
    from speed import _reference_module

    device = torch.device("cuda", 0)
    X = train.to(device)
    rows = []
    for batch in (100, 1000):
        for variant in variants:
            step = _gpu_step(variant, args, X, batch, device, _reference_module)
            for _ in range(max(3, args.gpu_steps // 10)):
                step()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.gpu_steps):
                step()
            torch.cuda.synchronize()
            rate = batch * args.gpu_steps / (time.perf_counter() - t0)
            rows.append({"variant": variant, "batch_size": batch, "samples_per_s": rate})
            print(f"[scaling] gpu {variant:13s} batch {batch:5d}: {rate:,.0f} samples/s")
    return rows


def _gpu_step(variant, args, X, batch, device, reference_module):
    import pyro
    from pyro.infer import SVI, Trace_ELBO

    from pyro_aevb.infer import ELBO
    from pyro_aevb.poutine import TrainingProgram
    from pyro_aevb.train.optim import make_optimizer

    N = X.shape[0]
    gen = torch.Generator(device=device).manual_seed(0)

    def batch_rows():
        return torch.randint(0, N, (batch,), device=device, generator=gen)

    if variant == "fast path":
        vae = build_model(args).to(device)
        program = TrainingProgram(vae.model, vae.guide, num_data=N)
        objective = ELBO("B", 1).bind(program, fast="on")
        objective.setup(X[:batch])
        optimizer = make_optimizer("adagrad", list(objective.params), lr=0.02)

        def step():
            idx = batch_rows()
            return objective.train_step(X[idx], idx, optimizer)

        return step
    if variant == "stock Pyro":
        pyro.clear_param_store()
        vae = build_model(args).to(device)
        vae.validate = False
        svi = SVI(vae.model, vae.guide, pyro.optim.Adagrad({"lr": 0.02}), Trace_ELBO())
        return lambda: svi.step(X[batch_rows()], N)
    torch.manual_seed(0)
    net = reference_module((784, args.hidden, args.latent_dim), 1.0, 0.1).to(device)
    optimizer = torch.optim.Adagrad(net.parameters(), lr=0.02)

    def step():
        optimizer.zero_grad()
        loss = net.loss(X[batch_rows()], N / batch)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


# ---------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    args = parse_args(argv)
    train, test, source = load_data()
    print(f"[scaling] data: {source}; model 784-{args.hidden}-{args.latent_dim}, batch "
          f"{args.batch_size}; {args.repeats} repeat(s)")  # fmt: skip
    rates = {"1x1": [], "1x2": []}
    for _ in range(args.repeats):  # interleaved, so that drift affects both alike
        for key, threads in (("1x1", 1), ("1x2", 2)):
            torch.set_num_threads(threads)
            rates[key].append(train_rate(args, train))
    torch.set_num_threads(1)
    ais1, estimate1 = ais_run(args, test)
    parallel = two_ranks(args)
    rates["2x1"] = parallel["train"]
    median = {k: statistics.median(v) for k, v in rates.items()}
    results = {
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "data": source,
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "train_samples_per_s": {
            "1 process x 1 thread": {"median": median["1x1"], "runs": rates["1x1"]},
            "1 process x 2 threads": {"median": median["1x2"], "runs": rates["1x2"]},
            "2 ranks x 1 thread": {"median": median["2x1"], "runs": rates["2x1"]},
        },
        "scaling_efficiency_2_ranks": median["2x1"] / (2 * median["1x1"]),
        "ranks_over_threads": median["2x1"] / median["1x2"],
        "ais_datapoints_per_s": {"1 rank": ais1, "2 ranks": parallel["ais"]},
        "ais_same_estimates": bool(torch.equal(estimate1, parallel["estimate"])),
        "gpu": gpu_rows(args, train),
    }
    print(table(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        Path(args.json).with_suffix(".txt").write_text(table(results) + "\n")
    return results


def table(results: dict) -> str:
    lines = [f"{'configuration':34s} {'rate':>14s}"]
    for name, row in results["train_samples_per_s"].items():
        lines.append(f"{'train ' + name:34s} {row['median']:>10,.0f} /s")
    lines.append(
        f"{'  2-rank scaling efficiency':34s} {results['scaling_efficiency_2_ranks']:>12.2f}"
    )
    lines.append(f"{'  2 ranks / 2 threads':34s} {results['ranks_over_threads']:>12.2f}")
    for name, rate in results["ais_datapoints_per_s"].items():
        lines.append(f"{'ais ' + name:34s} {rate:>10,.2f} /s")
    lines.append(f"{'  same per-datapoint estimates':34s} {results['ais_same_estimates']!s:>12s}")
    for row in results["gpu"]:
        name = f"gpu {row['variant']}, batch {row['batch_size']}"
        rate = row["samples_per_s"]
        lines.append(f"{name:34s} " + (f"{rate:>10,.0f} /s" if rate else row["note"]))
    return "\n".join(lines)


if __name__ == "__main__":
    out = main()
    finite = all(math.isfinite(v["median"]) for v in out["train_samples_per_s"].values())
    sys.exit(0 if finite else 1)
