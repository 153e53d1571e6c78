r"""Pick the fastest exact per-datapoint potential for a program.

* the paper's VAE: :class:`~pyro_aevb.mcmc.vae_potential.VAEPotential` (hand-derived
  log-density and gradient);
* any other model: :class:`~pyro_aevb.mcmc.compiled_potential.CompiledPotential` (one traced
  evaluation recorded and replayed), which runs traced if the model cannot be recorded;
* ``fast="off"``: :class:`~pyro_aevb.mcmc.potential.PerDatapointPotential` (traced at every
  evaluation, the reference).

Which one runs, and why, is the potential's ``path`` and ``path_reason``; estimators report
it in their diagnostics.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from ..poutine import PerDatapointProgram, as_program
from ..validation import check_choice, check_data
from .compiled_potential import CompiledPotential
from .potential import PerDatapointPotential
from .vae_potential import VAEPotential, vae_potential_unsupported_reason

__all__ = ["make_potential", "POTENTIAL_MODES"]

#: ``fast=`` choices of :func:`make_potential`.
POTENTIAL_MODES = ("auto", "on", "off")


def make_potential(
    model: Callable | PerDatapointProgram,
    x: torch.Tensor,
    *,
    num_chains: int = 1,
    plate_name: str = "data",
    guide: Callable | None = None,
    global_values: dict | None = None,
    fast: str = "auto",
) -> PerDatapointPotential:
    """The per-datapoint potential of ``model`` on ``x`` with ``num_chains`` chains each.

    Arguments as :class:`~pyro_aevb.mcmc.potential.PerDatapointPotential`; ``fast``:
    ``"auto"`` (hand-derived for the paper's VAE, else recorded), ``"on"`` (as auto, but an
    error if the model can be neither), ``"off"`` (traced at every evaluation).
    """
    check_choice(fast, "fast", POTENTIAL_MODES)
    x = check_data(x, "x")
    program = as_program(model, guide, x, plate_name=plate_name, global_values=global_values)
    if fast == "off":
        return PerDatapointPotential(program, x, num_chains=num_chains)
    if vae_potential_unsupported_reason(program) is None:
        return VAEPotential(program, x, num_chains=num_chains)
    pot = CompiledPotential(program, x, num_chains=num_chains)
    if fast == "on":
        # record now, so that a model that cannot be compiled is an error here (the error
        # below says why; the fallback's warning would only repeat it)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "per-datapoint potential", UserWarning)
            pot.parts_and_grads(
                torch.zeros(pot.num_rows, pot.dim, dtype=pot.dtype, device=pot.x.device)
            )
        if pot.path != "compiled":
            raise ValueError(f"fast='on' but {pot.path_reason}")
    return pot
