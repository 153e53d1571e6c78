"""Distributions that Pyro does not ship as such: the paper's Bernoulli likelihood on [0, 1]
data, a factor statement whose value is computed only when something reads it, and a
closed-form KL that torch and Pyro lack.

The paper feeds MNIST intensities ``x in [0, 1]`` (pixels / 256) straight into a Bernoulli
log-likelihood without binarising them (Appendix C.1)::

    log p(x|z) = sum_i x_i log y_i + (1 - x_i) log(1 - y_i),     y = sigmoid(logits).

Pyro's :class:`~pyro.distributions.Bernoulli` validates that observations are exactly 0 or 1,
so it rejects these targets. :class:`FractionalBernoulli` is the same distribution with its
support widened to ``[0, 1]``: the log-"likelihood" of a fractional target is the (negative)
binary cross-entropy. It is a proper probability mass function on ``{0, 1}`` only, which is
exactly the paper's convention; bounds on [0, 1]-valued data are therefore comparable with the
paper's numbers but are not densities of continuous data.

:func:`lazy_factor` is :func:`pyro.factor` with the log-factor computed on first use. The
VAE's weight prior is a sum over every network weight; per-datapoint potentials (batched HMC,
Pyro's MCMC per datapoint) trace the model at every leapfrog step but never read that global
term, and computed eagerly it took a fifth (batch 1000) to a third (batch 1) of each
potential evaluation of the 784-100-3 model.

The closed-form KL of a full-covariance Gaussian against a diagonal one
(:func:`kl_mvn_diagonal_normal`) is registered with :func:`torch.distributions.kl.register_kl`,
so that estimator B covers a full-covariance encoder against the VAE's ``N(0, I)`` prior
(torch ships ``MultivariateNormal`` against ``MultivariateNormal``, Pyro the reverse pair).
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch.distributions import Independent, MultivariateNormal, Normal, constraints, register_kl

__all__ = ["FractionalBernoulli", "distribution_name", "lazy_factor", "kl_mvn_diagonal_normal"]


def distribution_name(fn) -> str:
    """``"Independent(Normal)"``-style name of a distribution and the ones it wraps."""
    names = []
    while hasattr(fn, "base_dist"):
        names.append(type(fn).__name__)
        fn = fn.base_dist
    names.append(type(fn).__name__)
    return "(".join(names) + ")" * (len(names) - 1)


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


def lazy_factor(
    name: str,
    log_factor_fn: Callable[[], torch.Tensor],
    dtype: torch.dtype,
    device: torch.device | None = None,
) -> None:
    """``pyro.factor(name, log_factor_fn())``, with ``log_factor_fn`` called only when the
    site's ``log_prob`` is first read (by an ELBO, ``Trace.log_prob_sum``, MCMC on the whole
    model), at most once per trace. The site is a factor site like any other: observed,
    auxiliary, with a :class:`~pyro.distributions.Unit` distribution."""
    unit = _LazyUnit(log_factor_fn, dtype, device)
    pyro.sample(name, unit, obs=unit.sample(), infer={"is_auxiliary": True})


class _LazyUnit(dist.Unit):
    """:class:`~pyro.distributions.Unit` whose ``log_factor`` is evaluated on first use."""

    def __init__(self, log_factor_fn: Callable[[], torch.Tensor], dtype: torch.dtype, device=None):
        self._log_factor_fn = log_factor_fn
        self._log_factor = None
        self._dtype = dtype
        self._device = device
        # Unit.__init__ would need the value now; a scalar factor has these shapes.
        dist.TorchDistribution.__init__(self, torch.Size(), torch.Size((0,)), validate_args=False)

    @property
    def log_factor(self) -> torch.Tensor:
        if self._log_factor is None:
            self._log_factor = torch.as_tensor(self._log_factor_fn())
        return self._log_factor

    def expand(self, batch_shape, _instance=None):
        return dist.Unit(self.log_factor).expand(batch_shape)

    def sample(self, sample_shape=()):
        shape = torch.Size(sample_shape) + self.shape()
        return torch.empty(shape, dtype=self._dtype, device=self._device)

    rsample = sample


# Pyro recognises factor sites by the class name (pyro.poutine.util.site_is_factor).
_LazyUnit.__name__ = _LazyUnit.__qualname__ = "Unit"


@register_kl(MultivariateNormal, Independent)
def kl_mvn_diagonal_normal(q: MultivariateNormal, p: Independent) -> torch.Tensor:
    r"""``KL(q || p)`` for ``q = N(mu_q, L L^T)`` and a diagonal ``p = N(mu_p, diag s^2)``.

    ``p`` must be a :class:`~torch.distributions.Normal` made independent over its last
    dimension (``Normal(loc, scale).to_event(1)``), with the event size of ``q``; anything
    else raises ``NotImplementedError`` (so estimator B names the site). With ``D`` the
    dimension::

        KL = 1/2 [ sum_j (L L^T)_jj / s_j^2 + sum_j ((mu_p - mu_q)_j / s_j)^2 - D ]
             + sum_j log s_j - sum_j log L_jj

    (``log det(L L^T) = 2 sum_j log L_jj``). Shape: the broadcast batch shape of ``q`` and
    ``p``.
    """
    base = p.base_dist
    if (
        not isinstance(base, Normal)
        or p.reinterpreted_batch_ndims != 1
        or p.event_shape != q.event_shape
    ):
        raise NotImplementedError
    tril = q.scale_tril
    var_q = tril.pow(2).sum(-1)  # diag(L L^T)
    inv_var_p = base.scale.pow(-2)
    trace = (var_q * inv_var_p).sum(-1)
    mahalanobis = ((base.loc - q.loc).pow(2) * inv_var_p).sum(-1)
    log_det_p = 2 * base.scale.log().sum(-1)
    log_det_q = 2 * tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return 0.5 * (trace + mahalanobis - q.event_shape[0] + log_det_p - log_det_q)
