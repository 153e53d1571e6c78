"""AEVB (Algorithm 1): maximise the ELBO with estimator A or B, on the fastest exact path."""

from __future__ import annotations

from ...poutine import TrainingProgram
from ...validation import check_choice, check_positive_int
from ..elbo import ESTIMATORS
from .base import FAST_MODES, BoundObjective, Objective, PyroELBOObjective
from .compiled import ENGINE_CHOICES, CompiledELBOObjective
from .fast_vae import FastVAEObjective

__all__ = ["ELBO"]


class ELBO(Objective):
    """Maximise the ELBO with the paper's estimator A (``Trace_ELBO``) or B (analytic KL).

    Parameters
    ----------
    estimator : {"A", "B"}
        Generic SGVB (eq. 6) or analytic-KL (eq. 7, strict: an error for a site without a
        closed-form KL).
    num_particles : int
        L, draws of ``z`` per datapoint and step.
    engine : {"auto", "replay", "inductor"}
        How the compiled path (any model that is not the paper's VAE) runs its recording:
        see :mod:`~pyro_aevb.infer.objectives.compiled`. ``"auto"`` compiles with inductor
        for runs of at least ``INDUCTOR_MIN_STEPS`` steps.

    Which implementation runs (``fast=`` of :meth:`bind`): the paper's VAE takes the fused
    hand-derived path (:mod:`~pyro_aevb.infer.objectives.fast_vae`); any other model/guide
    pair the compiled path, which falls back to stock Pyro, visibly, for programs it cannot
    record or that change; ``fast="off"`` runs stock Pyro.
    """

    name = "aevb"

    def __init__(self, estimator: str = "B", num_particles: int = 1, engine: str = "auto"):
        self.estimator = check_choice(estimator, "estimator", ESTIMATORS)
        self.num_particles = check_positive_int(num_particles, "num_particles")
        self.engine = check_choice(engine, "engine", ENGINE_CHOICES)

    def settings(self) -> dict:
        out = {"estimator": self.estimator, "num_particles": self.num_particles}
        if self.engine != "auto":  # runs recorded before the option existed still resume
            out["engine"] = self.engine
        return out

    def bind(self, program: TrainingProgram, fast: str = "auto") -> BoundObjective:
        check_choice(fast, "fast", FAST_MODES)
        if program.guide is None:
            raise ValueError(
                "the ELBO needs a guide q(z | x): pass guide= (or a model object "
                "with .model and .guide)"
            )
        reason = "fast='off'"
        if fast != "off":
            reason = FastVAEObjective.unsupported_reason(
                program, self.estimator, self.num_particles
            )
            if reason is None:
                bound = FastVAEObjective(program, self.estimator, self.num_particles)
                bound.path_reason = "the paper's VAE: fused forward/backward, same numbers as Pyro"
                return bound
            # Any other pair: recorded once and replayed; whether the recording works is
            # known on the first minibatch (setup), where it falls back visibly (or, with
            # fast="on", raises).
            compiled = CompiledELBOObjective(
                program,
                self.estimator,
                self.num_particles,
                engine=self.engine,
                strict=fast == "on",
            )
            compiled.describe(reason)
            return compiled
        bound = PyroELBOObjective(program, self.estimator, self.num_particles)
        bound.path_reason = reason
        return bound
