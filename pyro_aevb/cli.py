"""Command line: ``pyro-aevb train | demo | figures | evaluate``.

``pyro-aevb demo`` is the main job: it trains the paper's VAE with a 2-D latent space on the
MNIST slice shipped inside the package (no download) in about a minute and writes the
learned manifold, random samples, reconstructions, the learning curve and a summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from .autoguide import GUIDE_FAMILIES
from .data import load_dataset
from .evaluate import METHOD_OPTIONS, METHODS, evaluate_bound, log_marginal, simulate_data
from .infer import AnalyticKLError
from .infer.objectives import ALGORITHMS, MCEM_OPTIONS, MonteCarloEM
from .models import conv_vae, paper_vae
from .plots import plot_learning_curves, plot_manifold, plot_reconstructions, plot_samples
from .train import NonFiniteLossError, fit, load_run, write_json_atomic
from .version import __version__

logger = logging.getLogger("pyro_aevb")


def _positive_number(text: str) -> int:
    # Accept 1e6 as well as 1000000 for sample budgets.
    value = float(text)
    if value <= 0 or value != int(value):
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(value)


class _GuideReconstructions:
    """``reconstruct(x)`` of a VAE trained with another guide (an autoguide): decode the
    guide's point estimate of ``z`` instead of the VAE's own (untrained) encoder's."""

    def __init__(self, vae, guide):
        self.vae, self.guide = vae, guide

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(self.guide.median(x)["z"])


def write_figures(module, dataset, history, out_dir: Path, guide=None) -> list[Path]:
    """Manifold (2-D latent only), samples, reconstructions and learning curve as PNGs.

    ``guide``: the guide the VAE was trained with, when not its own (reconstructions)."""
    shape = dataset.image_shape
    figures = []
    if module.latent_dim == 2:
        figures.append(plot_manifold(module, out_dir / "manifold.png", shape))
    figures.append(plot_samples(module, out_dir / "samples.png", shape))
    source = module if guide is None else _GuideReconstructions(module, guide)
    test = dataset.test[:20].reshape(-1, *module.event_shape)
    figures.append(plot_reconstructions(source, test, out_dir / "reconstructions.png", shape))
    if history:
        figures.append(
            plot_learning_curves(
                {"AEVB": history},
                out_dir / "learning_curve.png",
                title=f"{dataset.name}, N_z = {module.latent_dim}",
            )
        )
    return figures


def _objective(args):
    """The objective the training options ask for."""
    if args.algorithm == "mcem":
        return MonteCarloEM(**{k: getattr(args, f"mcem_{k}") for k in MCEM_OPTIONS})
    return ALGORITHMS[args.algorithm](args.estimator, 1)


def _model_and_guide(args, dataset):
    """The VAE the options ask for (``--arch``) and its guide (``--guide``; ``None``: the
    VAE's own encoder)."""
    prior = None if args.no_weight_prior else 1.0
    if args.arch == "conv":
        module = conv_vae(
            dataset.as_images().event_shape,
            args.latent_dim,
            likelihood=dataset.likelihood,
            sigmoid_mean=dataset.likelihood == "gaussian",
            weight_prior_std=prior,
        )
    else:
        module = paper_vae(dataset, args.latent_dim, args.hidden, weight_prior_std=prior)
    if args.guide == "vae":
        return module, None
    # the same trunk as the VAE's own encoder (the paper's tanh MLP, or the conv example)
    options = (
        {"encoder": "conv"}
        if args.arch == "conv"
        else {"hidden_dims": module.encoder.hidden_dims, "init_std": 0.1}
    )
    return module, GUIDE_FAMILIES[args.guide](module.model, **options)


def _train(args, dataset, out_dir: Path) -> dict:
    torch.manual_seed(args.seed)
    if args.resume:
        run = load_run(out_dir)
        module, guide = run.module, run.guide
    else:
        module, guide = _model_and_guide(args, dataset)
    if len(module.event_shape) > 1:
        dataset = dataset.as_images()
    budget = {"epochs": args.epochs} if args.epochs else {"num_samples": args.num_samples}
    t0 = time.perf_counter()
    result = fit(
        module,
        dataset,
        guide=guide,
        objective=_objective(args),
        optimizer=args.optimizer,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        eval_size=args.eval_size,
        out_dir=out_dir,
        resume=args.resume,
        fast=args.fast,
        progress=not args.no_progress,
        **budget,
    )
    seconds = time.perf_counter() - t0
    figures = (
        [] if args.no_figures else write_figures(module, dataset, result.history, out_dir, guide)
    )
    final = result.final
    train_seconds = final.get("train_seconds") or float("nan")
    summary = {
        "dataset": dataset.name,
        "source": dataset.source,
        "model": module.config,
        "guide": None if guide is None else guide.config,
        "algorithm": args.algorithm,
        "estimator": args.estimator,
        "optimizer": f"{args.optimizer} (lr {args.lr})",
        "path": result.path,
        "path_reason": result.path_reason,
        "samples": result.samples,
        "train_bound": final.get("train_bound"),
        "test_bound": final.get("test_bound"),
        "samples_per_second": result.samples / train_seconds,
        "seconds": seconds,
        "figures": [str(p) for p in figures],
    }
    write_json_atomic(out_dir / "summary.json", summary)
    return summary


def _print_summary(summary: dict) -> None:
    print(f"dataset           {summary['dataset']}  ({summary['source']})")
    path, estimator, optimizer = summary["path"], summary["estimator"], summary["optimizer"]
    why = f" ({summary['path_reason']})" if summary.get("path_reason") else ""
    print(f"algorithm         {summary['algorithm']}, estimator {estimator}, {optimizer}")
    print(f"training path     {path}{why}")
    print(f"samples           {summary['samples']:,}  ({summary['samples_per_second']:,.0f}/s)")
    for split in ("train", "test"):
        if summary.get(f"{split}_bound") is not None:
            print(f"{split} bound       {summary[f'{split}_bound']:.2f} nats per datapoint")
    for p in summary["figures"]:
        print(f"figure            {p}")


def cmd_train(args) -> int:
    dataset = load_dataset(args.dataset, data_dir=args.data_dir)
    _print_summary(_train(args, dataset, Path(args.out)))
    return 0


def cmd_demo(args) -> int:
    dataset = load_dataset("embedded-mnist")
    args.dataset = dataset.name
    print(
        f"pyro-aevb demo: training a 784-{args.hidden}-{args.latent_dim} VAE on "
        f"{dataset.num_train} embedded MNIST digits for {args.num_samples:,} samples "
        f"({args.optimizer}, lr {args.lr})"
    )
    _print_summary(_train(args, dataset, Path(args.out)))
    return 0


def _run_dataset(run, data_dir):
    """The data set of a run, in the layout it was trained on (flat or image-shaped)."""
    dataset = load_dataset(run.dataset or "embedded-mnist", data_dir=data_dir)
    return dataset.reshaped(flatten=len(run.config.get("event_shape") or [0]) == 1)


def cmd_figures(args) -> int:
    run = load_run(args.run_dir)
    dataset = _run_dataset(run, args.data_dir)
    out = Path(args.out or args.run_dir)
    for p in write_figures(run.module, dataset, run.history, out, run.guide):
        print(p)
    return 0


def _option_value(text: str):
    # "--option num_chains=32": JSON numbers, booleans and strings.
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _method_options(method: str, pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--option expects KEY=VALUE, got {pair!r}")
        if key not in METHOD_OPTIONS.get(method, {}):
            valid = ", ".join(sorted(METHOD_OPTIONS.get(method, {}))) or "none"
            raise ValueError(f"--option {key!r} is not an option of {method}; valid: {valid}")
        options[key] = _option_value(value)
    return options


def cmd_evaluate(args) -> int:
    run = load_run(args.run_dir)
    dataset = _run_dataset(run, args.data_dir)
    data = dataset.train if args.split == "train" else dataset.test
    if args.n is not None:
        data = data[: args.n]
    module = run.module
    guide = None if run.algorithm == "mcem" else (run.guide or module.guide)
    plate_name = args.plate_name or run.config["training"].get("plate_name", "data")
    options = _method_options(args.method, args.option)
    x = data
    if args.method == "bdmc" and "z" not in options:
        # BDMC needs exact posterior samples: simulate (x, z) from the model itself.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            x, z = simulate_data(module.model, data, plate_name=plate_name)
        options["z"] = z
    result = log_marginal(
        module.model,
        guide,
        x,
        method=args.method,
        seed=args.seed,
        plate_name=plate_name,
        **options,
    )
    report = {
        "run_dir": str(run.directory),
        "dataset": dataset.name,
        "split": "simulated" if args.method == "bdmc" else args.split,
        "n": x.shape[0],
        "samples_trained": run.history[-1]["samples"] if run.history else None,
        **result.to_dict(per_datapoint=True),
    }
    print(result.summary())
    if guide is not None:
        for estimator in ("B", "A"):
            try:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(args.seed)
                    elbo = evaluate_bound(
                        module, x, estimator=estimator, plate_name=plate_name, guide=run.guide
                    )
                break
            except AnalyticKLError as err:  # a flow or joint guide: no closed-form KL
                print(f"estimator B does not apply ({err}); the ELBO below uses estimator A")
        report["elbo_estimator"] = estimator
        report["elbo_mean"] = float(elbo.mean())
        gap = result.mean() - report["elbo_mean"]
        report["gap_to_elbo"] = gap
        print(
            f"ELBO (estimator {estimator}) on the same points: {report['elbo_mean']:.4f}; "
            f"log p(x) - ELBO = {gap:.4f} nats per datapoint"
        )
    out = (
        Path(args.out)
        if args.out
        else run.directory / f"evaluate-{args.method}-{report['split']}.json"
    )
    write_json_atomic(out, report)
    print(f"wrote {out}")
    return 0


def _add_training_options(
    p,
    num_samples: int,
    latent_dim: int,
    hidden: int | None,
    optimizer: str = "adagrad",
    lr: float = 0.02,
) -> None:
    p.add_argument("--latent-dim", type=int, default=latent_dim, help="N_z")
    p.add_argument(
        "--hidden", type=int, default=hidden, help="hidden units (paper: 500 MNIST, 200 Frey Face)"
    )
    p.add_argument(
        "--algorithm",
        choices=sorted(ALGORITHMS),
        default="aevb",
        help="AEVB (default), the wake-sleep baseline, or Monte Carlo EM",
    )
    p.add_argument("--estimator", choices=["A", "B"], default="B")
    p.add_argument(
        "--arch",
        choices=["mlp", "conv"],
        default="mlp",
        help="the paper's MLP VAE, or the convolutional VAE (28x28 padded to 32x32, "
        "32/64/128 channels) on image-shaped data",
    )
    p.add_argument(
        "--guide",
        choices=["vae", *GUIDE_FAMILIES],
        default="vae",
        help="the encoder: the VAE's own (default, fast path), or an amortized autoguide "
        "with the same trunk: diag (AmortizedNormal), full (AmortizedMultivariateNormal), "
        "iaf (AmortizedIAF; train with --estimator A)",
    )
    for key, default in MCEM_OPTIONS.items():
        kind = int if isinstance(default, int) else float
        p.add_argument(
            f"--mcem-{key.replace('_', '-')}",
            dest=f"mcem_{key}",
            type=kind,
            default=default,
            help=f"Monte Carlo EM: {key} (default {default})",
        )
    p.add_argument("--optimizer", choices=["adagrad", "adam"], default=optimizer)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--num-samples", type=_positive_number, default=num_samples)
    p.add_argument("--epochs", type=float, default=None, help="budget in epochs instead")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-size", type=int, default=1000)
    p.add_argument("--no-weight-prior", action="store_true", help="ML instead of MAP")
    p.add_argument("--fast", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-figures", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-aevb", description="Auto-Encoding Variational Bayes for Pyro"
    )
    parser.add_argument("--version", action="version", version=f"pyro-aevb {__version__}")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a VAE on a data set")
    p.add_argument(
        "--dataset", default="mnist", help="mnist, fashion-mnist, frey-face, embedded-mnist"
    )
    p.add_argument(
        "--data-dir", default=None, help="data directory (default: $PYRO_AEVB_DATA or download)"
    )
    p.add_argument("--out", default="runs/train", help="output directory")
    _add_training_options(p, num_samples=1_000_000, latent_dim=20, hidden=None)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="the main job: train on the embedded MNIST slice")
    p.add_argument("--out", default="runs/demo", help="output directory")
    # Adam draws a clearer manifold than the paper's Adagrad within the demo's minute.
    _add_training_options(
        p, num_samples=300_000, latent_dim=2, hidden=500, optimizer="adam", lr=1e-3
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("figures", help="redraw the figures of a run")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="where to write (default: the run directory)")
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("evaluate", help="estimate log p(x) per datapoint for a trained run")
    p.add_argument("run_dir")
    p.add_argument("--method", choices=METHODS, default="iwae")
    p.add_argument("--n", type=int, default=1000, help="first N points of the split")
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method option, e.g. num_particles=5000 (iwae), num_chains=32 (ais); repeatable",
    )
    p.add_argument("--plate-name", default=None, help="the data plate's name (default: the run's)")
    p.add_argument("--out", default=None, help="JSON file (default: RUN_DIR/evaluate-...json)")
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our own messages at INFO (which training path runs, resumes); other libraries' at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except (
        FileNotFoundError,
        FileExistsError,
        ValueError,
        TypeError,
        NonFiniteLossError,
        AnalyticKLError,
    ) as err:
        print(f"pyro-aevb: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
