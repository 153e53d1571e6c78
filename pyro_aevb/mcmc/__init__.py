"""Batched per-datapoint HMC for Pyro models with local latents, and Pyro's MCMC as reference.

* :mod:`~pyro_aevb.mcmc.potential`: per-datapoint log-joint ``log p(x_i, u_i)`` and potential
  from a Pyro model (unconstrained transforms, Jacobians, several latent sites flattened).
* :mod:`~pyro_aevb.mcmc.potentials`: :func:`make_potential`, the same computed without a
  trace per gradient: hand-derived for the paper's VAE
  (:mod:`~pyro_aevb.mcmc.vae_potential`), recorded once for any other model
  (:mod:`~pyro_aevb.mcmc.compiled_potential`).
* :mod:`~pyro_aevb.mcmc.hmc`: the pure kernel, ``init``/``step`` over :class:`HMCState`, with
  step size and mass as arguments.
* :mod:`~pyro_aevb.mcmc.adaptation`: per-chain dual-averaging step size, Stan's windows.
* :mod:`~pyro_aevb.mcmc.sampler`: :func:`sample`, warm-up with adaptation, then draws.
* :mod:`~pyro_aevb.mcmc.diagnostics`: ArviZ's ESS and R-hat per datapoint, vectorised.
* :mod:`~pyro_aevb.mcmc.initialization`: importance-resampled starting points for the chains.
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
from .compiled_potential import CompiledPotential
from .diagnostics import ess_mean, ess_rhat
from .hmc import HMCInfo, HMCState, find_reasonable_step_size
from .initialization import importance_resampled_init
from .potential import PerDatapointPotential, value_and_grad
from .potentials import make_potential
from .pyro_reference import PyroMCMCResult, sample_posterior_pyro
from .sampler import BatchedHMCResult, sample
from .vae_potential import VAEPotential

__all__ = [
    "hmc",
    "HMCState",
    "HMCInfo",
    "find_reasonable_step_size",
    "sample",
    "BatchedHMCResult",
    "ess_rhat",
    "ess_mean",
    "StepSizeAdaptState",
    "step_size_adapt_init",
    "step_size_adapt_update",
    "step_size_adapt_final",
    "warmup_windows",
    "PerDatapointPotential",
    "value_and_grad",
    "make_potential",
    "CompiledPotential",
    "VAEPotential",
    "importance_resampled_init",
    "PyroMCMCResult",
    "sample_posterior_pyro",
]
