"""Figure 2 of the paper: AEVB against wake-sleep on the lower bound per datapoint.

For MNIST (N_z in 3, 5, 10, 20, 200; 500 hidden units) and Frey Face (N_z in 2, 5, 10, 20;
200 hidden units), trains AEVB (estimator B) and wake-sleep with the same encoder and
decoder, Adagrad with the step size picked from {0.01, 0.02, 0.1} by the training bound after
``--select-samples`` samples, M = 100, L = 1, and records the per-datapoint lower bound on the
first 1000 training and test points against the number of training samples evaluated.

    PYRO_AEVB_DATA=../shared/data python benchmarks/figure2.py            # default budget
    PYRO_AEVB_DATA=../shared/data python benchmarks/figure2.py --paper    # the paper's 1e8

Writes ``figure2.json`` (settings, command, chosen step sizes, histories) and ``figure2.png``
to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from paper_runs import HIDDEN, run_parallel, save_results, select_and_train  # noqa: E402

from pyro_aevb.plots import plot_learning_curves  # noqa: E402

LATENTS = {"mnist": [3, 5, 10, 20, 200], "frey-face": [2, 5, 10, 20]}
ALGORITHMS = {"aevb": "AEVB", "wake-sleep": "Wake-Sleep"}


def _zoom(ax, histories, start: int = 100_000) -> None:
    """Show the curves from ``start`` samples on, as the paper's axes do (from 1e5 samples):
    untrained wake-sleep encoders give bounds of -1e10 that would flatten everything else."""
    last = max(h[-1]["samples"] for h in histories)
    if last <= start:
        return
    values = [
        h[key]
        for history in histories
        for h in history
        if h["samples"] >= start
        for key in ("train_bound", "test_bound")
        if h.get(key) is not None
    ]
    lo, hi = min(values), max(values)
    pad = 0.05 * (hi - lo or 1.0)
    ax.set_xlim(start, last * 1.3)
    ax.set_ylim(lo - pad, hi + pad)


def plot(results: list[dict], path: Path) -> Path:
    datasets = [d for d in LATENTS if any(r["dataset"] == d for r in results)]
    ncols = max(len({r["latent_dim"] for r in results if r["dataset"] == d}) for d in datasets)
    fig, axes = plt.subplots(
        len(datasets), ncols, figsize=(3.2 * ncols, 3.0 * len(datasets)), squeeze=False
    )
    for row, ds in enumerate(datasets):
        latents = sorted({r["latent_dim"] for r in results if r["dataset"] == ds})
        for col in range(ncols):
            ax = axes[row][col]
            if col >= len(latents):
                ax.axis("off")
                continue
            nz = latents[col]
            runs = {
                f"{ALGORITHMS[r['algorithm']]} (lr {r['lr']})": r["history"]
                for r in results
                if r["dataset"] == ds and r["latent_dim"] == nz
            }
            plot_learning_curves(runs, None, title=f"{ds}, $N_z$ = {nz}", ylabel="L", ax=ax)
            _zoom(ax, runs.values())
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--datasets", nargs="+", default=list(LATENTS), choices=list(LATENTS))
    p.add_argument("--latents", nargs="+", type=int, default=None, help="override the N_z lists")
    p.add_argument(
        "--budget",
        type=lambda s: int(float(s)),
        default=None,
        help="training samples per run (default: 2e6 MNIST, 3e6 Frey Face)",
    )
    p.add_argument("--paper", action="store_true", help="the paper's budget: 1e8 samples per run")
    p.add_argument("--select-samples", type=lambda s: int(float(s)), default=100_000)
    p.add_argument("--lrs", nargs="+", type=float, default=[0.01, 0.02, 0.1])
    p.add_argument("--hidden", type=int, default=None, help="override the hidden units")
    p.add_argument("--num-train", type=int, default=None, help="use the first N training points")
    p.add_argument("--eval-size", type=int, default=1000)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "figure2"))
    args = p.parse_args(argv)
    default_budget = {"mnist": 2_000_000, "frey-face": 3_000_000}
    out = Path(args.out)
    configs = [
        {
            "dataset": ds,
            "num_train": args.num_train,
            "latent_dim": nz,
            "hidden": args.hidden or HIDDEN[ds],
            "algorithm": algorithm,
            "lrs": args.lrs,
            "select_samples": args.select_samples,
            "budget": 100_000_000 if args.paper else (args.budget or default_budget[ds]),
            "seed": args.seed,
            "eval_size": args.eval_size,
            "work_dir": str(out / "runs"),
            "data_dir": args.data_dir,
        }
        for ds in args.datasets
        for nz in (args.latents or LATENTS[ds])
        for algorithm in ALGORITHMS
    ]
    t0 = time.perf_counter()
    results = run_parallel(select_and_train, configs, args.jobs)
    seconds = time.perf_counter() - t0
    save_results(out / "figure2.json", vars(args), results, seconds)
    plot(results, out / "figure2.png")
    print(
        f"{'data set':<10} {'N_z':>4} {'algorithm':<11} {'lr':>5} {'samples':>10} "
        f"{'train L':>9} {'test L':>9}"
    )
    for r in results:
        h = r["history"][-1]
        print(
            f"{r['dataset']:<10} {r['latent_dim']:>4} {r['algorithm']:<11} {r['lr']:>5} "
            f"{h['samples']:>10,} {h['train_bound']:9.2f} {h['test_bound']:9.2f}"
        )
    print(f"total {seconds / 60:.1f} min; wrote {out / 'figure2.json'} and {out / 'figure2.png'}")
    return results


if __name__ == "__main__":
    main()
