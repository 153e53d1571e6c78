"""Pyro's example VAE with its hand-written guide, and with the guide replaced by one line,
``AmortizedNormal(vae.model)``: the test bound of each at the same budget.

The model is Pyro's ``examples/vae/vae.py`` as written there (softplus MLPs of 400 units,
``z_dim = 50``, a Bernoulli decoder, ``pyro.module`` per network, ``pyro.plate("data",
len(x))``). Both runs train with :func:`pyro_aevb.fit` on MNIST (the same seed, Adam, the same
number of training samples, estimator B), and are evaluated with estimator B on every test
image. The acceptance target: the autoguide within 1 nat of the hand-written guide.

    PYRO_AEVB_DATA=../shared/data python benchmarks/autoguide_pyro_example.py
    PYRO_AEVB_DATA=../shared/data python benchmarks/autoguide_pyro_example.py --quick
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pyro  # noqa: E402
import torch  # noqa: E402
from paper_runs import save_results  # noqa: E402

from pyro_aevb import AmortizedNormal, evaluate_bound, fit, load_dataset  # noqa: E402
from pyro_aevb.models import PyroExampleVAE  # noqa: E402

RESULTS = Path(__file__).parent / "results"
QUICK = {"num_samples": 1000, "z_dim": 4, "hidden": 32, "num_train": 500, "num_test": 50}


def run(args, dataset, autoguide: bool) -> dict:
    pyro.clear_param_store()
    torch.manual_seed(args.seed)
    vae = PyroExampleVAE(args.z_dim, args.hidden)
    guide = AmortizedNormal(vae.model) if autoguide else None
    result = fit(
        vae,
        dataset,
        guide=guide,
        optimizer="adam",
        lr=args.lr,
        num_samples=args.num_samples,
        seed=args.seed,
        eval_size=1000,
        progress=not args.no_progress,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed + 1)
        test = evaluate_bound(vae, dataset.test, estimator="B", guide=guide)
    return {
        "guide": "AmortizedNormal(vae.model)" if autoguide else "hand-written",
        "guide_config": None if guide is None else guide.config,
        "test_bound": float(test.mean()),
        "test_bound_stderr": float(test.std()) / math.sqrt(test.numel()),
        "per_datapoint": test.tolist(),
        "samples_per_second": result.samples / result.history[-1]["train_seconds"],
        "history": result.history,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--num-samples", type=lambda s: int(float(s)), default=1_000_000)
    p.add_argument("--z-dim", type=int, default=50)
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--num-train", type=int, default=None)
    p.add_argument("--num-test", type=int, default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="JSON (default: results/autoguide_pyro_example)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--quick", action="store_true", help=f"a smoke run in seconds: {QUICK}")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
        args.no_progress = True
    name = "autoguide_pyro_example" + ("-quick" if args.quick else "")
    out = Path(args.out) if args.out else RESULTS / f"{name}.json"
    torch.set_num_threads(args.threads)
    dataset = load_dataset("mnist", data_dir=args.data_dir).subset(args.num_train, args.num_test)
    t0 = time.perf_counter()
    results = [run(args, dataset, autoguide) for autoguide in (False, True)]
    hand, auto = results
    diff = torch.tensor(auto["per_datapoint"]) - torch.tensor(hand["per_datapoint"])
    summary = {
        "autoguide_minus_hand_written": float(diff.mean()),
        "stderr": float(diff.std()) / math.sqrt(diff.numel()),
    }
    save_results(out, {**vars(args), **summary}, results, time.perf_counter() - t0)
    for r in results:
        print(
            f"{r['guide']:>28}: test bound {r['test_bound']:.2f} ± {r['test_bound_stderr']:.2f}"
            f" ({r['samples_per_second']:.0f} training samples/s)"
        )
    print(
        f"autoguide - hand-written: {summary['autoguide_minus_hand_written']:+.2f} ± "
        f"{summary['stderr']:.2f} nats (paired, same test images); wrote {out}"
    )
    return {"results": results, **summary}


if __name__ == "__main__":
    main()
