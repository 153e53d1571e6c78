"""Training objectives, handed to :func:`pyro_aevb.fit` as Pyro's ``SVI`` takes its loss.

* :class:`ELBO`: AEVB with estimator A or B (fused fast path for the paper's VAE, the
  compiled path for any other model/guide pair, stock Pyro where neither applies);
* :class:`WakeSleep`: the wake-sleep baseline;
* :class:`MonteCarloEM`: Monte Carlo EM with an HMC E-step (no encoder).

Each is a settings object; the trainer binds it to the user's programs
(:meth:`Objective.bind`), which gives a :class:`BoundObjective` that computes the steps.
"""

from .aevb import ELBO
from .base import FAST_MODES, BoundObjective, Objective, PyroELBOObjective
from .compiled import CompiledELBOObjective
from .fast_vae import FastVAE, FastVAEObjective
from .mcem import MCEM_OPTIONS, MonteCarloEM, MonteCarloEMObjective
from .wake_sleep import WakeSleep, WakeSleepObjective

#: Objectives by the name ``fit(algorithm=...)`` and the CLI use.
ALGORITHMS = {"aevb": ELBO, "wake-sleep": WakeSleep, "mcem": MonteCarloEM}

__all__ = [
    "Objective",
    "BoundObjective",
    "ELBO",
    "WakeSleep",
    "MonteCarloEM",
    "ALGORITHMS",
    "MCEM_OPTIONS",
    "FAST_MODES",
    "PyroELBOObjective",
    "CompiledELBOObjective",
    "FastVAE",
    "FastVAEObjective",
    "WakeSleepObjective",
    "MonteCarloEMObjective",
]
