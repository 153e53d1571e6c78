"""AEVB (Algorithm 1): maximise the ELBO with estimator A or B, on the fastest exact path."""

from __future__ import annotations

from ...poutine import TrainingProgram
from ...validation import check_choice, check_positive_int
from ..elbo import ESTIMATORS
from .base import FAST_MODES, BoundObjective, Objective, PyroELBOObjective
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
    """

    name = "aevb"

    def __init__(self, estimator: str = "B", num_particles: int = 1):
        self.estimator = check_choice(estimator, "estimator", ESTIMATORS)
        self.num_particles = check_positive_int(num_particles, "num_particles")

    def settings(self) -> dict:
        return {"estimator": self.estimator, "num_particles": self.num_particles}

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
            if fast == "on":
                raise ValueError(
                    f"fast='on' but the fast path does not support this model: {reason}"
                )
        bound = PyroELBOObjective(program, self.estimator, self.num_particles)
        bound.path_reason = reason
        return bound
