"""Encoder families at a fixed budget: the same decoder trained with a diagonal, a
full-covariance and an IAF encoder (the amortized autoguides of ``pyro_aevb.autoguide``).

For each data set (MNIST and Fashion-MNIST by default) and each family, the paper's VAE
(784-500-J Bernoulli MLP decoder, N(0, 0.01) initialisation, N(0, I) weight prior) is trained
with the family's autoguide on the same tanh-MLP trunk (one layer of ``--hidden`` units), the
same optimiser, seed and number of training samples, with estimator A for every family (B has
no closed form for the flow). Then, on the first ``--eval-n`` test images, each datapoint gets
``K = --iwae-k`` importance weights ``log w_k = log p(x, z_k) - log q(z_k | x)`` from its
encoder, which give both per-datapoint estimates from the same draws::

    ELBO_i = mean_k log w_ik            (estimator A with K particles)
    IWAE_i = log mean_k w_ik            (importance-sampled log p(x_i), a tighter lower bound)

Reported per family: the mean over test points of each with its standard error, the paired
difference to the diagonal encoder on the same points (mean and standard error), and the
training speed in samples per second.

    PYRO_AEVB_DATA=../shared/data python benchmarks/encoders.py --jobs 2
    PYRO_AEVB_DATA=../shared/data python benchmarks/encoders.py --quick   # seconds, a smoke run

Writes ``--out`` (JSON: settings, command, machine, every number and training history) and
the same table as Markdown next to it (``.md``), ready for the README.
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

from pyro_aevb import fit, paper_vae  # noqa: E402
from pyro_aevb.autoguide import GUIDE_FAMILIES  # noqa: E402
from pyro_aevb.evaluate import iwae_log_weights  # noqa: E402

RESULTS = Path(__file__).parent / "results"
NAMES = {"diag": "diagonal", "full": "full covariance", "iaf": "IAF"}

QUICK = {
    "num_train": 500,
    "num_samples": 1000,
    "hidden": 32,
    "latent_dim": 4,
    "eval_n": 8,
    "iwae_k": 20,
    "eval_batch": 8,
}


def mean_stderr(values: torch.Tensor) -> tuple[float, float]:
    """The mean of per-datapoint values and its standard error."""
    n = values.numel()
    return float(values.mean()), float(values.std()) / math.sqrt(n) if n > 1 else math.nan


def per_datapoint_estimates(model, guide, x, k: int, batch: int) -> tuple:
    """``(ELBO_i, IWAE_i)``, each ``(n,)``, from the same ``K`` weights per datapoint."""
    elbo, iwae = [], []
    for xb in x.split(batch):
        log_w = iwae_log_weights(model, guide, xb, k)  # (K, B)
        elbo.append(log_w.mean(0))
        iwae.append(torch.logsumexp(log_w, 0) - math.log(k))
    return torch.cat(elbo), torch.cat(iwae)


def run_tag(cfg: dict) -> str:
    """The name of one (data set, family) run under ``--run-dir``."""
    n = cfg.get("num_train") or "all"
    return (
        f"{cfg['dataset']}-n{n}-z{cfg['latent_dim']}-h{cfg['hidden']}-{cfg['guide']}-"
        f"{cfg['estimator']}-{cfg['num_samples']}-s{cfg['seed']}"
    )


def train_family(cfg: dict):
    """Train the paper's VAE with one family's autoguide; ``cfg`` is a plain dict (it crosses
    processes). With ``cfg["run_dir"]`` the run is saved there (and a finished one is loaded
    instead of retrained, so that ``benchmarks/gaps.py`` evaluates the same models).

    Returns ``(dataset, vae, guide, result, train_wall_seconds)``."""
    torch.set_num_threads(cfg["threads"])
    dataset = load_config_dataset(cfg)
    torch.manual_seed(cfg["seed"])  # the same decoder initialisation for every family
    vae = paper_vae(dataset, cfg["latent_dim"], cfg["hidden"])
    options = {"hidden_dims": cfg["hidden"], "init_std": 0.1, "name": f"encoder_{cfg['guide']}"}
    if cfg["guide"] == "iaf":
        options["num_flows"] = cfg["num_flows"]
    guide = GUIDE_FAMILIES[cfg["guide"]](vae.model, **options)
    out_dir = Path(cfg["run_dir"]) / run_tag(cfg) if cfg.get("run_dir") else None
    t0 = time.perf_counter()
    result = fit(
        vae,
        dataset,
        guide=guide,
        estimator=cfg["estimator"],
        optimizer=cfg["optimizer"],
        lr=cfg["lr"],
        batch_size=cfg["batch_size"],
        num_samples=cfg["num_samples"],
        seed=cfg["seed"],
        eval_size=cfg["eval_size"],
        out_dir=out_dir,
        resume=out_dir is not None and (out_dir / "checkpoint.pt").exists(),
        progress=False,
    )
    train_wall = time.perf_counter() - t0
    vae.eval()
    return dataset, vae, guide, result, train_wall


def run_config(cfg: dict) -> dict:
    """Train one (data set, family) and evaluate it; ``cfg`` is a plain dict (processes)."""
    dataset, vae, guide, result, train_wall = train_family(cfg)
    x = dataset.test[: cfg["eval_n"]]
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"] + 1)
        elbo, iwae = per_datapoint_estimates(vae.model, guide, x, cfg["iwae_k"], cfg["eval_batch"])
    eval_wall = time.perf_counter() - t0
    (elbo_mean, elbo_se), (iwae_mean, iwae_se) = mean_stderr(elbo), mean_stderr(iwae)
    return {
        **{k: cfg[k] for k in ("dataset", "guide", "latent_dim", "hidden", "num_samples")},
        "guide_config": guide.config,
        "test_elbo": elbo_mean,
        "test_elbo_stderr": elbo_se,
        "test_iwae": iwae_mean,
        "test_iwae_stderr": iwae_se,
        "per_datapoint": {"elbo": elbo.tolist(), "iwae": iwae.tolist()},
        "samples_per_second": result.samples / result.history[-1]["train_seconds"],
        "train_wall_seconds": train_wall,
        "eval_wall_seconds": eval_wall,
        "history": result.history,
    }


def paired_to_diagonal(results: list[dict]) -> None:
    """Add ``{elbo,iwae}_minus_diag`` (mean, s.e. of the paired per-datapoint difference)."""
    diag = {r["dataset"]: r for r in results if r["guide"] == "diag"}
    for r in results:
        base = diag.get(r["dataset"])
        if base is None or r is base:
            continue
        for key in ("elbo", "iwae"):
            d = torch.tensor(r["per_datapoint"][key]) - torch.tensor(base["per_datapoint"][key])
            mean, se = mean_stderr(d)
            r[f"{key}_minus_diag"] = mean
            r[f"{key}_minus_diag_stderr"] = se


def markdown_table(results: list[dict]) -> str:
    lines = [
        "| data set | encoder | test ELBO | test IWAE (K) | ELBO - diag | IWAE - diag "
        "| training samples/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        diff = [
            f"{r[f'{key}_minus_diag']:+.2f} ± {r[f'{key}_minus_diag_stderr']:.2f}"
            if f"{key}_minus_diag" in r
            else ""
            for key in ("elbo", "iwae")
        ]
        k = r.get("iwae_k", "?")
        lines.append(
            f"| {r['dataset']} | {NAMES[r['guide']]} "
            f"| {r['test_elbo']:.2f} ± {r['test_elbo_stderr']:.2f} "
            f"| {r['test_iwae']:.2f} ± {r['test_iwae_stderr']:.2f} ({k}) "
            f"| {diff[0]} | {diff[1]} | {r['samples_per_second']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the trained runs (shared with ``benchmarks/gaps.py``, which trains, or
    reuses, the same runs)."""
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    p.add_argument("--guides", nargs="+", choices=list(GUIDE_FAMILIES), default=list(NAMES))
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--hidden", type=int, default=500, help="trunk and decoder hidden units")
    p.add_argument("--num-flows", type=int, default=2, help="IAF transforms")
    p.add_argument("--num-samples", type=lambda s: int(float(s)), default=1_000_000)
    p.add_argument("--num-train", type=int, default=None, help="first N training images")
    p.add_argument("--estimator", choices=["A", "B"], default="A")
    p.add_argument("--optimizer", choices=["adam", "adagrad"], default="adam")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--eval-size", type=int, default=1000, help="points of the history's bound")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--run-dir", default=None, help="where the trained runs are saved and reused")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_training_arguments(p)
    p.add_argument("--eval-n", type=int, default=1000, help="test points for ELBO and IWAE")
    p.add_argument("--iwae-k", type=int, default=5000, help="K, importance samples per point")
    p.add_argument("--eval-batch", type=int, default=100, help="test points per IWAE batch")
    p.add_argument("--out", default=None, help="JSON file (default: results/encoders.json)")
    p.add_argument("--quick", action="store_true", help=f"a smoke run in seconds: {QUICK}")
    return finish_args(p.parse_args(argv), QUICK, "encoders")


def finish_args(args: argparse.Namespace, quick: dict, name: str) -> argparse.Namespace:
    """``--quick`` applies ``quick``'s settings; ``--out`` defaults to results/NAME.json."""
    if args.quick:
        for key, value in quick.items():
            setattr(args, key, value)
    if args.out is None:
        args.out = RESULTS / (f"{name}-quick.json" if args.quick else f"{name}.json")
    return args


def family_configs(args: argparse.Namespace) -> list[dict]:
    """One plain-dict config (it crosses processes) per (data set, family)."""
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    return [
        {**settings, "dataset": d, "guide": g, "data_dir": args.data_dir}
        for d in args.datasets
        for g in args.guides
    ]


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    configs = family_configs(args)
    t0 = time.perf_counter()
    results = run_parallel(run_config, configs, args.jobs)
    for r in results:
        r["iwae_k"] = args.iwae_k
    paired_to_diagonal(results)
    out = Path(args.out)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    save_results(out, settings, results, time.perf_counter() - t0)
    table = markdown_table(results)
    out.with_suffix(".md").write_text(table)
    print(table, end="")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return results


if __name__ == "__main__":
    main()
