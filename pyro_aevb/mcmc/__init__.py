"""Batched per-datapoint HMC for Pyro models with local latents, and Pyro's MCMC as reference.

* :mod:`~pyro_aevb.mcmc.potential`: per-datapoint log-joint ``log p(x_i, u_i)`` and potential
  from a Pyro model (unconstrained transforms, Jacobians, several latent sites flattened).
* :mod:`~pyro_aevb.mcmc.hmc`: pure ``init``/``step`` kernels over :class:`HMCState` and the
  :func:`sample` loop (warm-up, per-chain step size and mass, diagnostics).
* :mod:`~pyro_aevb.mcmc.initialization`: importance-resampled starting points for the chains.
* :mod:`~pyro_aevb.mcmc.adaptation`: per-chain dual-averaging step size, Stan's windows.
* :mod:`~pyro_aevb.mcmc.pyro_reference`: :class:`pyro.infer.MCMC` (NUTS/HMC) per datapoint,
  with an ArviZ ``InferenceData``.
"""

from . import hmc
from .adaptation import (
    StepSizeAdaptState,
    step_size_adapt_final,
    step_size_adapt_init,
    step_size_adapt_update,
    warmup_windows,
)
from .hmc import BatchedHMCResult, HMCInfo, HMCState, find_reasonable_step_size
from .initialization import importance_resampled_init
from .potential import LatentLayout, LatentSite, PerDatapointPotential
from .pyro_reference import PyroMCMCResult, sample_posterior_pyro

__all__ = [
    "hmc",
    "HMCState",
    "HMCInfo",
    "BatchedHMCResult",
    "find_reasonable_step_size",
    "StepSizeAdaptState",
    "step_size_adapt_init",
    "step_size_adapt_update",
    "step_size_adapt_final",
    "warmup_windows",
    "LatentLayout",
    "LatentSite",
    "PerDatapointPotential",
    "importance_resampled_init",
    "PyroMCMCResult",
    "sample_posterior_pyro",
]
