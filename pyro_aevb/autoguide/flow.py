r"""The amortized inverse autoregressive flow (Kingma et al., 2016).

The diagonal Gaussian of the trunk's features ``h = trunk(x_i)`` over the flat unconstrained
row ``u_i`` of all local latents, followed by ``K`` affine autoregressive transforms each
conditioned on ``h`` (Pyro's :class:`~pyro.distributions.transforms.ConditionalAffineAutoregressive`
on a :class:`~pyro.nn.ConditionalAutoRegressiveNN`)::

    [mu, log sigma^2] = W h + b,       u_0 = mu + sigma * eps,   eps ~ N(0, I_D)
    u_k = m_k(u_{k-1}; h) + s_k(u_{k-1}; h) * u_{k-1}          (autoregressive in u_{k-1})
    log q(u_K | x) = log N(u_0; mu, sigma^2) - sum_k sum_j log s_kj

and ``z = T(u_K)`` site by site as for the other guides. Sampling and the density of a draw
are one pass per flow (the inverse is cached); the density at other points (AIS from the
encoder) inverts each flow, ``D`` passes. The flows alternate between the identity and the
reversed order of the coordinates, and each flow's output layer starts at zero, so that a
new guide is the diagonal Gaussian.

A flow has no closed-form KL: estimator B refuses it with a message naming the site; train
with estimator A. Like the full-covariance guide, the flow is put on the model's site itself
when there is one vector-valued local site, else on an auxiliary site
(:mod:`pyro_aevb.poutine.auxiliary`).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

from ..nn.mlp import as_hidden_dims
from .base import AmortizedGuide, register_autoguide

__all__ = ["AmortizedIAF"]


@register_autoguide
class AmortizedIAF(AmortizedGuide):
    """Amortized diagonal Gaussian followed by ``num_flows`` conditional IAF transforms.

    Parameters
    ----------
    model : callable
        The Pyro model.
    num_flows : int
        K, the number of autoregressive transforms.
    flow_hidden_dims : int or sequence of int, optional
        Hidden layers of each autoregressive network (each at least D); default
        ``10 D`` (Pyro's default for conditional flows).
    **kwargs
        The options of :class:`~pyro_aevb.autoguide.base.AmortizedGuide`.

    The context of every flow is the trunk's features ``h``; the base head is
    ``nets["head"]`` (``nn.Linear(F, 2 D)``), the flows ``nets["flows"]``.
    """

    family = "iaf"

    def __init__(self, model, *, num_flows: int = 2, flow_hidden_dims=None, **kwargs):
        if isinstance(num_flows, bool) or not isinstance(num_flows, int) or num_flows < 1:
            raise ValueError(f"num_flows must be an int >= 1, got {num_flows!r}")
        hidden = None if flow_hidden_dims is None else as_hidden_dims(flow_hidden_dims)
        if hidden is not None and not hidden:
            raise ValueError("flow_hidden_dims must name at least one hidden layer")
        super().__init__(model, **kwargs)
        self.num_flows = num_flows
        self.flow_hidden_dims = hidden

    def _family_options(self) -> dict:
        hidden = None if self.flow_hidden_dims is None else list(self.flow_hidden_dims)
        return {"num_flows": self.num_flows, "flow_hidden_dims": hidden}

    def _build_heads(self, nets: nn.ModuleDict, feature_dim: int) -> None:
        d = self.layout.dim
        hidden = list(self.flow_hidden_dims or (10 * d,))
        if min(hidden) < d:
            raise ValueError(
                f"flow_hidden_dims {hidden} must all be >= D = {d}, the number of latent "
                f"coordinates (a masked autoregressive layer needs a unit per input degree)"
            )
        nets["head"] = nn.Linear(feature_dim, 2 * d)
        flows = []
        for k in range(self.num_flows):
            order = torch.arange(d) if k % 2 == 0 else torch.arange(d - 1, -1, -1)
            arn = ConditionalAutoRegressiveNN(d, feature_dim, hidden, permutation=order)
            flows.append(ConditionalAffineAutoregressive(arn))
        nets["flows"] = nn.ModuleList(flows)

    def _init_heads(self, nets: nn.ModuleDict) -> None:
        with torch.no_grad():  # every flow starts as the identity: mean 0, log scale 0
            for flow in nets["flows"]:
                last = flow.nn.layers[-1]
                last.weight.zero_()
                last.bias.zero_()

    def _base(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_var = self.nets["head"](h).split(self.layout.dim, dim=-1)
        return loc, torch.exp(0.5 * log_var)

    def encode(self, x: torch.Tensor):
        """``(mu, sigma, transforms)``: the base Gaussian ``(batch, D)`` twice and the flows
        conditioned on ``x``'s features (apply them in order to ``mu + sigma * eps``)."""
        h = self.features(x)
        loc, scale = self._base(h)
        return loc, scale, [f.condition(h) for f in self.nets["flows"]]

    def _params_from_features(self, h: torch.Tensor, nets: nn.ModuleDict):
        # per datapoint: the base Gaussian and the flows' context (the flows' weights are
        # shared, so refining a datapoint moves its base and the context its flows see)
        loc, log_var = nets["head"](h).split(self.layout.dim, dim=-1)
        return {"loc": loc, "log_var": log_var, "context": h}

    def _sample_from_params(self, params: dict[str, torch.Tensor], nets: nn.ModuleDict):
        loc, scale, h = params["loc"], torch.exp(0.5 * params["log_var"]), params["context"]
        if self.samples_site_directly:
            (site,) = self.local_sites
            transforms = [f.condition(h) for f in nets["flows"]]
            if not site.identity:
                transforms.append(site.transform.with_cache())
            fn = dist.TransformedDistribution(dist.Normal(loc, scale).to_event(1), transforms)
            return {site.name: pyro.sample(site.name, fn)}
        n, d = loc.shape
        batch = self._row_batch(n)
        context = h.reshape(*batch, h.shape[-1])
        base = dist.Normal(loc.reshape(*batch, d), scale.reshape(*batch, d)).to_event(1)
        aux = dist.TransformedDistribution(base, [f.condition(context) for f in nets["flows"]])
        return self._sample_auxiliary(aux, n)

    def _local_center(self, h: torch.Tensor) -> torch.Tensor:
        u = self._base(h)[0]
        for f in self.nets["flows"]:
            u = f.condition(h)(u)
        return u
