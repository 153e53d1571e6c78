"""Shared machinery of the paper-reproduction scripts (Figures 2-5).

* :func:`select_and_train`: the paper's protocol for one configuration: train with each
  Adagrad step size in ``lrs`` for ``select_samples`` samples, keep the one with the best
  training bound ("chosen by early performance"), and continue that run to the full budget
  (a resume of the same run, so its history starts at the beginning).
* :func:`run_parallel`: run independent configurations in worker processes, one torch thread
  each.
* :func:`save_results`: JSON with the settings, the exact command and every history.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from pyro_aevb import NonFiniteLossError, fit, load_dataset, paper_vae
from pyro_aevb.models import PAPER_HIDDEN as HIDDEN  # noqa: F401 - the figure scripts import it from here
from pyro_aevb.train.checkpoint import read_json


def load_config_dataset(cfg: dict):
    dataset = load_dataset(cfg["dataset"], data_dir=cfg.get("data_dir"))
    if cfg.get("num_train"):
        dataset = dataset.subset(num_train=cfg["num_train"])
    return dataset


def run_tag(cfg: dict) -> str:
    n = cfg.get("num_train") or "all"
    return f"{cfg['dataset']}-n{n}-z{cfg['latent_dim']}-{cfg['algorithm']}"


def train_run(cfg: dict, dataset, lr: float, run_dir: Path, num_samples: int, callback=None):
    """Train (or continue, if ``run_dir`` holds a checkpoint) one run of ``cfg`` with step size
    ``lr`` up to ``num_samples``; returns ``(vae, FitResult)``."""
    torch.manual_seed(cfg["seed"])  # the initialisation of a new run; a resume overwrites it
    vae = paper_vae(dataset, cfg["latent_dim"], cfg["hidden"])
    result = fit(
        vae,
        dataset,
        lr=lr,
        num_samples=num_samples,
        out_dir=run_dir,
        resume=(run_dir / "checkpoint.pt").exists(),
        algorithm=cfg["algorithm"],
        seed=cfg["seed"],
        eval_size=cfg["eval_size"],
        progress=False,
        callback=callback,
    )
    return vae, result


def run_summary(cfg: dict, lr: float, early: dict, history: list[dict], run_dir: Path) -> dict:
    """What a figure script saves of one configuration."""
    return {
        **{k: cfg[k] for k in ("dataset", "num_train", "latent_dim", "hidden", "algorithm")},
        "lr": lr,
        "early_score": {str(k): v for k, v in early.items()},
        "history": history,
        "run_dir": str(run_dir),
    }


def early_score(history: list[dict]) -> float:
    """Early performance: the training bound, or minus the loss without a bound (MCEM)."""
    last = history[-1]
    score = last.get("train_bound")
    if score is None:
        score = -last["loss"] if last.get("loss") is not None else float("nan")
    return score if score == score else float("-inf")  # NaN (diverged) ranks last


def select_lr(cfg: dict, dataset) -> tuple[float, dict]:
    """Train with each step size in ``cfg["lrs"]`` for ``cfg["select_samples"]`` samples.

    Each run is saved under ``work_dir`` so that the chosen one can be continued, and so that
    an interrupted script picks up where it stopped (a candidate already trained past
    ``select_samples`` is scored from its history). A candidate that diverges scores -inf.
    Returns the best step size and the early score of every candidate.
    """
    early = {}
    select = min(cfg["select_samples"], cfg["budget"])
    for lr in cfg["lrs"]:
        out = Path(cfg["work_dir"]) / f"{run_tag(cfg)}-lr{lr}"
        done = read_json(out / "history.json") if (out / "history.json").exists() else []
        if done and done[-1]["samples"] >= select:
            early[lr] = early_score([h for h in done if h["samples"] <= select])
            continue
        try:
            _, result = train_run(cfg, dataset, lr, out, select)
        except NonFiniteLossError:
            early[lr] = float("-inf")
            continue
        early[lr] = early_score(result.history)
    return max(early, key=early.get), early


def select_and_train(cfg: dict) -> dict:
    """Train one configuration; ``cfg`` is a plain dict so that it can cross processes.

    Keys: dataset, num_train (or None), latent_dim, hidden, algorithm, lrs, select_samples,
    budget, seed, eval_size, work_dir, data_dir.
    """
    torch.set_num_threads(1)
    dataset = load_config_dataset(cfg)
    t0 = time.perf_counter()
    best, early = select_lr(cfg, dataset)
    run_dir = Path(cfg["work_dir"]) / f"{run_tag(cfg)}-lr{best}"
    _, result = train_run(cfg, dataset, best, run_dir, cfg["budget"])
    return {
        **run_summary(cfg, best, early, result.history, run_dir),
        "seconds": time.perf_counter() - t0,
    }


def run_parallel(fn, configs: list[dict], jobs: int) -> list[dict]:
    """``[fn(c) for c in configs]``, in ``jobs`` worker processes when ``jobs > 1``."""
    if jobs <= 1 or len(configs) <= 1:
        return [fn(c) for c in configs]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        return list(pool.map(fn, configs))


REPO_ROOT = Path(__file__).resolve().parent.parent


def portable_paths(obj, root: Path = REPO_ROOT):
    """``obj`` with every string path under the repository ``root`` made relative to it, so
    that saved results name no directory of the machine that produced them."""
    if isinstance(obj, dict):
        return {k: portable_paths(v, root) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [portable_paths(v, root) for v in obj]
    if isinstance(obj, str) and obj.startswith(str(root) + os.sep):
        return Path(obj).relative_to(root).as_posix()
    return obj


def save_results(path: Path, settings: dict, results, seconds: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    settings, results = portable_paths(settings), portable_paths(results)
    payload = {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "settings": settings,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "seconds": seconds,
        "results": results,
    }
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path
