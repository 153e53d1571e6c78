"""Training objectives, handed to :func:`pyro_aevb.fit` as Pyro's ``SVI`` takes its loss.

* :class:`ELBO`: AEVB with estimator A or B (fused fast path for the paper's VAE, the
  compiled path for any other model/guide pair, stock Pyro where neither applies);
* :class:`WakeSleep`: the wake-sleep baseline;
* :class:`MonteCarloEM`: Monte Carlo EM with an HMC E-step (no encoder);
* :class:`SemiAmortized`: SA-VAE, the guide refined per minibatch before the decoder's step;
* :class:`IWAE`: the importance-weighted bound with K particles per datapoint, optionally
  with doubly reparameterized gradients (DReG).

Each is a settings object; the trainer binds it to the user's programs
(:meth:`Objective.bind`), which gives a :class:`BoundObjective` that computes the steps.
"""

from .aevb import ELBO
from .base import FAST_MODES, BoundObjective, Objective, PyroELBOObjective
from .compiled import CompiledELBOObjective
from .fast_vae import FastVAE, FastVAEObjective
from .iwae import IWAE, PyroIWAEObjective, VAEIWAEObjective
from .mcem import MCEM_OPTIONS, MonteCarloEM, MonteCarloEMObjective
from .semi_amortized import SemiAmortized, SemiAmortizedObjective
from .wake_sleep import WakeSleep, WakeSleepObjective

#: Objectives by the name ``fit(algorithm=...)`` and the CLI use.
ALGORITHMS = {
    "aevb": ELBO,
    "wake-sleep": WakeSleep,
    "mcem": MonteCarloEM,
    "sa-vae": SemiAmortized,
    "iwae": IWAE,
}

__all__ = [
    "Objective",
    "BoundObjective",
    "ELBO",
    "WakeSleep",
    "MonteCarloEM",
    "SemiAmortized",
    "IWAE",
    "ALGORITHMS",
    "MCEM_OPTIONS",
    "FAST_MODES",
    "PyroELBOObjective",
    "CompiledELBOObjective",
    "FastVAE",
    "FastVAEObjective",
    "WakeSleepObjective",
    "MonteCarloEMObjective",
    "SemiAmortizedObjective",
    "PyroIWAEObjective",
    "VAEIWAEObjective",
]
