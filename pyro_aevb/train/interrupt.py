"""Ctrl-C (SIGINT) and SIGTERM during training: finish the step, save, stop cleanly.

A signal that lands inside a training step would leave the parameters half-updated, so the
state at that moment cannot be saved. :class:`DeferredInterrupts` therefore only *records*
the first SIGINT or SIGTERM; the trainer looks at :attr:`DeferredInterrupts.received` after
every step (and after an evaluation, which then completes and is recorded), writes a
checkpoint at that point and raises :class:`TrainingInterrupted`. A second signal stops at
once with ``KeyboardInterrupt`` (the last checkpoint stays as it was).

Handlers can only be installed from the main thread; elsewhere (a training thread) the
signals keep their usual behaviour.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

__all__ = ["DeferredInterrupts", "TrainingInterrupted", "signal_name", "exit_status"]

logger = logging.getLogger("pyro_aevb")

SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None)) if s is not None)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_status(signum: int) -> int:
    """The shell's exit status for a process ended by ``signum``: 128 + its number."""
    return 128 + int(signum)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM after finishing a step.

    A ``KeyboardInterrupt``, so code that handles Ctrl-C keeps working.

    Attributes
    ----------
    signum : int
        The signal received.
    samples, step : int
        Training progress at the stop.
    checkpoint : pathlib.Path or None
        The checkpoint written at that point (``None`` without ``out_dir``).
    """

    def __init__(self, signum: int, samples: int, step: int, checkpoint: Path | None):
        self.signum = signum
        self.samples = samples
        self.step = step
        self.checkpoint = checkpoint
        where = (
            f"checkpoint saved to {checkpoint}: continue with resume=True (pyro-aevb train "
            f"--resume)"
            if checkpoint is not None
            else "no checkpoint (no out_dir); the module holds the parameters of that step"
        )
        #: What happened, in one phrase (without the advice).
        self.summary = (
            f"training interrupted by {signal_name(signum)} at {samples:,} samples (step {step:,})"
        )
        super().__init__(f"{self.summary}; {where}")

    def __str__(self) -> str:
        return str(self.args[0])


class DeferredInterrupts:
    """Context manager: record SIGINT/SIGTERM instead of raising, until a second one.

    ``received`` is the first signal's number, or ``None``.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def active(self) -> bool:
        return bool(self._previous)

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            # asked twice: stop now, without the checkpoint of this point
            raise KeyboardInterrupt(f"{signal_name(signum)} received twice: stopped at once")
        self.received = signum
        logger.warning(
            "%s received: finishing the current step, then saving and stopping (send it again "
            "to stop at once without saving)",
            signal_name(signum),
        )

    def __enter__(self) -> DeferredInterrupts:
        self.received = None
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except (ValueError, OSError):  # not allowed here (embedded interpreter, ...)
                continue
        return self

    def __exit__(self, *exc) -> None:
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            # None: a handler installed outside Python, which cannot be put back as such
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
