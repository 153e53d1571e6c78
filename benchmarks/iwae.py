"""Burda et al. (2016), Table 1 layout: the VAE against IWAE (K = 5 and 50, with and without
DReG) at equal budget, on MNIST and Fashion-MNIST; test log-likelihood by IWAE with K = 5000.

Every configuration trains the same network (Burda et al.'s one-stochastic-layer model:
784-200-200-50 tanh MLPs, Bernoulli decoder on the pixel intensities / 256, no weight prior)
from the same initialisation on the same minibatch sequence (Adam, lr 1e-3, M = 100):

* ``vae``: the ELBO, estimator B, L = 1 (``vae5``, ``vae50``: L = 5, 50; Burda's VAE column);
* ``iwaeK``: the importance-weighted bound with K particles, plain gradients;
* ``iwaeK-dreg``: the same bound with doubly reparameterized encoder gradients.

**Equal budget** means an equal number of training samples (datapoints) evaluated, the
paper's x-axis: every run sees the same ``--budget`` minibatch rows. A K-particle run costs
more per sample (the decoder runs K times per datapoint); the training seconds and the
particle evaluations (samples x K) are reported beside the results.

Evaluation of the final models, on the first ``--eval-points`` test images (and
``--train-eval-points`` training images, if asked):
``log p(x)`` by IWAE with ``--eval-particles`` proposals from the trained encoder (5000, as
Burda et al.), with standard errors; the ELBO (estimator B); the paired difference of each
configuration's test log-likelihood from the VAE's on the same points (the errors of a paired
difference are what decides "higher"); and Burda et al.'s active units (latent dimensions
with ``Cov_x(E_q[z | x]) > 0.01``).

    PYRO_AEVB_DATA=../shared/data python benchmarks/iwae.py            # default budget
    PYRO_AEVB_DATA=../shared/data python benchmarks/iwae.py --quick    # a tiny smoke run

Writes ``iwae.json`` (settings, command, histories, per-datapoint estimates, timings) to
``--out``; runs resume from their checkpoints under ``--out``/runs, so the script can be run
in parts (e.g. one ``--datasets`` or ``--configs`` at a time).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from paper_runs import load_config_dataset, run_parallel, save_results  # noqa: E402

from pyro_aevb import ELBO, IWAE, fit, log_marginal, mlp_vae  # noqa: E402
from pyro_aevb.train.checkpoint import read_json, write_json_atomic  # noqa: E402

#: Configurations by name: objective, particles, DReG.
CONFIGS = {
    "vae": ("aevb", 1, False),
    "vae5": ("aevb", 5, False),
    "vae50": ("aevb", 50, False),
    "iwae5": ("iwae", 5, False),
    "iwae5-dreg": ("iwae", 5, True),
    "iwae50": ("iwae", 50, False),
    "iwae50-dreg": ("iwae", 50, True),
}
DEFAULT_CONFIGS = ["vae", "iwae5", "iwae5-dreg", "iwae50", "iwae50-dreg"]
DATASETS = ["mnist", "fashion-mnist"]
#: The settings an evaluation depends on (with the samples the model was trained for).
EVAL_KEYS = ("eval_points", "train_eval_points", "eval_particles", "elbo_particles", "seed")
COLUMNS = {("aevb", False): "VAE", ("iwae", False): "IWAE", ("iwae", True): "IWAE + DReG"}


def make_objective(name: str):
    kind, k, dreg = CONFIGS[name]
    return ELBO("B", k) if kind == "aevb" else IWAE(k, dreg=dreg)


def active_units(vae, x: torch.Tensor, threshold: float = 0.01) -> int:
    """Burda et al.'s active units: latent dimensions whose encoder mean varies across the
    data, ``Cov_x(E_q[z_j | x]) > threshold``."""
    with torch.no_grad():
        means = torch.cat([vae.encode(xb)[0] for xb in x.split(1000)])
    return int((means.var(0) > threshold).sum())


def evaluate(vae, x: torch.Tensor, cfg: dict) -> dict:
    """IWAE log-likelihood (per datapoint, with errors) and the ELBO on ``x``."""
    ll = log_marginal(
        vae.model, vae.guide, x, "iwae", seed=cfg["seed"], num_particles=cfg["eval_particles"]
    )
    elbo = log_marginal(
        vae.model,
        vae.guide,
        x,
        "elbo",
        seed=cfg["seed"],
        estimator="B",
        num_particles=cfg["elbo_particles"],
    )
    n = len(x)
    return {
        # the error of a mean over the evaluation points (what a test-set average carries)
        # and, separately, the Monte Carlo error of the estimator on these points
        "log_likelihood": ll.mean(),
        "log_likelihood_stderr": float(ll.estimate.double().std() / math.sqrt(n)),
        "log_likelihood_mc_stderr": ll.mean_stderr(),
        "elbo": elbo.mean(),
        "elbo_stderr": float(elbo.estimate.double().std() / math.sqrt(n)),
        "elbo_mc_stderr": elbo.mean_stderr(),
        "max_pareto_k": float(torch.nan_to_num(ll.diagnostics["pareto_k"], nan=0.0).max()),
        "estimate": ll.estimate.tolist(),
    }


def run_one(cfg: dict) -> dict:
    """Train one configuration (or continue its run) and evaluate the final model."""
    torch.set_num_threads(cfg["threads"])
    dataset = load_config_dataset(cfg)
    name = cfg["config"]
    torch.manual_seed(cfg["seed"])  # the initialisation: the same for every configuration
    vae = mlp_vae(
        dataset.train.shape[1],
        cfg["latent_dim"],
        cfg["hidden"],
        weight_prior_std=cfg["weight_prior_std"],
    )
    run_dir = Path(cfg["work_dir"]) / f"{cfg['dataset']}-{name}"
    t0 = time.perf_counter()
    result = fit(
        vae,
        dataset,
        objective=make_objective(name),
        optimizer=cfg["optimizer"],
        lr=cfg["lr"],
        batch_size=cfg["batch_size"],
        num_samples=cfg["budget"],
        seed=cfg["seed"],
        eval_size=cfg["eval_size"],
        out_dir=run_dir,
        resume=(run_dir / "checkpoint.pt").exists(),
        progress=False,
    )
    wall = time.perf_counter() - t0
    vae.eval()
    n = cfg["eval_points"]
    # The evaluation of a finished run is kept beside its checkpoint, so that running the
    # script again (e.g. for the full table after running it in parts) does not redo it.
    cache = run_dir / "iwae-eval.json"
    key = {k: cfg[k] for k in EVAL_KEYS} | {"samples": result.samples}
    saved = read_json(cache) if cache.exists() else {}
    if saved.get("key") == key:
        evaluation = saved["evaluation"]
    else:
        t1 = time.perf_counter()
        n_train = cfg["train_eval_points"]
        evaluation = {
            "test": evaluate(vae, dataset.test[:n], cfg),
            "train": evaluate(vae, dataset.train[:n_train], cfg) if n_train else None,
            "active_units": active_units(vae, dataset.test[:n]),
        }
        evaluation["eval_seconds"] = time.perf_counter() - t1
        write_json_atomic(cache, {"key": key, "evaluation": evaluation})
    kind, k, dreg = CONFIGS[name]
    train_seconds = result.history[-1]["train_seconds"]
    return {
        "dataset": cfg["dataset"],
        "config": name,
        "objective": kind,
        "k": k,
        "dreg": dreg,
        "path": result.path,
        "samples": result.samples,
        "particle_evaluations": result.samples * k,
        "train_seconds": train_seconds,
        "ms_per_sample": 1000 * train_seconds / result.samples,
        "wall_seconds_this_session": wall,
        **evaluation,
        "history": result.history,
        "run_dir": str(run_dir),
    }


def paired_differences(results: list[dict]) -> None:
    """Add, to every result, its test log-likelihood minus the VAE's (L = 1) on the same
    points, with the standard error of the paired mean difference."""
    base = {r["dataset"]: r for r in results if r["config"] == "vae"}
    for r in results:
        ref = base.get(r["dataset"])
        if ref is None:
            continue
        diff = torch.tensor(r["test"]["estimate"]) - torch.tensor(ref["test"]["estimate"])
        se = float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else math.nan
        r["test_minus_vae"] = {"mean": float(diff.mean()), "stderr": se}


def table(results: list[dict], eval_particles: int) -> str:
    """Burda et al.'s Table 1 layout: rows K, columns VAE / IWAE / IWAE + DReG; each cell the
    test log p(x) (higher is better) +- its standard error, and the paired difference from
    the VAE with L = 1 in brackets."""
    lines = []
    for ds in dict.fromkeys(r["dataset"] for r in results):
        rows = [r for r in results if r["dataset"] == ds]
        lines.append(
            f"{ds}: test log p(x) by IWAE (K = {eval_particles}) [minus the VAE's, paired]"
        )
        lines.append(f"| K | {' | '.join(COLUMNS.values())} | ms / training sample |")
        lines.append("|---|" + "---|" * (len(COLUMNS) + 1))
        for k in sorted({r["k"] for r in rows}):
            cells, times = [], []
            for key in COLUMNS:
                hit = [r for r in rows if r["k"] == k and (r["objective"], r["dreg"]) == key]
                if not hit:
                    cells.append("")
                    continue
                r = hit[0]
                cell = (
                    f"{r['test']['log_likelihood']:.2f} ± {r['test']['log_likelihood_stderr']:.2f}"
                )
                d = r.get("test_minus_vae")
                if d and r["config"] != "vae":
                    cell += f" [{d['mean']:+.2f} ± {d['stderr']:.2f}]"
                cells.append(cell)
                times.append(f"{r['ms_per_sample']:.3g}")
            lines.append(f"| {k} | {' | '.join(cells)} | {' / '.join(times)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=list(CONFIGS))
    p.add_argument(
        "--budget",
        type=lambda s: int(float(s)),
        default=1_000_000,
        help="training samples per run, the same for every configuration (default 1e6)",
    )
    p.add_argument("--latent-dim", type=int, default=50)
    p.add_argument("--hidden", type=int, nargs="+", default=[200, 200])
    p.add_argument("--weight-prior-std", type=float, default=None, help="default: none (ML)")
    p.add_argument("--optimizer", choices=["adam", "adagrad"], default="adam")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--num-train", type=int, default=None, help="use the first N training points")
    p.add_argument("--eval-size", type=int, default=1000, help="points of the history's bound")
    p.add_argument("--eval-points", type=int, default=1000, help="test points evaluated")
    p.add_argument(
        "--train-eval-points",
        type=int,
        default=0,
        help="also evaluate the first N training points (an overfitting check; default none)",
    )
    p.add_argument("--eval-particles", type=int, default=5000)
    p.add_argument("--elbo-particles", type=int, default=100)
    p.add_argument("--jobs", type=int, default=2, help="worker processes")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="default: benchmarks/results/iwae")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run in about a minute: 500 training points, 2000 samples, 784-16-2, "
        "20 evaluation points with 100 particles; written to runs/iwae-quick by default",
    )
    if p.parse_known_args(argv)[0].quick:  # new defaults; options given still win
        p.set_defaults(
            num_train=500,
            budget=2000,
            hidden=[16],
            latent_dim=2,
            eval_size=50,
            eval_points=20,
            eval_particles=100,
            elbo_particles=10,
            jobs=1,
        )
    args = p.parse_args(argv)
    default_out = (
        Path("runs") / "iwae-quick" if args.quick else Path(__file__).parent / "results" / "iwae"
    )
    out = Path(args.out) if args.out else default_out
    configs = [
        {
            "dataset": ds,
            "config": name,
            "num_train": args.num_train,
            "data_dir": args.data_dir,
            "latent_dim": args.latent_dim,
            "hidden": list(args.hidden),
            "weight_prior_std": args.weight_prior_std,
            "optimizer": args.optimizer,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "budget": args.budget,
            "seed": args.seed,
            "eval_size": args.eval_size,
            "eval_points": args.eval_points,
            "train_eval_points": args.train_eval_points,
            "eval_particles": args.eval_particles,
            "elbo_particles": args.elbo_particles,
            "threads": args.threads,
            "work_dir": str(out / "runs"),
        }
        for ds in args.datasets
        for name in args.configs
    ]
    t0 = time.perf_counter()
    # the most expensive runs first, so that parallel workers finish together
    order = sorted(range(len(configs)), key=lambda i: -CONFIGS[configs[i]["config"]][1])
    done = run_parallel(run_one, [configs[i] for i in order], args.jobs)
    results = [None] * len(configs)
    for i, r in zip(order, done, strict=True):
        results[i] = r
    paired_differences(results)
    text = table(results, args.eval_particles)
    print(text)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    save_results(out / "iwae.json", {**settings, "table": text}, results, time.perf_counter() - t0)
    print(f"wrote {out / 'iwae.json'}")
    return results


if __name__ == "__main__":
    main()
