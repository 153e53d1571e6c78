"""Command line: ``pyro-aevb train | demo | figures | evaluate | gap``.

``pyro-aevb demo`` is the main job: it trains the paper's VAE with a 2-D latent space on the
MNIST slice shipped inside the package (no download) in about a minute and writes the
learned manifold, random samples, reconstructions, the learning curve and a summary.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import math
import shlex
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from .autoguide import GUIDE_FAMILIES
from .data import load_dataset
from .data.datasets import canonical_name
from .device import fork_rng
from .evaluate import (
    METHOD_OPTIONS,
    METHODS,
    evaluate_bound,
    gap_report,
    log_marginal,
    simulate_data,
)
from .evaluate.kept_blocks import KeptBlocksMismatch
from .infer import AnalyticKLError
from .infer.objectives import ALGORITHMS, MCEM_OPTIONS, MonteCarloEM
from .models import conv_vae, paper_vae
from .plots import (
    plot_gaps,
    plot_learning_curves,
    plot_manifold,
    plot_reconstructions,
    plot_samples,
)
from .train import (
    NonFiniteLossError,
    TrainingInterrupted,
    fit,
    load_run,
    read_json,
    write_json_atomic,
)
from .train.distributed import init_distributed, launched_by_torchrun, world
from .train.fingerprint import data_fingerprint, describe_fingerprint, same_data
from .train.interrupt import exit_status, signal_name
from .train.runs import RUN_FILES
from .train.trainer import Trainer
from .validation import check_seed
from .version import __version__

logger = logging.getLogger("pyro_aevb")


def _positive_number(text: str) -> int:
    # Accept 1e6 as well as 1000000 for sample budgets.
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0 or value != int(value):
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(value)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        return check_seed(_non_negative_int(text))  # the library's range check
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer >= 0 and <= 2**63 - 1 (a torch seed), got {text!r}"
        ) from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


class _GuideReconstructions:
    """``reconstruct(x)`` of a VAE trained with another guide (an autoguide): decode the
    guide's point estimate of ``z`` instead of the VAE's own (untrained) encoder's."""

    def __init__(self, vae, guide):
        self.vae, self.guide = vae, guide

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(self.guide.median(x)["z"])


#: The learning curve's label of each training algorithm (config ``training.algorithm``).
_ALGORITHM_LABELS = {
    "aevb": "AEVB",
    "wake-sleep": "wake-sleep",
    "iwae": "IWAE bound",
    "sa-vae": "SA-VAE",
    "mcem": "MCEM",
}


#: The figures :func:`write_figures` writes.
FIGURE_NAMES = ("manifold.png", "samples.png", "reconstructions.png", "learning_curve.png")


def write_figures(
    module, dataset, history, out_dir: Path, guide=None, algorithm: str = "aevb"
) -> list[Path]:
    """Manifold (2-D latent only), samples, reconstructions and learning curve as PNGs.

    ``guide``: the guide the VAE was trained with, when not its own (reconstructions).
    ``algorithm``: the run's (``training.algorithm``); Monte Carlo EM trains no encoder, so
    its runs get no reconstructions, and runs without a bound in the history no curve."""
    shape = dataset.image_shape
    figures = []
    if module.latent_dim == 2:
        figures.append(plot_manifold(module, out_dir / FIGURE_NAMES[0], shape))
    figures.append(plot_samples(module, out_dir / FIGURE_NAMES[1], shape))
    if algorithm == "mcem" and guide is None:
        logger.info("no reconstructions: Monte Carlo EM trains no encoder")
    else:
        source = module if guide is None else _GuideReconstructions(module, guide)
        test = dataset.test[:20].reshape(-1, *module.event_shape)
        figures.append(plot_reconstructions(source, test, out_dir / FIGURE_NAMES[2], shape))
    if any(h.get("train_bound") is not None or h.get("test_bound") is not None for h in history):
        figures.append(
            plot_learning_curves(
                {_ALGORITHM_LABELS.get(algorithm, algorithm): history},
                out_dir / FIGURE_NAMES[3],
                title=f"{dataset.name}, N_z = {module.latent_dim}",
            )
        )
    return figures


#: fit's defaults: what a new run takes for the options left out.
_FIT_DEFAULTS = {
    name: p.default for name, p in inspect.signature(Trainer.__init__).parameters.items()
}

# The objective's options on the command line: destination -> (flag, the objective's keyword,
# the objectives it applies to). They default to None: left out, they take the run's value on
# --resume, else the objective's default; given for another objective, they are an error.
_OBJECTIVE_OPTIONS = {
    "estimator": ("--estimator", "estimator", ("aevb", "wake-sleep")),
    "particles": ("--particles", "num_particles", ("aevb", "wake-sleep", "iwae")),
    "dreg": ("--dreg", "dreg", ("iwae",)),
    "sa_steps": ("--sa-steps", "refine_steps", ("sa-vae",)),
    "sa_lr": ("--sa-lr", "refine_lr", ("sa-vae",)),
    **{f"mcem_{key}": (f"--mcem-{key.replace('_', '-')}", key, ("mcem",)) for key in MCEM_OPTIONS},
}
# Why an option does not apply to an objective, where the message should say more.
_DOES_NOT_APPLY = {
    ("--estimator", "iwae"): "the IWAE bound has no estimator (its log weights are estimator "
    "A's terms); set K with --particles",
    ("--particles", "mcem"): "Monte Carlo EM has no guide to draw from",
    ("--particles", "sa-vae"): "use --sa-steps / --sa-lr",
}


def _objective(args, saved: dict | None = None):
    """The objective the training options ask for. ``saved``: the ``training`` entry of the
    config of the run to resume; its objective and that objective's options are the defaults
    of those left out (so that ``--resume`` alone continues the run as it is)."""
    saved = saved or {}
    algorithm = args.algorithm or saved.get("algorithm") or "aevb"
    whose = " (the run's objective)" if args.algorithm is None and saved else ""
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"the run trained the objective {algorithm!r}, which the command line cannot "
            f"rebuild (known: {', '.join(sorted(ALGORITHMS))})"
        )
    cls = ALGORITHMS[algorithm]
    options = {}
    if algorithm == saved.get("algorithm"):
        # the run's options, as recorded by its objective's settings() (its keywords)
        keywords = inspect.signature(cls).parameters
        options = {k: v for k, v in (saved.get("objective") or {}).items() if k in keywords}
    for dest, (flag, keyword, algorithms) in _OBJECTIVE_OPTIONS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if algorithm not in algorithms:
            why = _DOES_NOT_APPLY.get((flag, algorithm))
            raise ValueError(
                f"{flag} applies to --objective {' / '.join(algorithms)} only, not "
                f"{algorithm}{whose}{f': {why}' if why else ''}"
            )
        options[keyword] = value
    try:
        return cls(**options)
    except (ValueError, TypeError) as err:
        # name the flags, not the objective's keywords
        flags = [
            f"{flag} {getattr(args, dest)}"
            for dest, (flag, keyword, _) in _OBJECTIVE_OPTIONS.items()
            if getattr(args, dest, None) is not None and keyword in str(err)
        ]
        if not flags:
            raise
        raise type(err)(f"{', '.join(flags)}: {err}") from None


def _budget(args, run=None) -> dict:
    """``num_samples=`` or ``epochs=`` of fit: exactly one, as fit takes. On ``--resume``
    (``run``) without either, the run's own budget."""
    if args.epochs is not None and args.num_samples is not None:
        raise ValueError(
            f"give one training budget, --num-samples or --epochs, not both (got --num-samples "
            f"{args.num_samples} and --epochs {args.epochs})"
        )
    if args.epochs is not None:
        return {"epochs": args.epochs}
    if args.num_samples is None and run is not None and run.config.get("num_samples"):
        return {"num_samples": int(run.config["num_samples"])}
    return {
        "num_samples": args.default_num_samples if args.num_samples is None else args.num_samples
    }


def _training_settings(args, run=None) -> dict:
    """fit's training settings from the options. Those left out take the run's recorded
    values on --resume (``run``), else the command's defaults; those given are passed as given,
    so that fit(resume=True) refuses any that differ from the run (the step size may be
    lowered)."""
    saved = None if run is None else run.config.get("training") or {}

    def pick(value, key: str, default):
        if value is not None:
            return value
        if saved is not None and key in saved:
            return saved[key]
        return default

    objective = _objective(args, saved)
    if args.eval_size is not None and isinstance(objective, MonteCarloEM):
        raise ValueError(
            "--eval-size sets how many rows the history's bounds use, but Monte Carlo EM "
            "records no bound; leave it out"
        )
    return {
        "objective": objective,
        "optimizer": pick(args.optimizer, "optimizer", args.default_optimizer),
        # the command's default for a new run; fit takes the run's own on resume
        "lr": args.lr if args.lr is not None or run is not None else args.default_lr,
        "batch_size": pick(args.batch_size, "batch_size", _FIT_DEFAULTS["batch_size"]),
        "seed": pick(args.seed, "seed", _FIT_DEFAULTS["seed"]),
        "eval_size": pick(args.eval_size, "eval_size", _FIT_DEFAULTS["eval_size"]),
        **_budget(args, run),
    }


def _model_option_differences(args, saved: dict) -> list[str]:
    """The model options given on the command line that differ from the run's model."""
    out = []
    if args.latent_dim is not None and args.latent_dim != saved.get("latent_dim"):
        out.append(f"--latent-dim {args.latent_dim} (the run's: {saved.get('latent_dim')})")
    hidden = saved.get("hidden_dims")
    hidden = [hidden] if isinstance(hidden, int) else list(hidden or [])
    if args.hidden is not None and [args.hidden] != hidden:
        out.append(f"--hidden {args.hidden} (the run's hidden layers: {saved.get('hidden_dims')})")
    if args.no_weight_prior and saved.get("weight_prior_std") is not None:
        out.append(
            f"--no-weight-prior (the run has the N(0, {saved.get('weight_prior_std')}^2) prior)"
        )
    return out


def _resumed_run(args, run, out_dir: Path):
    """The run's model and guide (``None``: the model's own), rebuilt from its checkpoint;
    model and guide options given on the command line must agree with them (a resumed run
    never silently keeps another model)."""
    saved = run.config.get("model") or {}
    differ = _model_option_differences(args, saved)
    arch = "conv" if saved.get("preset") == "conv_vae" else "mlp"
    if args.arch is not None and args.arch != arch:
        differ.append(f"--arch {args.arch} (the run's: {arch})")
    if args.guide is not None:
        wanted = None if args.guide == "vae" else GUIDE_FAMILIES[args.guide]
        if (run.guide is None) != (wanted is None) or (
            wanted is not None and type(run.guide) is not wanted
        ):
            have = "vae" if run.guide is None else type(run.guide).__name__
            differ.append(f"--guide {args.guide} (the run's: {have})")
    if differ:
        raise ValueError(
            f"cannot resume the run in {out_dir} with another model: {'; '.join(differ)}. "
            f"Leave these options out to continue the run as it is, or train the new model "
            f"into another --out"
        )
    return run.module, run.guide


def _model_and_guide(args, dataset):
    """The VAE the options ask for (``--arch``) and its guide (``--guide``; ``None``: the
    VAE's own encoder)."""
    prior = None if args.no_weight_prior else 1.0
    latent_dim = args.default_latent_dim if args.latent_dim is None else args.latent_dim
    hidden = args.default_hidden if args.hidden is None else args.hidden
    if args.arch == "conv":
        if args.hidden is not None:
            raise ValueError(
                "--hidden sets the MLP's hidden layer; it does not apply to --arch conv"
            )
        module = conv_vae(
            dataset.as_images().event_shape,
            latent_dim,
            likelihood=dataset.likelihood,
            sigmoid_mean=dataset.likelihood == "gaussian",
            weight_prior_std=prior,
        )
    else:
        module = paper_vae(dataset, latent_dim, hidden, weight_prior_std=prior)
    if args.guide in (None, "vae"):
        return module, None
    if args.algorithm == "mcem":
        raise ValueError(
            f"--guide {args.guide} does not apply to --objective mcem: Monte Carlo EM trains no "
            f"encoder (its E-step runs HMC); leave out --guide"
        )
    # the same trunk as the VAE's own encoder (the paper's tanh MLP, or the conv example)
    options = (
        {"encoder": "conv"}
        if args.arch == "conv"
        else {"hidden_dims": module.encoder.hidden_dims, "init_std": 0.1}
    )
    return module, GUIDE_FAMILIES[args.guide](module.model, **options)


def _run_to_resume(args):
    """The run in ``--out`` when ``--resume`` is given, else ``None``."""
    return load_run(args.out) if args.resume else None


def _train(args, dataset, out_dir: Path, run, settings: dict) -> dict:
    """Train (``run``: the run to resume, or ``None``) with ``settings``, fit's training
    settings (:func:`_training_settings`)."""
    torch.manual_seed(settings["seed"])
    if run is not None:
        module, guide = _resumed_run(args, run, out_dir)
    else:
        module, guide = _model_and_guide(args, dataset)
    if len(module.event_shape) > 1:
        dataset = dataset.as_images()
    objective = settings["objective"]
    minutes = args.checkpoint_minutes
    t0 = time.perf_counter()
    result = fit(
        module,
        dataset,
        guide=guide,
        checkpoint_every=args.checkpoint_every,
        checkpoint_every_seconds=None if minutes is None else 60.0 * minutes,
        out_dir=out_dir,
        resume=run is not None,
        fast=args.fast,
        progress=not args.no_progress,
        device=args.device,
        **settings,
    )
    seconds = time.perf_counter() - t0
    if world()[0] != 0:
        return None  # data-parallel: rank 0 writes the figures and the summary
    module.cpu()  # the figures are drawn on the CPU
    if guide is not None:
        guide.cpu()
    figures = (
        []
        if args.no_figures
        else write_figures(
            module,
            dataset,
            result.history,
            out_dir,
            guide,
            result.config["training"]["algorithm"],
        )
    )
    final = result.final
    train_seconds = final.get("train_seconds") or float("nan")
    summary = {
        "dataset": dataset.name,
        "source": dataset.source,
        "model": module.config,
        "guide": None if guide is None else guide.config,
        "algorithm": objective.name,
        "estimator": objective.settings().get("estimator"),
        "objective": objective.settings(),
        "optimizer": f"{settings['optimizer']} (lr {result.config['training']['lr']})",
        "path": result.path,
        "path_reason": result.path_reason,
        "device": result.config.get("device"),
        "data_parallel": result.config.get("data_parallel"),
        "samples": result.samples,
        "train_bound": final.get("train_bound"),
        "test_bound": final.get("test_bound"),
        # the bounds' own point: earlier than "samples" when the run went on past its last
        # evaluation (a resume with a smaller budget)
        "bound_samples": final.get("samples"),
        "samples_per_second": result.samples / train_seconds,
        "seconds": seconds,
        "figures": [str(p) for p in figures],
        # figures left from before this training (--no-figures on a resumed run): they show
        # the model as it was then
        "figures_from_before": [
            str(out_dir / n) for n in FIGURE_NAMES if args.no_figures and (out_dir / n).is_file()
        ],
    }
    write_json_atomic(out_dir / "summary.json", summary)
    return summary


def _print_summary(summary: dict) -> None:
    print(f"dataset           {summary['dataset']}  ({summary['source']})")
    path, estimator, optimizer = summary["path"], summary["estimator"], summary["optimizer"]
    why = f" ({summary['path_reason']})" if summary.get("path_reason") else ""
    settings = summary["objective"]
    if summary["algorithm"] == "iwae":  # no estimator: K particles, plain or DReG gradients
        grads = "DReG" if settings["dreg"] else "plain"
        estimator = f"K = {settings['num_particles']} ({grads} gradients)"
    elif summary["algorithm"] == "mcem":  # no guide, no estimator: an HMC E-step
        estimator = (
            f"HMC E-step ({settings['num_transitions']} x {settings['num_leapfrog']} leapfrog "
            f"steps), {settings['num_m_steps']} M-steps"
        )
    elif summary["algorithm"] == "sa-vae":
        estimator = f"{settings['refine_steps']} refinement steps (lr {settings['refine_lr']})"
    else:
        estimator = f"estimator {estimator}"
    print(f"algorithm         {summary['algorithm']}, {estimator}, {optimizer}")
    print(f"training path     {path}{why}")
    parallel = summary.get("data_parallel") or {}
    if parallel.get("world_size", 1) > 1:
        print(f"data-parallel     {parallel['world_size']} ranks ({parallel['backend']})")
    print(f"samples           {summary['samples']:,}  ({summary['samples_per_second']:,.0f}/s)")
    at = summary.get("bound_samples")
    at = f" (at {at:,} samples)" if at is not None and at != summary["samples"] else ""
    for split in ("train", "test"):
        if summary.get(f"{split}_bound") is not None:
            bound = summary[f"{split}_bound"]
            print(f"{split + ' bound':<18}{bound:.2f} nats per datapoint{at}")
    for p in summary["figures"]:
        print(f"figure            {p}")
    for p in summary.get("figures_from_before") or []:
        print(f"figure (older)    {p}: from before this training (pyro-aevb figures redraws it)")


#: Files the command line writes beside a run's own (the trainer refuses a folder holding
#: those, RUN_FILES).
RESULT_PATTERNS = ("summary.json", "evaluate-*.json", "gaps-*.json", "gaps-*.png", *FIGURE_NAMES)


def _check_new_run_dir(args) -> None:
    """A new run's ``--out`` must not hold an earlier run's results: they would sit beside
    the new checkpoint describing another model (and evaluate would refuse to replace
    them). Checked before anything is loaded or trained."""
    if not str(args.out).strip():
        raise ValueError("--out is empty; give the folder of the run (e.g. --out runs/mnist)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; give the folder of the run")
    if args.resume or not out.is_dir():
        return
    run_files = [n for n in RUN_FILES if (out / n).exists()]
    if run_files:
        raise FileExistsError(
            f"--out {out} holds an earlier run ({', '.join(run_files)}): continue it with "
            f"--resume, or choose another --out (nothing was overwritten)"
        )
    found = sorted({p.name for pattern in RESULT_PATTERNS for p in out.glob(pattern)})
    if found:
        raise FileExistsError(
            f"{out} holds results of an earlier run ({', '.join(found[:6])}"
            f"{', ...' if len(found) > 6 else ''}) though not its checkpoint: a new run there "
            f"would leave them describing another model. Choose another --out, or move them "
            f"away; nothing was overwritten"
        )


def cmd_train(args) -> int:
    _check_new_run_dir(args)
    run = _run_to_resume(args)
    settings = _training_settings(args, run)  # bad combinations fail before the data load
    if run is not None:
        _require_named_dataset(run)
    if args.dataset is None:
        # a resumed run continues on its own data set; a new one trains on MNIST
        args.dataset = (None if run is None else run.dataset) or "mnist"
    dataset = _load_dataset(args.dataset, args.data_dir)
    summary = _train(args, dataset, Path(args.out), run, settings)
    if summary is not None:
        _print_summary(summary)
    return 0


def cmd_demo(args) -> int:
    _check_new_run_dir(args)
    run = _run_to_resume(args)
    settings = _training_settings(args, run)
    dataset = load_dataset("embedded-mnist")
    args.dataset = dataset.name
    budget = (
        f"{settings['num_samples']:,} samples"
        if "num_samples" in settings
        else f"{settings['epochs']:g} epochs"
    )
    if world()[0] == 0 and run is None:
        latent_dim = args.latent_dim or args.default_latent_dim
        hidden = args.hidden or args.default_hidden
        vae = (
            f"convolutional VAE (N_z = {latent_dim})"
            if args.arch == "conv"
            else f"784-{hidden}-{latent_dim} VAE"
        )
        print(
            f"pyro-aevb demo: training a {vae} on "
            f"{dataset.num_train} embedded MNIST digits for {budget} "
            f"({settings['optimizer']}, lr {settings['lr']})"
        )
    elif world()[0] == 0:
        print(f"pyro-aevb demo: continuing the run in {args.out} to {budget}")
    summary = _train(args, dataset, Path(args.out), run, settings)
    if summary is not None:
        _print_summary(summary)
    return 0


def _load_dataset(name: str, data_dir):
    if data_dir is not None and canonical_name(name) == "embedded-mnist":
        raise ValueError(
            f"--data-dir {data_dir} does not apply to the data set 'embedded-mnist' (it ships "
            f"with the package); leave --data-dir out"
        )
    return load_dataset(name, data_dir=data_dir)


def _require_named_dataset(run) -> None:
    if run.dataset is None:
        raise ValueError(
            f"run {run.directory} was trained on data given to fit() as tensors (its "
            f"config.json names no data set), which the command line cannot load; continue "
            f"or evaluate it from Python on those data: run = load_run("
            f"{str(run.directory)!r}), then fit(..., resume=True) or e.g. "
            f"log_marginal(run.module.model, run.guide, x)"
        )


def _run_dataset(run, data_dir):
    """The data set of a run, in the layout it was trained on (flat or image-shaped).

    Refused when the run names no data set (it trained on tensors given to ``fit``) and when
    a split differs from the data the run recorded (a subset, binarised, other files): never
    another data set's numbers under the run's name."""
    _require_named_dataset(run)
    dataset = _load_dataset(run.dataset, data_dir)
    dataset = dataset.reshaped(flatten=len(run.config.get("event_shape") or [0]) == 1)
    recorded = run.config.get("data") or {}
    for split in ("train", "test"):
        fingerprint, x = recorded.get(split), getattr(dataset, split)
        if fingerprint is None or x is None:
            continue
        if not same_data(x, fingerprint):
            found = describe_fingerprint(data_fingerprint(x))
            raise ValueError(
                f"the {split} split of {run.dataset!r} ({found}) is not the data run "
                f"{run.directory} was trained on ({describe_fingerprint(fingerprint)}): the "
                f"run used a modified copy (a "
                f"subset, binarised, ...) or other files (--data-dir); evaluate it from Python "
                f"on its own data"
            )
    return dataset


def cmd_figures(args) -> int:
    run = load_run(args.run_dir)
    out = Path(args.out or args.run_dir)
    own = out.resolve() == Path(args.run_dir).resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give the folder to draw the figures in")
    if not own and out.is_dir() and not args.overwrite:
        # another run's figures (or earlier ones) are not replaced silently
        found = [n for n in (*FIGURE_NAMES, *RUN_FILES) if (out / n).exists()]
        if found:
            raise FileExistsError(
                f"--out {out} holds {', '.join(found[:4])}{' ...' if len(found) > 4 else ''} "
                f"(another run's, or earlier figures); pass --overwrite to replace the "
                f"figures, or choose another --out (nothing was drawn)"
            )
    dataset = _run_dataset(run, args.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    algorithm = (run.config.get("training") or {}).get("algorithm", "aevb")
    drawn = write_figures(run.module, dataset, run.history, out, run.guide, algorithm)
    for p in drawn:
        print(p)
    summary_path = out / "summary.json"
    if own and summary_path.is_file():
        # the run's summary lists the redrawn figures as current, no longer as older ones
        summary = read_json(summary_path)
        if isinstance(summary, dict):
            names = {str(p) for p in drawn}
            older = [f for f in summary.get("figures_from_before") or [] if f not in names]
            listed = [f for f in summary.get("figures") or [] if f not in names]
            summary.update(figures=listed + sorted(names), figures_from_before=older)
            write_json_atomic(summary_path, summary)
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


def _first_rows(dataset, split: str, n: int | None, default: int) -> torch.Tensor:
    """The first ``n`` rows of the split (``None``: ``default``, or all of a smaller split);
    an ``n`` beyond the split's rows is an error, not fewer rows than asked."""
    data = dataset.train if split == "train" else dataset.test
    if n is None:
        return data[:default]
    if n > data.shape[0]:
        raise ValueError(
            f"--n {n}: the {split} split of {dataset.name} has {data.shape[0]} rows; give "
            f"--n <= {data.shape[0]} (or leave it out: the first {default} rows, or all of a "
            f"smaller split)"
        )
    return data[:n]


def _write_result(out: Path, report: dict, overwrite: bool) -> Path:
    """Write a command's JSON report to ``out``; returns where it went. Without
    ``overwrite``, a file another command wrote at ``out`` meanwhile (``_output_file``
    checked it was free) is kept, and this result goes beside it under a free name
    (``name~1.json``, ...): neither result is lost."""
    if overwrite:
        return write_json_atomic(out, report)
    wanted = out
    for k in range(1, 1000):
        try:
            written = write_json_atomic(out, report, exclusive=True)
        except FileExistsError:
            out = wanted.with_name(f"{wanted.stem}~{k}{wanted.suffix}")
            continue
        if written != wanted:
            print(f"{wanted} was written by another command meanwhile; it is kept, and this "
                  f"result is in {written}")  # fmt: skip
        return written
    raise FileExistsError(f"no free name beside {wanted} for this result")


def _output_file(args, default: Path, figure: bool = False) -> Path:
    """Where a command writes its JSON (``--out``, else ``default``; with ``figure``, also a
    figure beside it with the suffix ``.png``), checked before anything is computed: an
    existing result is not replaced without ``--overwrite`` (an evaluation can take hours),
    and a directory, a missing folder or one that cannot be written is an error now, not at
    the end."""
    out = Path(args.out) if args.out else default
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give the JSON file to write")
    if figure and out.suffix.lower() == ".png":
        raise ValueError(
            f"--out {out} names the JSON report; the figure is written beside it with the "
            f"suffix .png, so give e.g. --out {out.with_suffix('.json')}"
        )
    if not out.parent.is_dir():
        raise ValueError(f"cannot write {out}: the folder {out.parent} does not exist")
    for path in (out, out.with_suffix(".png")) if figure else (out,):
        if path.exists() and not args.overwrite:
            raise FileExistsError(
                f"{path} exists (an earlier result); pass --overwrite to replace it, or --out "
                f"FILE to write elsewhere (nothing was computed)"
            )
    try:  # the results are written atomically through a temporary file in that folder
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as err:
        raise ValueError(
            f"cannot write {out}: the folder {out.parent} is not writable ({err.strerror}); "
            f"nothing was computed"
        ) from None
    return out


def cmd_evaluate(args) -> int:
    if args.split is not None and args.method == "bdmc":
        raise ValueError(
            "--split does not apply to --method bdmc: it evaluates data simulated from the "
            "model (the split only gives their shape); leave --split out"
        )
    args.split = args.split or "test"
    run = load_run(args.run_dir)
    dataset = _run_dataset(run, args.data_dir)
    data = _first_rows(dataset, args.split, args.n, default=1000)
    module = run.module
    guide = None if run.algorithm == "mcem" else (run.guide or module.guide)
    if guide is None and args.method in ("elbo", "iwae"):
        raise ValueError(
            f"run {run.directory} trained Monte Carlo EM, which trains no encoder: --method "
            f"{args.method} needs one (its proposal q(z|x)); use --method ais, appendix_d or "
            f"bdmc"
        )
    plate_name = args.plate_name or run.config["training"].get("plate_name", "data")
    options = _method_options(args.method, args.option)
    split = "simulated" if args.method == "bdmc" else args.split
    out = _output_file(args, run.directory / f"evaluate-{args.method}-{split}.json")
    x = data
    if args.method == "bdmc" and "z" not in options:
        # BDMC needs exact posterior samples: simulate (x, z) from the model itself.
        with fork_rng():
            torch.manual_seed(args.seed)
            x, z = simulate_data(module.model, data, plate_name=plate_name)
        options["z"] = z
    # one process: the finished blocks are kept beside the report, so that an interrupted
    # evaluation (hours of AIS) continues where it was; removed once the report is written
    keep = out.with_name(out.name + ".blocks.pt") if world()[1] == 1 else None
    args.kept_blocks = keep

    def evaluate():
        return log_marginal(
            module.model,
            guide,
            x,
            method=args.method,
            seed=args.seed,
            plate_name=plate_name,
            block_size=args.block_size,
            device=args.device,
            keep_blocks=keep,
            **options,
        )

    try:
        result = evaluate()
    except KeptBlocksMismatch as err:
        if not args.overwrite:
            raise KeptBlocksMismatch(f"{err}, or pass --overwrite") from None
        keep.unlink()
        result = evaluate()
    if world()[0] != 0:
        return 0  # sharded: every rank has the whole result, rank 0 reports it
    report = {
        "run_dir": str(run.directory),
        "dataset": dataset.name,
        "split": split,
        "n": x.shape[0],
        "samples_trained": run.samples,  # the checkpoint's, which these parameters are
        **result.to_dict(per_datapoint=True),
    }
    print(result.summary())
    if guide is not None:
        for estimator in ("B", "A"):
            try:
                with fork_rng():
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
    out = _write_result(out, report, args.overwrite)
    if keep is not None:
        keep.unlink(missing_ok=True)
    print(f"wrote {out}")
    return 0


def cmd_gap(args) -> int:
    run = load_run(args.run_dir)
    if run.algorithm == "mcem":
        raise ValueError(f"run {run.directory} trained Monte Carlo EM: it has no encoder to refine")
    dataset = _run_dataset(run, args.data_dir)
    x = _first_rows(dataset, args.split, args.n, default=100)
    module = run.module
    plate_name = args.plate_name or run.config["training"].get("plate_name", "data")
    options = _method_options(args.method, args.option)
    out = _output_file(args, run.directory / f"gaps-{args.split}.json", figure=True)
    report = gap_report(
        module.model,
        run.guide or module.guide,  # the guide the run trained (an autoguide, if any)
        x,
        refine_options={"steps": args.refine_steps, "lr": args.refine_lr},
        log_marginal_method=args.method,
        log_marginal_options=options,
        num_particles=args.particles,
        plate_name=plate_name,
        seed=args.seed,
    )
    print(report.summary())
    out = _write_result(
        out,
        {"run_dir": str(run.directory), "split": args.split, **report.to_dict()},
        args.overwrite,
    )
    figure = plot_gaps(report, out.with_suffix(".png"))
    print(f"wrote {out} and {figure}")
    return 0


def _add_training_options(
    p,
    num_samples: int,
    latent_dim: int,
    hidden: int | None,
    optimizer: str = "adagrad",
    lr: float = 0.02,
) -> None:
    # Options that set the run default to None: on --resume, those left out take the run's
    # values and those given must match the run (fit refuses the others); for a new run, the
    # defaults below (set_defaults) or the objective's own.
    p.add_argument(
        "--latent-dim", type=_positive_int, default=None, help=f"N_z (default {latent_dim})"
    )
    p.add_argument(
        "--hidden",
        type=_positive_int,
        default=None,
        help="hidden units (default "
        + ("the paper's: 500 MNIST, 200 Frey Face" if hidden is None else str(hidden))
        + ")",
    )
    p.set_defaults(
        default_latent_dim=latent_dim,
        default_hidden=hidden,
        default_lr=lr,
        default_optimizer=optimizer,
        default_num_samples=num_samples,
    )
    on_resume = "; on --resume the run's"
    p.add_argument(
        "--algorithm",
        "--objective",
        dest="algorithm",
        choices=sorted(ALGORITHMS),
        default=None,
        help="AEVB (default), the wake-sleep baseline, Monte Carlo EM, the importance-weighted "
        f"bound (iwae), or the semi-amortized VAE (sa-vae){on_resume}",
    )
    p.add_argument(
        "--estimator",
        choices=["A", "B"],
        default=None,
        help=f"aevb and wake-sleep: the ELBO's estimator (default B{on_resume})",
    )
    p.add_argument(
        "--sa-steps",
        type=_positive_int,
        default=None,
        help=f"sa-vae: refinement steps (default 5{on_resume})",
    )
    p.add_argument(
        "--sa-lr",
        type=_positive_float,
        default=None,
        help=f"sa-vae: refinement step size (default 0.1{on_resume})",
    )
    p.add_argument(
        "--particles",
        type=_positive_int,
        default=None,
        help="draws of z per datapoint and step: L for aevb/wake-sleep (default 1), K for iwae "
        f"(default 5){on_resume}",
    )
    p.add_argument(
        "--dreg",
        action="store_true",
        default=None,
        help="iwae: doubly reparameterized gradients for the encoder (Tucker et al. 2019; on "
        "--resume the run's)",
    )
    p.add_argument(
        "--arch",
        choices=["mlp", "conv"],
        default=None,
        help="the paper's MLP VAE (default), or the convolutional VAE (28x28 padded to 32x32, "
        "32/64/128 channels) on image-shaped data",
    )
    p.add_argument(
        "--guide",
        choices=["vae", *GUIDE_FAMILIES],
        default=None,
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
            default=None,
            help=f"Monte Carlo EM: {key} (default {default}{on_resume})",
        )
    p.add_argument(
        "--optimizer",
        choices=["adagrad", "adam"],
        default=None,
        help=f"default {optimizer}{on_resume}",
    )
    p.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help=f"step size (default {lr}; on --resume the run's, and only a smaller one may be "
        f"given, recorded in the history)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help=f"M (default {_FIT_DEFAULTS['batch_size']}{on_resume})",
    )
    p.add_argument(
        "--num-samples",
        type=_positive_number,
        default=None,
        help=f"budget in training samples, the total on --resume (default {num_samples:,})",
    )
    p.add_argument(
        "--epochs",
        type=_positive_float,
        default=None,
        help="budget in epochs instead (not with --num-samples)",
    )
    p.add_argument(
        "--seed", type=_seed, default=None, help=f"default {_FIT_DEFAULTS['seed']}{on_resume}"
    )
    p.add_argument(
        "--eval-size",
        type=_positive_int,
        default=None,
        help="train and test points the bound is evaluated on (default "
        f"{_FIT_DEFAULTS['eval_size']}{on_resume})",
    )
    p.add_argument(
        "--checkpoint-minutes",
        type=_positive_float,
        default=5.0,
        help="also write a checkpoint every so many minutes of wall time (default 5)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=_positive_number,
        default=None,
        metavar="SAMPLES",
        help="also write a checkpoint every so many training samples",
    )
    p.add_argument("--no-weight-prior", action="store_true", help="ML instead of MAP")
    p.add_argument(
        "--fast",
        choices=["auto", "on", "off"],
        default="auto",
        help="the fused (paper's VAE) or compiled path where it applies (auto), required (on), "
        "or stock Pyro (off)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-figures", action="store_true")
    _add_launch_options(p)


def _add_launch_options(p) -> None:
    """--device and --nproc (data-parallel ranks on this machine, through torchrun)."""
    p.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:1, mps (default: cuda if available under torchrun, else cpu); "
        "under torchrun 'cuda' means cuda:LOCAL_RANK",
    )
    p.add_argument(
        "--nproc",
        type=_positive_int,
        default=1,
        help="data-parallel ranks on this machine: relaunches this command with "
        "torchrun --standalone --nproc-per-node=NPROC (gloo on CPUs, NCCL on GPUs)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-aevb", description="Auto-Encoding Variational Bayes for Pyro"
    )
    parser.add_argument("--version", action="version", version=f"pyro-aevb {__version__}")
    parser.add_argument("--threads", type=_positive_int, default=None, help="torch threads")
    parser.add_argument("-v", "--verbose", action="store_true")
    # --threads and -v also after the command (pyro-aevb train --threads 1 ...); there they
    # default to nothing, so that a value given before the command stands
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--threads", type=_positive_int, default=argparse.SUPPRESS, help="torch threads"
    )
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    def add_command(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    p = add_command("train", help="train a VAE on a data set")
    p.add_argument(
        "--dataset",
        default=None,
        help="mnist (default; on --resume the run's), fashion-mnist, frey-face, embedded-mnist",
    )
    p.add_argument(
        "--data-dir", default=None, help="data directory (default: $PYRO_AEVB_DATA or download)"
    )
    p.add_argument("--out", default="runs/train", help="output directory")
    _add_training_options(p, num_samples=1_000_000, latent_dim=20, hidden=None)
    p.set_defaults(func=cmd_train)

    p = add_command("demo", help="the main job: train on the embedded MNIST slice")
    p.add_argument("--out", default="runs/demo", help="output directory")
    # Adam draws a clearer manifold than the paper's Adagrad within the demo's minute.
    _add_training_options(
        p, num_samples=300_000, latent_dim=2, hidden=500, optimizer="adam", lr=1e-3
    )
    p.set_defaults(func=cmd_demo)

    p = add_command("figures", help="redraw the figures of a run")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="where to write (default: the run directory)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace figures already in another --out"
    )
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=cmd_figures)

    p = add_command("evaluate", help="estimate log p(x) per datapoint for a trained run")
    p.add_argument("run_dir")
    p.add_argument("--method", choices=METHODS, default="iwae")
    p.add_argument(
        "--n",
        "--num-points",
        dest="n",
        type=_positive_int,
        default=None,
        help="first N points of the split (default 1000, or all of a smaller split; at most "
        "the split's rows; spell it --num-points after torchrun)",
    )
    p.add_argument(
        "--split",
        choices=["test", "train"],
        default=None,
        help="the rows to evaluate (default test; not with --method bdmc, which simulates)",
    )
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method option, e.g. num_particles=5000 (iwae), num_chains=32 (ais); repeatable",
    )
    p.add_argument("--plate-name", default=None, help="the data plate's name (default: the run's)")
    p.add_argument(
        "--block-size",
        type=_positive_int,
        default=100,
        help="rows per independently seeded block (default 100): the estimates do not depend "
        "on how many ranks (--nproc, torchrun) share the blocks",
    )
    _add_launch_options(p)
    p.add_argument("--out", default=None, help="JSON file (default: RUN_DIR/evaluate-...json)")
    p.add_argument("--overwrite", action="store_true", help="replace the JSON file if it exists")
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=cmd_evaluate)

    p = add_command(
        "gap", help="approximation and amortization gaps of a trained run (Cremer et al. 2018)"
    )
    p.add_argument("run_dir")
    p.add_argument(
        "--n",
        type=_positive_int,
        default=None,
        help="first N points of the split (default 100, or all of a smaller split; at most the "
        "split's rows)",
    )
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--method", choices=["ais", "iwae"], default="ais", help="log p(x) estimator")
    p.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="estimator option"
    )
    p.add_argument(
        "--refine-steps", type=_positive_int, default=200, help="Adam steps per datapoint"
    )
    p.add_argument("--refine-lr", type=_positive_float, default=0.05, help="refinement step size")
    p.add_argument("--particles", type=_positive_int, default=1000, help="guide draws per bound")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--plate-name", default=None)
    p.add_argument("--out", default=None, help="JSON file (default: RUN_DIR/gaps-SPLIT.json)")
    p.add_argument("--overwrite", action="store_true", help="replace the JSON file if it exists")
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=cmd_gap)
    return parser


#: The objectives that train in one process (see pyro_aevb.train.distributed).
ONE_PROCESS_ALGORITHMS = ("wake-sleep", "mcem", "iwae", "sa-vae")


def _resume_command(args) -> str:
    """The command that continues an interrupted run: its budget and options come from the
    run; the data directory, the device, the processes and the checkpoint cadence are this
    command's (not recorded in the run), so they are repeated."""
    rest = ""
    if getattr(args, "data_dir", None):
        rest += f" --data-dir {shlex.quote(str(args.data_dir))}"
    device = getattr(args, "device_given", None)
    rest += f" --device {shlex.quote(device)}" if device else ""
    nproc = getattr(args, "nproc", None)
    rest += f" --nproc {nproc}" if nproc and nproc > 1 else ""
    if getattr(args, "checkpoint_every", None):
        rest += f" --checkpoint-every {args.checkpoint_every}"
    minutes = getattr(args, "checkpoint_minutes", None)
    if minutes is not None and minutes != 5.0:
        rest += f" --checkpoint-minutes {minutes:g}"
    return f"{args.command} --out {shlex.quote(str(args.out))} --resume{rest}"


def _relaunch(argv: list[str], nproc: int) -> int:
    """Run this command again on ``nproc`` ranks with torchrun on this machine.

    As ``torchrun --standalone --nproc-per-node=NPROC -m pyro_aevb.cli ARGS``, but ARGS are
    handed over without torchrun's parser seeing them (it would take ``--n`` for an
    abbreviation of its own ``--nnodes``/``--nproc-per-node``).
    """
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    launch = torchrun.parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "-m", "pyro_aevb.cli"]
    )
    launch.training_script_args = rest
    try:
        torchrun.run(launch)
    except ChildFailedError as err:
        # the failing rank has printed its error; exit with its code
        codes = [f.exitcode for f in err.failures.values() if f.exitcode]
        return codes[0] if codes else 1
    except SignalException as err:
        # SIGINT/SIGTERM reached the launcher, which passed it on: the ranks have saved and
        # said so; exit with the signal's status (130, 143), as one process does
        print(f"pyro-aevb: interrupted by {signal_name(err.sigval)}", file=sys.stderr)
        return exit_status(err.sigval)
    except KeyboardInterrupt:
        print("pyro-aevb: interrupted by SIGINT", file=sys.stderr)
        return exit_status(signal.SIGINT)
    return 0


class CommandInterrupted(KeyboardInterrupt):
    """SIGTERM outside a training step: stop the command like Ctrl-C does."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal_name(signum)}")


@contextlib.contextmanager
def _signals_interrupt():
    """While a command runs, SIGTERM stops it as SIGINT does (``KeyboardInterrupt``), so that
    it ends with one line and the signal's exit status wherever it lands; training steps
    defer both signals themselves (:class:`~pyro_aevb.train.interrupt.DeferredInterrupts`)."""

    def stop(signum, frame):
        raise CommandInterrupted(signum)

    installed, previous = False, None
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGTERM"):
        try:
            previous, installed = signal.signal(signal.SIGTERM, stop), True
        except (ValueError, OSError):  # not allowed here (embedded interpreter, ...)
            pass
    try:
        yield
    finally:
        if installed:
            # None: a handler installed outside Python, which cannot be put back as such
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    nproc = getattr(args, "nproc", 1)  # >= 1 (argparse)
    algorithm = getattr(args, "algorithm", None)
    if nproc > 1 and algorithm in ONE_PROCESS_ALGORITHMS:
        # said before torchrun starts the ranks (each would say it, among torchrun's lines)
        print(
            f"pyro-aevb: error: --objective {algorithm} trains in one process (data-parallel "
            f"training runs the ELBO objective, estimators A and B); leave out --nproc",
            file=sys.stderr,
        )
        return 2
    if nproc > 1 and not launched_by_torchrun():
        return _relaunch(argv, nproc)
    # Our own messages at INFO (which training path runs, resumes); other libraries' at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device_given = getattr(args, "device", None)  # as typed (for _resume_command)
    if launched_by_torchrun() and hasattr(args, "device"):
        # one rank of a data-parallel run: join the process group (gloo or NCCL)
        args.device = str(init_distributed(args.device))
        if world()[0] != 0:
            logger.setLevel(logging.WARNING)  # rank 0 speaks for the run
    try:
        with _signals_interrupt():
            return args.func(args)
    except TrainingInterrupted as err:
        # the step was finished and saved: one line, no traceback, the signal's exit status
        print(f"pyro-aevb: {err.summary}", end="", file=sys.stderr)
        if err.checkpoint is not None:
            print(
                f"; checkpoint saved to {err.checkpoint}; continue with: pyro-aevb "
                f"{_resume_command(args)}",
                end="",
                file=sys.stderr,
            )
        print(file=sys.stderr)
        return exit_status(err.signum)
    except KeyboardInterrupt as err:
        # outside a training step (loading, evaluation, figures): nothing half-written to
        # save; an evaluation's finished blocks are already kept
        signum = getattr(err, "signum", signal.SIGINT)
        kept = getattr(args, "kept_blocks", None)
        more = (
            f"; the finished blocks are kept in {kept}: the same command continues from them"
            if kept is not None and kept.is_file()
            else ""
        )
        print(f"pyro-aevb: interrupted by {signal_name(signum)}{more}", file=sys.stderr)
        return exit_status(signum)
    except (ValueError, TypeError, NonFiniteLossError, AnalyticKLError, OSError) as err:
        # OSError: missing, unreadable or unwritable files (a full disk), a locked run
        # directory; the messages name the file
        hint = " (on the command line: --estimator A)" if isinstance(err, AnalyticKLError) else ""
        print(f"pyro-aevb: error: {err}{hint}", file=sys.stderr)
        return 2
    finally:
        if launched_by_torchrun() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
