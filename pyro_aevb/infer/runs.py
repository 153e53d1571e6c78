"""A run directory: ``config.json``, ``history.json``, ``checkpoint.pt`` and figures.

:func:`load_run` rebuilds the trained model of a run written by :func:`pyro_aevb.fit` (with
``out_dir``) so that it can be evaluated or plotted later, in another process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..models import VAE
from .checkpoint import load_checkpoint

__all__ = ["CHECKPOINT_NAME", "HISTORY_NAME", "CONFIG_NAME", "Run", "load_run"]

CHECKPOINT_NAME = "checkpoint.pt"
HISTORY_NAME = "history.json"
CONFIG_NAME = "config.json"


@dataclass
class Run:
    """A loaded run: the model with its trained parameters, the config and the history."""

    module: nn.Module
    config: dict[str, Any]
    history: list[dict[str, Any]]
    directory: Path

    @property
    def dataset(self) -> str | None:
        return self.config.get("dataset")


def load_run(run_dir) -> Run:
    """Rebuild the :class:`~pyro_aevb.VAE` of a run directory and load its last checkpoint."""
    run_dir = Path(run_dir)
    checkpoint = run_dir / CHECKPOINT_NAME
    if not checkpoint.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a run directory: {CHECKPOINT_NAME} is missing (train one with "
            f"`pyro-aevb train --out {run_dir}` or pyro_aevb.fit(..., out_dir=...))"
        )
    payload = load_checkpoint(checkpoint)
    config = payload["config"]
    if config.get("model_class") != "VAE" or not config.get("model"):
        raise ValueError(
            f"run {run_dir} trained a {config.get('model_class')}, which load_run cannot "
            f"rebuild; load its checkpoint with pyro_aevb.infer.checkpoint.load_checkpoint"
        )
    module = VAE(**config["model"])
    module.load_state_dict(payload["model_state"])
    module.eval()
    return Run(module=module, config=config, history=payload["history"], directory=run_dir)
