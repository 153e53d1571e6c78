"""Paper's MNIST model (784-500-20, Adagrad, M = 100, L = 1) trained for a sample budget.

Prints the train and test lower bound per datapoint (train: the first 1000 training images,
test: all 10000 test images) and the training speed in samples per second, for estimator A,
B or both. A benchmark, not a test: the acceptance target is a test bound of at least -118
nats after 1,000,000 samples with estimator B, and A within 1 nat of B.

    PYRO_AEVB_DATA=../shared/data python benchmarks/mnist_paper.py --estimators A B
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch

from pyro_aevb import NonFiniteLossError, evaluate_bound, fit, load_dataset, paper_mnist_vae


def _finite(record: dict) -> bool:
    keys = ("loss", "train_bound", "test_bound")
    return all(math.isfinite(record[k]) for k in keys if record.get(k) is not None)


def run(estimator: str, args, dataset) -> dict:
    torch.manual_seed(args.seed)
    vae = paper_mnist_vae(
        latent_dim=args.latent_dim, hidden_dims=args.hidden, init_std=args.init_std
    )
    t0 = time.perf_counter()
    history = []
    try:
        result = fit(
            vae,
            dataset.train,
            dataset.test,
            estimator=estimator,
            optimizer="adagrad",
            lr=args.lr,
            batch_size=100,
            num_samples=args.num_samples,
            seed=args.seed,
            eval_size=1000,
            fast=args.fast,
            progress=not args.no_progress,
            callback=lambda trainer, record: history.append(dict(record)),
        )
    except NonFiniteLossError as err:  # a result too: the setting diverges
        return {
            "estimator": estimator,
            "diverged": str(err),
            "samples_at_last_finite_evaluation": max(
                (h["samples"] for h in history if _finite(h)), default=0
            ),
            "wall_seconds": time.perf_counter() - t0,
            "history": history,
        }
    wall = time.perf_counter() - t0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed + 1)
        test = evaluate_bound(vae, dataset.test, estimator="B")
        train = evaluate_bound(vae, dataset.train[:1000], estimator="B")
    return {
        "estimator": estimator,
        "path": result.path,
        "samples": result.samples,
        "train_bound_first1000": float(train.mean()),
        "test_bound_all10000": float(test.mean()),
        "test_bound_stderr": float(test.std() / len(test) ** 0.5),
        "samples_per_second": result.samples / result.history[-1]["train_seconds"],
        "wall_seconds": wall,
        "history": result.history,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--num-samples", type=lambda s: int(float(s)), default=1_000_000)
    p.add_argument("--estimators", nargs="+", choices=["A", "B"], default=["B"])
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--hidden", type=int, default=500)
    p.add_argument("--init-std", type=float, default=0.1, help="N(0, s^2) initialisation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fast", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = load_dataset("mnist", data_dir=args.data_dir)
    results = [run(e, args, dataset) for e in args.estimators]
    cpu = platform.processor() or platform.machine()
    print(
        f"MNIST 784-{args.hidden}-{args.latent_dim}, Adagrad lr={args.lr}, M=100, L=1, "
        f"{args.num_samples:,} samples, {args.threads} thread(s), {cpu}"
    )
    print(f"{'est':>3} {'path':>5} {'train bound':>12} {'test bound':>16} {'samples/s':>10}")
    for r in results:
        if "diverged" in r:
            print(f"{r['estimator']:>3} diverged; last finite evaluation at "
                  f"{r['samples_at_last_finite_evaluation']:,} "
                  f"samples: {r['diverged']}")  # fmt: skip
            continue
        test = f"{r['test_bound_all10000']:9.2f} ± {r['test_bound_stderr']:.2f}"
        print(
            f"{r['estimator']:>3} {r['path']:>5} {r['train_bound_first1000']:12.2f} "
            f"{test} {r['samples_per_second']:10.0f}"
        )
    if len(results) == 2 and not any("diverged" in r for r in results):
        gap = results[0]["test_bound_all10000"] - results[1]["test_bound_all10000"]
        print(f"A - B (test): {gap:+.2f} nats")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
