"""Likelihoods used by the paper's decoders that Pyro does not ship as such.

The paper feeds MNIST intensities ``x in [0, 1]`` (pixels / 256) straight into a Bernoulli
log-likelihood without binarising them (Appendix C.1)::

    log p(x|z) = sum_i x_i log y_i + (1 - x_i) log(1 - y_i),     y = sigmoid(logits).

Pyro's :class:`~pyro.distributions.Bernoulli` validates that observations are exactly 0 or 1,
so it rejects these targets. :class:`FractionalBernoulli` is the same distribution with its
support widened to ``[0, 1]``: the log-"likelihood" of a fractional target is the (negative)
binary cross-entropy. It is a proper probability mass function on ``{0, 1}`` only, which is
exactly the paper's convention; bounds on [0, 1]-valued data are therefore comparable with the
paper's numbers but are not densities of continuous data.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch.distributions import constraints

__all__ = ["FractionalBernoulli"]


class FractionalBernoulli(dist.Bernoulli):
    """Bernoulli with ``logits`` whose ``log_prob`` accepts targets anywhere in ``[0, 1]``.

    ``log_prob(x) = x * logits - softplus(logits) = -BCEWithLogits(logits, x)``, elementwise.
    Sampling returns binary draws as for :class:`~pyro.distributions.Bernoulli`.
    """

    support = constraints.unit_interval
    has_enumerate_support = False

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(FractionalBernoulli, _instance)
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits, value = torch.broadcast_tensors(self.logits, value)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none")
