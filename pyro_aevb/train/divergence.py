"""Telling divergence apart, on every training path.

Training diverges when a step makes the parameters useless: a NaN or infinite loss, a
non-finite gradient (which would make the parameters non-finite), or parameters so large that
a distribution of the model or guide gets an invalid argument (an encoder scale that
underflows to 0 makes Pyro's argument validation fail with "Expected parameter scale ...",
before any loss exists). The trainer reports all of these as :class:`NonFiniteLossError`,
with the same advice, and never keeps a checkpoint or history record of a diverged state.

* :func:`install_gradient_check` checks the gradients before every optimizer update (stock
  Pyro paths; the fused fast path reports a non-finite loss itself, see
  :mod:`~pyro_aevb.infer.objectives.fast_vae`).
* :func:`constraint_violation` recognises torch's distribution-argument errors, anywhere in an
  exception's chain, and gives their first line without the tensor dump.
* :func:`non_finite_entries` lists the non-finite numbers of an evaluation record.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

__all__ = [
    "NonFiniteLossError",
    "NonFiniteGradient",
    "install_gradient_check",
    "constraint_violation",
    "non_finite_entries",
    "all_finite",
]


class NonFiniteLossError(FloatingPointError):
    """Training diverged: a NaN or infinite loss, gradient or bound, or parameters for which
    the model's distributions are no longer defined. The diverged update was not kept: no
    checkpoint or history record holds it."""


class NonFiniteGradient(ArithmeticError):
    """Raised by :func:`install_gradient_check` before an update with non-finite gradients."""

    def __init__(self, count: int, total: int):
        super().__init__(f"{count} of {total} parameter tensors have non-finite gradients")
        self.count, self.total = count, total


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every entry of every tensor is finite (one synchronisation in all)."""
    flags = [torch.isfinite(t).all() for t in tensors]
    return bool(torch.stack(flags).all()) if flags else True


def install_gradient_check(optimizer: torch.optim.Optimizer):
    """Refuse every ``optimizer.step()`` whose gradients are not all finite.

    Registers a step pre-hook that raises :class:`NonFiniteGradient` before the update, so
    the parameters keep their last finite values. Returns the hook's handle (``.remove()``).
    """

    def check(opt, args, kwargs) -> None:
        params = [p for group in opt.param_groups for p in group["params"]]
        grads = [p.grad for p in params if p.grad is not None]
        if grads and not all_finite(grads):
            bad = sum(not bool(torch.isfinite(g).all()) for g in grads)
            raise NonFiniteGradient(bad, len(grads))

    return optimizer.register_step_pre_hook(check)


_CONSTRAINT_PREFIX = "Expected parameter "


def constraint_violation(err: BaseException | None) -> str | None:
    """The first line of a distribution-*parameter* validation error in ``err``'s chain
    (``__cause__``/``__context__``), without the values; ``None`` if there is none.

    Only parameter errors count: "Expected value argument ... to be within the support" is
    about the data, not the parameters.
    """
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text = str(err)
        start = text.find(_CONSTRAINT_PREFIX)
        if isinstance(err, ValueError) and start >= 0:
            line = text[start:].split(", but found invalid values", 1)[0]
            return line.splitlines()[0] if line else None
        err = err.__cause__ or err.__context__
    return None


_BOUND_KEYS = ("loss", "train_bound", "test_bound")


def non_finite_entries(record: dict) -> list[str]:
    """Names of the losses and bounds in an evaluation record that are NaN or infinite."""
    bad = []
    for key in _BOUND_KEYS:
        value = record.get(key)
        if isinstance(value, float) and not math.isfinite(value):
            bad.append(f"{key} = {value}")
    return bad
