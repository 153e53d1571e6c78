"""Inference gaps of diagonal, full-covariance and IAF encoders (Cremer et al. 2018, Table 2
layout): how much of ``log p(x) - L[q]`` is the family's fault, how much the encoder's.

For each data set and encoder family, the paper's VAE (784-500-J Bernoulli MLP decoder) is
trained with that family's amortized autoguide exactly as ``benchmarks/encoders.py`` trains it
(the same function; with ``--run-dir`` the two scripts share the trained runs). Then on the
first ``--eval-n`` test images, :func:`pyro_aevb.evaluate.gap_report` gives per datapoint::

    log p(x)   by --log-marginal (IWAE with K = --lm-particles proposals from the
               refined q*, or AIS started from it), with its Monte Carlo standard error
    L[q*]      the ELBO after refining the family's parameters for that datapoint alone
               (``--refine-steps`` Adam steps of ``--refine-particles`` draws, decoder and
               encoder frozen; Polyak-averaged)
    L[q]       the encoder's ELBO
    approximation gap = log p(x) - L[q*]     amortization gap = L[q*] - L[q]

each bound from ``--particles`` draws; the table reports the means over the test points, the
standard error of each mean being the spread over the points (``std / sqrt(n)``) -- what
varies from one test set to another -- with the Monte Carlo error of the estimates inside it.

    PYRO_AEVB_DATA=../shared/data python benchmarks/gaps.py --jobs 2 --run-dir runs/encoders
    PYRO_AEVB_DATA=../shared/data python benchmarks/gaps.py --quick   # seconds, a smoke run

Writes ``--out`` (JSON: settings, command, machine, per-datapoint values) and the table as
Markdown next to it (``.md``); ``--figure`` draws the per-datapoint gaps of every run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from encoders import (  # noqa: E402
    NAMES,
    add_training_arguments,
    family_configs,
    finish_args,
    mean_stderr,
    train_family,
)
from paper_runs import run_parallel, save_results  # noqa: E402

from pyro_aevb.evaluate import gap_report  # noqa: E402

RESULTS = Path(__file__).parent / "results"
COLUMNS = ("log p(x)", "L[q*]", "L[q]", "approximation gap", "amortization gap")

QUICK = {
    "num_train": 500,
    "num_samples": 1000,
    "hidden": 32,
    "latent_dim": 4,
    "eval_n": 6,
    "lm_particles": 50,
    "particles": 20,
    "refine_steps": 20,
}


def run_config(cfg: dict) -> dict:
    """Train (or load) one (data set, family) and report its gaps on the test points."""
    dataset, vae, guide, result, train_wall = train_family(cfg)
    x = dataset.test[: cfg["eval_n"]]
    lm_options = (
        {"num_particles": cfg["lm_particles"]}
        if cfg["log_marginal"] == "iwae"
        else {"num_chains": cfg["ais_chains"], "num_temps": cfg["ais_temps"]}
    )
    t0 = time.perf_counter()
    per_point = {k: [] for k in ("log_p_x", "log_p_x_stderr", "refined", "refined_stderr",
                                 "elbo", "elbo_stderr", "converged")}  # fmt: skip
    for i, xb in enumerate(x.split(cfg["eval_batch"])):
        report = gap_report(
            vae.model,
            guide,
            xb,
            refine_options={
                "steps": cfg["refine_steps"],
                "num_particles": cfg["refine_particles"],
                "lr": cfg["refine_lr"],
            },
            log_marginal_method=cfg["log_marginal"],
            log_marginal_options=lm_options,
            num_particles=cfg["particles"],
            seed=cfg["seed"] + 1 + i,
        )
        lm = report.log_marginal
        for key, value in (
            ("log_p_x", lm.estimate),
            ("log_p_x_stderr", lm.stderr),
            ("refined", report.refined_elbo),
            ("refined_stderr", report.refined_elbo_stderr),
            ("elbo", report.elbo),
            ("elbo_stderr", report.elbo_stderr),
            ("converged", report.refined_guide.diagnostics["converged"].float()),
        ):
            per_point[key].append(value.detach())
    values = {k: torch.cat(v) for k, v in per_point.items()}
    eval_wall = time.perf_counter() - t0
    columns = {
        "log p(x)": values["log_p_x"],
        "L[q*]": values["refined"],
        "L[q]": values["elbo"],
        "approximation gap": values["log_p_x"] - values["refined"],
        "amortization gap": values["refined"] - values["elbo"],
    }
    return {
        **{k: cfg[k] for k in ("dataset", "guide", "latent_dim", "hidden", "num_samples")},
        "guide_config": guide.config,
        "table": {name: mean_stderr(v) for name, v in columns.items()},
        "monte_carlo_stderr": {
            "log p(x)": float(values["log_p_x_stderr"].pow(2).mean().sqrt()),
            "L[q*]": float(values["refined_stderr"].pow(2).mean().sqrt()),
            "L[q]": float(values["elbo_stderr"].pow(2).mean().sqrt()),
        },
        "refinement_converged": float(values["converged"].mean()),
        "per_datapoint": {k: v.tolist() for k, v in values.items()},
        "train_wall_seconds": train_wall,
        "eval_wall_seconds": eval_wall,
        "history": result.history,
    }


def markdown_table(results: list[dict], log_marginal: str) -> str:
    head = " | ".join(COLUMNS)
    lines = [
        f"| data set | encoder | {head} | refinement converged |",
        "|---|---|" + "---|" * len(COLUMNS) + "---|",
    ]
    for r in results:
        cells = " | ".join(f"{m:.2f} ± {s:.2f}" for m, s in (r["table"][c] for c in COLUMNS))
        lines.append(
            f"| {r['dataset']} | {NAMES[r['guide']]} | {cells} "
            f"| {100 * r['refinement_converged']:.0f}% |"
        )
    return "\n".join(lines) + f"\n\nlog p(x) by {log_marginal}.\n"


def plot(results: list[dict], path: Path) -> Path:
    """Per-datapoint approximation and amortization gaps of every run, side by side."""
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in results})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.6), squeeze=False)
    for ax, name in zip(axes[0], datasets, strict=True):
        runs = [r for r in results if r["dataset"] == name]
        for i, r in enumerate(runs):
            p = r["per_datapoint"]
            approx = torch.tensor(p["log_p_x"]) - torch.tensor(p["refined"])
            amort = torch.tensor(p["refined"]) - torch.tensor(p["elbo"])
            parts = ax.violinplot([approx.numpy(), amort.numpy()], [3 * i, 3 * i + 1])
            for body, colour in zip(parts["bodies"], ("C0", "C1"), strict=True):
                body.set_facecolor(colour)
            for key in ("cbars", "cmins", "cmaxes"):  # the range lines: not a family colour
                parts[key].set_color("0.3")
        ax.set_xticks([3 * i + 0.5 for i in range(len(runs))])
        ax.set_xticklabels([NAMES[r["guide"]] for r in runs])
        ax.set_ylabel("nats per datapoint")
        ax.set_title(f"{name}: approximation (blue), amortization (orange)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_training_arguments(p)
    p.add_argument("--eval-n", type=int, default=1000, help="test points in the table")
    p.add_argument("--eval-batch", type=int, default=100, help="test points refined at once")
    p.add_argument("--log-marginal", choices=["iwae", "ais"], default="iwae")
    p.add_argument("--lm-particles", type=int, default=5000, help="IWAE's K for log p(x)")
    p.add_argument("--ais-chains", type=int, default=16)
    p.add_argument("--ais-temps", type=int, default=500)
    p.add_argument("--particles", type=int, default=1000, help="draws per bound estimate")
    p.add_argument("--refine-steps", type=int, default=300)
    p.add_argument("--refine-particles", type=int, default=8)
    p.add_argument("--refine-lr", type=float, default=0.05)
    p.add_argument("--out", default=None, help="JSON file (default: results/gaps.json)")
    p.add_argument("--figure", action="store_true", help="also draw the gaps (.png)")
    p.add_argument("--quick", action="store_true", help=f"a smoke run in seconds: {QUICK}")
    return finish_args(p.parse_args(argv), QUICK, "gaps")


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    configs = family_configs(args)
    t0 = time.perf_counter()
    results = run_parallel(run_config, configs, args.jobs)
    lm = (
        f"IWAE with K = {args.lm_particles}"
        if args.log_marginal == "iwae"
        else f"AIS ({args.ais_chains} chains x {args.ais_temps} temperatures)"
    )
    out = Path(args.out)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    save_results(out, settings, results, time.perf_counter() - t0)
    table = markdown_table(results, lm)
    out.with_suffix(".md").write_text(table)
    print(table, end="")
    if args.figure:
        print(f"figure {plot(results, out.with_suffix('.png'))}")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return results


if __name__ == "__main__":
    main()
