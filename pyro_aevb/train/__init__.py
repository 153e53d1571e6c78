"""Training: a small trainer that takes an objective (as Pyro's ``SVI`` takes its loss),
with minibatches, evaluation schedule, history, checkpoints, exact resume and run
directories."""

from .checkpoint import (
    CorruptCheckpointError,
    load_checkpoint,
    read_json,
    save_checkpoint,
    write_json_atomic,
)
from .distributed import init_distributed
from .interrupt import TrainingInterrupted
from .lock import RunLockedError
from .optim import OPTIMIZERS, make_optimizer
from .payload import MalformedCheckpointError
from .runs import Run, load_run
from .trainer import FitResult, NonFiniteLossError, Trainer, eval_schedule, fit

__all__ = [
    "fit",
    "Trainer",
    "FitResult",
    "NonFiniteLossError",
    "TrainingInterrupted",
    "RunLockedError",
    "CorruptCheckpointError",
    "MalformedCheckpointError",
    "eval_schedule",
    "Run",
    "load_run",
    "OPTIMIZERS",
    "make_optimizer",
    "save_checkpoint",
    "load_checkpoint",
    "write_json_atomic",
    "read_json",
    "init_distributed",
]
