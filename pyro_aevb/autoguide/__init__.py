"""Amortized encoder autoguides for any Pyro model with local latents in a data plate.

Pyro's autoguides learn one set of parameters per latent (not amortized); the guides here
learn an encoder ``x_i -> q(z_i | x_i)`` for every latent site inside the data plate, read
from a trace of the model, and compose it with a standard Pyro autoguide for the global
latents. One line replaces a hand-written encoder::

    guide = AmortizedNormal(model)                         # diagonal Gaussian per site
    guide = AmortizedMultivariateNormal(model)             # full covariance, z = mu + L eps
    guide = AmortizedIAF(model, num_flows=2)               # diagonal Gaussian + IAF
    fit(model, data, guide=guide)                          # or pyro.infer.SVI(model, guide, ...)

* :class:`AmortizedNormal`, :class:`AmortizedMultivariateNormal`, :class:`AmortizedIAF`: the
  families (every local latent in its unconstrained space, through ``biject_to(support)``).
* :class:`~pyro_aevb.autoguide.base.AmortizedGuide`: what they share (trunk, plate, globals,
  point estimates, configs, checkpoints); :func:`build_guide` rebuilds one from its config.
* :mod:`~pyro_aevb.autoguide.encoders`: the trunks (``"mlp"``, ``"conv"``, or a module).
"""

from .base import AUTOGUIDES, GLOBAL_GUIDES, AmortizedGuide, LocalSite, build_guide
from .encoders import TRUNKS
from .flow import AmortizedIAF
from .mvn import AmortizedMultivariateNormal
from .normal import AmortizedNormal

#: The ``--guide`` names of the command line: the families by their short names.
GUIDE_FAMILIES = {
    "diag": AmortizedNormal,
    "full": AmortizedMultivariateNormal,
    "iaf": AmortizedIAF,
}

__all__ = [
    "AmortizedGuide",
    "AmortizedNormal",
    "AmortizedMultivariateNormal",
    "AmortizedIAF",
    "LocalSite",
    "AUTOGUIDES",
    "GLOBAL_GUIDES",
    "GUIDE_FAMILIES",
    "TRUNKS",
    "build_guide",
]
