"""Figure 3 of the paper: estimated marginal likelihood against training samples.

MNIST, N_z = 3, 100 hidden units; AEVB (estimator B) against wake-sleep and Monte Carlo EM
(MCEM on the small training set only, as in the paper), for N_train = 1000 and
N_train = 50000. At every evaluation point, log p(x) is estimated with the paper's
Appendix-D estimator (batched HMC, 50 posterior samples per datapoint, density fitted on one
half) on the first 1000 training and the first 1000 test points. Adagrad step sizes are picked
from {0.01, 0.02, 0.1} by early performance, as for Figure 2. The cost of each method per
training sample (training time only) is reported, which is where MCEM's scaling limit shows.

    PYRO_AEVB_DATA=../shared/data python benchmarks/figure3.py             # default budget
    PYRO_AEVB_DATA=../shared/data python benchmarks/figure3.py --paper     # 1e8 samples

Writes ``figure3.json`` and ``figure3.png`` to ``--out``.
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
import torch  # noqa: E402
from paper_runs import (  # noqa: E402
    load_config_dataset,
    run_parallel,
    run_summary,
    run_tag,
    save_results,
    select_lr,
    train_run,
)

from pyro_aevb.evaluate import log_marginal  # noqa: E402

ALGORITHMS = {"aevb": "AEVB", "wake-sleep": "Wake-Sleep", "mcem": "MCEM"}


def marginal_likelihood_callback(cfg: dict, dataset):
    """Adds ``train_log_marginal`` / ``test_log_marginal`` (+ stderr) to each history record."""
    subsets = {
        "train": dataset.train[: cfg["eval_points"]],
        "test": dataset.test[: cfg["eval_points"]],
    }

    def callback(trainer, record):
        vae = trainer.module
        guide = None if cfg["algorithm"] == "mcem" else vae.guide  # MCEM has no encoder
        t0 = time.perf_counter()
        for split, x in subsets.items():
            res = log_marginal(
                vae.model,
                guide,
                x,
                method="appendix_d",
                seed=cfg["seed"],
                num_samples=cfg["posterior_samples"],
                num_warmup=cfg["num_warmup"],
            )
            record[f"{split}_log_marginal"] = float(res.estimate.mean())
            record[f"{split}_log_marginal_stderr"] = float(res.stderr.pow(2).sum().sqrt() / len(x))
        record["eval_seconds"] = time.perf_counter() - t0

    return callback


def final_ais_check(cfg: dict, vae, dataset) -> dict:
    """The final model's Appendix-D estimate next to AIS on the first test points.

    AIS (16 chains, 500 temperatures, from the encoder, or from the prior for MCEM) is a
    stochastic lower bound that is far less sensitive to where chains start than a short HMC
    run, so a large gap would show the curve's estimator missing posterior mass.
    """
    x = dataset.test[: cfg["ais_check_points"]]
    guide = None if cfg["algorithm"] == "mcem" else vae.guide
    out = {"points": len(x)}
    for method, options in (
        ("appendix_d", {"num_samples": cfg["posterior_samples"], "num_warmup": cfg["num_warmup"]}),
        ("ais", {}),
    ):
        t0 = time.perf_counter()
        res = log_marginal(vae.model, guide, x, method=method, seed=cfg["seed"], **options)
        out[method] = float(res.estimate.mean())
        out[f"{method}_stderr"] = float(res.stderr.pow(2).sum().sqrt() / len(x))
        out[f"{method}_seconds"] = time.perf_counter() - t0
    return out


def train_with_marginal_likelihood(cfg: dict) -> dict:
    torch.set_num_threads(1)
    dataset = load_config_dataset(cfg)
    t0 = time.perf_counter()
    best, early = select_lr(cfg, dataset)
    # A fresh run of the chosen step size, so that every evaluation point carries an estimate.
    run_dir = Path(cfg["work_dir"]) / f"{run_tag(cfg)}-final-lr{best}"
    callback = marginal_likelihood_callback(cfg, dataset)
    vae, result = train_run(cfg, dataset, best, run_dir, cfg["budget"], callback)
    h = result.history[-1]
    return {
        **run_summary(cfg, best, early, result.history, run_dir),
        "train_seconds_per_sample": h["train_seconds"] / h["samples"],
        "final_ais_check": final_ais_check(cfg, vae, dataset) if cfg["ais_check_points"] else None,
        "seconds": time.perf_counter() - t0,
    }


def plot(results: list[dict], path: Path) -> Path:
    sizes = sorted({r["num_train"] for r in results})
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 3.8), squeeze=False)
    for ax, n in zip(axes[0], sizes):
        for k, name in enumerate(ALGORITHMS):
            for r in results:
                if r["num_train"] != n or r["algorithm"] != name:
                    continue
                for split, style in (("train", "--"), ("test", "-")):
                    pts = [
                        (h["samples"], h[f"{split}_log_marginal"])
                        for h in r["history"]
                        if h.get(f"{split}_log_marginal") is not None
                    ]
                    if pts:
                        xs, ys = zip(*pts)
                        ax.plot(xs, ys, style, color=f"C{k}", label=f"{ALGORITHMS[name]} ({split})")
        ax.set_xscale("log")
        ax.set_title(f"$N_{{train}}$ = {n}")
        ax.set_xlabel("# training samples evaluated")
        ax.set_ylabel("marginal log-likelihood")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--num-train", nargs="+", type=int, default=[1000, 50000])
    p.add_argument(
        "--budget",
        type=lambda s: int(float(s)),
        default=10_000_000,
        help="training samples per AEVB / wake-sleep run",
    )
    p.add_argument(
        "--mcem-budget",
        type=lambda s: int(float(s)),
        default=1_000_000,
        help="training samples for MCEM",
    )
    p.add_argument("--paper", action="store_true", help="1e8 samples per run (MCEM: 1e7)")
    p.add_argument("--select-samples", type=lambda s: int(float(s)), default=100_000)
    p.add_argument("--lrs", nargs="+", type=float, default=[0.01, 0.02, 0.1])
    p.add_argument("--latent-dim", type=int, default=3)
    p.add_argument("--hidden", type=int, default=100)
    p.add_argument("--eval-points", type=int, default=1000, help="first N train/test points")
    p.add_argument("--posterior-samples", type=int, default=50)
    p.add_argument("--num-warmup", type=int, default=200)
    p.add_argument(
        "--ais-check-points",
        type=int,
        default=100,
        help="compare the final Appendix-D estimate with AIS on this many test points (0: off)",
    )
    p.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "figure3"))
    args = p.parse_args(argv)
    out = Path(args.out)
    configs = []
    for n in args.num_train:
        for algorithm in args.algorithms:
            if algorithm == "mcem" and n > 1000:
                continue  # MCEM does not scale to the full data set (as in the paper)
            budget = args.mcem_budget if algorithm == "mcem" else args.budget
            if args.paper:
                budget = 10_000_000 if algorithm == "mcem" else 100_000_000
            configs.append(
                {
                    "dataset": "mnist",
                    "num_train": n,
                    "latent_dim": args.latent_dim,
                    "hidden": args.hidden,
                    "algorithm": algorithm,
                    "lrs": args.lrs,
                    "select_samples": args.select_samples,
                    "budget": budget,
                    "seed": args.seed,
                    "eval_size": args.eval_points,
                    "eval_points": args.eval_points,
                    "posterior_samples": args.posterior_samples,
                    "num_warmup": args.num_warmup,
                    "ais_check_points": args.ais_check_points,
                    "work_dir": str(out / "runs"),
                    "data_dir": args.data_dir,
                }
            )
    t0 = time.perf_counter()
    results = run_parallel(train_with_marginal_likelihood, configs, args.jobs)
    seconds = time.perf_counter() - t0
    save_results(out / "figure3.json", vars(args), results, seconds)
    plot(results, out / "figure3.png")
    print(
        f"{'N_train':>7} {'algorithm':<11} {'lr':>5} {'samples':>11} {'train log p(x)':>15} "
        f"{'test log p(x)':>14} {'ms/sample':>10}"
    )
    for r in results:
        h = r["history"][-1]
        print(
            f"{r['num_train']:>7} {r['algorithm']:<11} {r['lr']:>5} {h['samples']:>11,} "
            f"{h['train_log_marginal']:15.2f} {h['test_log_marginal']:14.2f} "
            f"{1e3 * r['train_seconds_per_sample']:10.4f}"
        )
    print(f"total {seconds / 60:.1f} min; wrote {out / 'figure3.json'} and {out / 'figure3.png'}")
    return results


if __name__ == "__main__":
    main()
