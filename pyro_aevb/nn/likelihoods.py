r"""Likelihood heads: the parameters a decoder outputs -> the distribution ``p(x | z)``.

A decoder network maps ``z`` to ``k * D`` numbers per datapoint (``D`` values of ``x``, ``k``
parameters each), in ``k`` consecutive blocks of ``D`` (a flattened ``(batch, k*C, H, W)``
convolution output is the same layout). A head turns them into a distribution whose event
shape is the data's, ``(D,)`` for flat rows or ``(C, H, W)`` for images:

* :class:`BernoulliLikelihood` (``k = 1``, logits): the paper's decoder for binary or [0, 1]
  data (Appendix C.1), ``log p(x|z) = sum_i x_i log y_i + (1 - x_i) log(1 - y_i)`` with
  ``y = sigmoid(logits)``, on fractional targets too
  (:class:`~pyro_aevb.distributions.FractionalBernoulli`);
* :class:`GaussianLikelihood` (``k = 2``, ``[mean, log variance]``): the paper's decoder for
  real data (Appendix C.2), with the mean optionally squashed by a sigmoid (its Frey Face
  setting).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch

from ..distributions import FractionalBernoulli

__all__ = ["Likelihood", "BernoulliLikelihood", "GaussianLikelihood", "make_likelihood"]


def _blocks(out: torch.Tensor, k: int, event_shape: tuple[int, ...]) -> list[torch.Tensor]:
    """``out`` ``batch + (k * D,)`` -> ``k`` tensors ``batch + event_shape``."""
    d = math.prod(event_shape)
    if out.shape[-1] != k * d:
        raise ValueError(
            f"the decoder gives {out.shape[-1]} outputs per datapoint, but a {k}-parameter "
            f"likelihood over data of shape {event_shape} needs {k} x {d} = {k * d}"
        )
    batch = out.shape[:-1]
    return [b.reshape(*batch, *event_shape) for b in out.split(d, dim=-1)]


class Likelihood:
    """Base class. ``num_params``: outputs per data value; ``name``: for configs."""

    name = "likelihood"
    num_params = 1
    #: Whether the data must lie in [0, 1].
    unit_interval = False

    def dist(self, out: torch.Tensor, event_shape) -> dist.Distribution:
        """``p(x | z)`` with batch shape ``out``'s leading dims and event shape ``event_shape``."""
        raise NotImplementedError

    def mean(self, out: torch.Tensor, event_shape) -> torch.Tensor:
        """``E[x | z]``, shape ``batch + event_shape`` (the paper's Figure 4 and 5 images)."""
        raise NotImplementedError

    def config(self) -> dict:
        return {"likelihood": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class BernoulliLikelihood(Likelihood):
    """Bernoulli with logits: ``y = sigmoid(out)``; data in [0, 1]."""

    name = "bernoulli"
    num_params = 1
    unit_interval = True

    def dist(self, out, event_shape):
        (logits,) = _blocks(out, 1, tuple(event_shape))
        return FractionalBernoulli(logits=logits).to_event(len(event_shape))

    def mean(self, out, event_shape):
        return torch.sigmoid(_blocks(out, 1, tuple(event_shape))[0])


class GaussianLikelihood(Likelihood):
    """Diagonal Gaussian ``N(mean, exp(log_var))``; with ``sigmoid_mean`` the mean is
    ``sigmoid(mean)`` (the paper's Frey Face setting, data in (0, 1))."""

    name = "gaussian"
    num_params = 2

    def __init__(self, sigmoid_mean: bool = False):
        self.sigmoid_mean = bool(sigmoid_mean)

    def _mean_and_log_var(self, out, event_shape):
        mean, log_var = _blocks(out, 2, tuple(event_shape))
        if self.sigmoid_mean:
            mean = torch.sigmoid(mean)
        return mean, log_var

    def dist(self, out, event_shape):
        mean, log_var = self._mean_and_log_var(out, event_shape)
        return dist.Normal(mean, torch.exp(0.5 * log_var)).to_event(len(event_shape))

    def mean(self, out, event_shape):
        return self._mean_and_log_var(out, event_shape)[0]

    def config(self) -> dict:
        return {"likelihood": self.name, "sigmoid_mean": self.sigmoid_mean}

    def __repr__(self) -> str:
        return f"GaussianLikelihood(sigmoid_mean={self.sigmoid_mean})"


def make_likelihood(likelihood: str | Likelihood, sigmoid_mean: bool = False) -> Likelihood:
    """``"bernoulli"`` or ``"gaussian"`` (or a :class:`Likelihood`, returned as is)."""
    if isinstance(likelihood, Likelihood):
        return likelihood
    if likelihood == "bernoulli":
        if sigmoid_mean:
            raise ValueError("sigmoid_mean=True applies to likelihood='gaussian' only")
        return BernoulliLikelihood()
    if likelihood == "gaussian":
        return GaussianLikelihood(sigmoid_mean)
    raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
