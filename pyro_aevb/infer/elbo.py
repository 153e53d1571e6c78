r"""The paper's two SGVB estimators as Pyro ELBOs.

* **Estimator A** (generic SGVB, eq. 6) is Pyro's :class:`~pyro.infer.Trace_ELBO`::

      L^A = (1/L) sum_l [ log p(x, z_l) - log q(z_l | x) ],   z_l = g_phi(eps_l, x).

* **Estimator B** (eq. 7) replaces the Monte Carlo estimate of the KL term by its closed form::

      L^B = -KL(q(z|x) || p(z)) + (1/L) sum_l log p(x | z_l).

  For a diagonal Gaussian ``q`` and ``p(z) = N(0, I)`` the KL is
  ``-1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)``.

Pyro's :class:`~pyro.infer.TraceMeanField_ELBO` computes the same thing when it can, but
silently falls back to a Monte Carlo term for any site without a registered closed-form KL.
:class:`AnalyticKL_ELBO` is strict: every latent site must have one, or the first evaluation
raises :class:`AnalyticKLError` naming the site.
"""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.inspect import get_dependencies
from pyro.infer.util import check_fully_reparametrized
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence
from torch.distributions.transforms import Transform

from ..device import fork_rng
from ..distributions import distribution_name
from ..poutine import UNCONSTRAINED_OF
from ..poutine.compile import CaptureError, recording
from ..poutine.plates import same_weight

__all__ = [
    "AnalyticKL_ELBO",
    "AnalyticKLError",
    "analytic_kl_elbo_particle",
    "check_site_order",
    "model_dependencies",
    "make_elbo",
    "ESTIMATORS",
    "site_kl",
]

ESTIMATORS = ("A", "B")


class AnalyticKLError(NotImplementedError):
    """A latent site has no closed-form ``KL(q || p)``, so estimator B cannot be used."""


def site_kl(name: str, guide_site: dict, model_site: dict) -> torch.Tensor:
    """Closed-form ``KL(q || p)`` at one latent site, shape ``guide_fn.batch_shape``, unscaled.

    Raises :class:`AnalyticKLError` naming the site and both distributions if no KL is
    registered with :func:`torch.distributions.kl.register_kl`.
    """
    q, p = guide_site["fn"], model_site["fn"]
    try:
        kl = kl_divergence(q, p)
    except NotImplementedError as err:
        raise AnalyticKLError(
            f"Estimator B needs a closed-form KL(q || p) at every latent site, but site "
            f"'{name}' has guide distribution {distribution_name(q)} and model distribution "
            f"{distribution_name(p)}, for which no KL is registered. Use estimator 'A' "
            f"(Trace_ELBO), or register one with torch.distributions.kl.register_kl."
        ) from err
    if not torch.is_tensor(kl):
        kl = torch.as_tensor(kl).expand(q.batch_shape)
    return kl


def model_dependencies(model, args: tuple = (), kwargs: dict | None = None) -> dict:
    """``{site: {upstream latent sites it depends on}}`` in the model's prior, from
    :func:`pyro.infer.inspect.get_dependencies` (one run of the model with provenance
    tracking, under a forked RNG, blocked from any enclosing trace)."""
    if recording():  # a run of the model must not become part of a recorded step
        raise CaptureError("estimator B's check of the order of the draws runs the model")
    with fork_rng(), torch.no_grad(), poutine.block():
        found = get_dependencies(model, tuple(args), dict(kwargs or {}))["prior_dependencies"]
    return {site: set(upstream) - {site} for site, upstream in found.items()}


def _distribution_tensors(fn, seen=None):
    """The tensors a distribution holds (its parameters, through wrapped distributions and
    transforms)."""
    seen = set() if seen is None else seen
    if id(fn) in seen:
        return
    seen.add(id(fn))
    for value in vars(fn).values():
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            if isinstance(item, torch.Tensor):
                yield item
            elif isinstance(item, torch.distributions.Distribution | Transform):
                yield from _distribution_tensors(item, seen)


def _follows(site: dict, value: torch.Tensor) -> bool | None:
    """Whether the distribution of the model's ``site`` is computed from ``value`` (another
    site's draw), read off the autograd graph; ``None`` where there is none to read."""
    if not (torch.is_grad_enabled() and value.requires_grad):
        return None
    params = [t for t in _distribution_tensors(site["fn"]) if t.requires_grad]
    if not params:
        return False  # computed from nothing that requires grad, so not from value
    grads = torch.autograd.grad(
        params, [value], [torch.ones_like(t) for t in params], retain_graph=True,
        allow_unused=True,
    )  # fmt: skip
    return grads[0] is not None


def check_site_order(model_trace, guide_trace, dependencies=None) -> None:
    """Raise :class:`AnalyticKLError` if the guide draws a latent site before one that the
    model's distribution at that site depends on.

    Estimator B takes each site's ``KL(q(z_s | .) || p(z_s | .))`` at the values drawn before
    it, which is ``E_q[log q(z_s | .) - log p(z_s | .)]`` only if the model's parents of
    ``z_s`` are drawn before ``z_s`` in the guide too. A bottom-up guide of a top-down model,
    ``q(z1 | x) q(z2 | z1)`` for ``p(z2) p(z1 | z2)``, would otherwise take ``KL(q(z1 | x) ||
    p(z1 | z2))`` at a ``z2`` drawn from ``z1``: a biased bound (either way). Other orders
    of independent sites are exact (a global latent the model draws after the data plate,
    which the amortized guides draw first).

    Guides drawing in the model's order pass at once. For each pair drawn in the other
    order, whether the model's distribution follows the later draw is read off the autograd
    graph; where there is none (``torch.no_grad``, a draw without parameters), from
    ``dependencies`` (a callable returning :func:`model_dependencies`); failing both, the
    pair is refused (Pyro's ``TraceMeanField_ELBO`` checks the order only, and warns).
    """
    in_guide = {n for n, s in guide_trace.nodes.items() if s["type"] == "sample"}
    model_order = [
        name
        for name, site in model_trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and not site_is_subsample(site)
        and name in in_guide
    ]
    wanted = set(model_order)
    position = {n: i for i, n in enumerate(n for n in guide_trace.nodes if n in wanted)}
    # (t, s): the model draws t before s, the guide s before t
    swapped = [
        (t, s)
        for k, t in enumerate(model_order)
        for s in model_order[k + 1 :]
        if position[s] < position[t]
    ]
    parents, why = None, ""
    for t, s in swapped:
        follows = _follows(model_trace.nodes[s], model_trace.nodes[t]["value"])
        if follows is None and dependencies is not None and not why:
            if parents is None:
                try:
                    parents = dependencies()
                except CaptureError:
                    raise
                except Exception as err:  # a model get_dependencies cannot follow
                    why = f" (its dependencies could not be traced: {type(err).__name__}: {err})"
            if parents is not None:
                follows = t in parents.get(s, ())
        if follows is False:
            continue
        raise AnalyticKLError(
            f"estimator B: the guide draws latent site '{s}' before '{t}', but the model's "
            f"distribution at '{s}' {'depends' if follows else 'may depend'} on '{t}'{why}. "
            f"Each site's closed-form KL is taken at the values drawn before it, which is "
            f"exact only when the model's parents of a site are drawn before it in the guide "
            f"too (a bottom-up guide of a top-down model gives a biased bound). Draw '{t}' "
            f"before '{s}' in the guide, or use estimator 'A'"
        )


def analytic_kl_elbo_particle(model_trace, guide_trace) -> torch.Tensor:
    """Estimator B for one particle of Pyro's traces (log-densities computed): ``sum_observed
    log_prob_sum - sum_latent scaled KL(q || p)``, a differentiable tensor.

    Raises :class:`AnalyticKLError` for a guide-only (auxiliary) site, a latent site missing
    from the guide, or a pair of distributions without a registered closed-form KL. The
    order of the draws is checked where the traces are made (:func:`check_site_order`).
    """
    # Guide-only sites first: a joint guide sets the model's latents through Delta sites
    # from an auxiliary draw, and a KL of those Deltas would be silently wrong.
    for name, guide_site in guide_trace.nodes.items():
        if guide_site["type"] == "sample" and name not in model_trace.nodes:
            covers = (guide_site.get("infer") or {}).get(UNCONSTRAINED_OF)
            what = f" (it parametrises the latents {list(covers)})" if covers else ""
            raise AnalyticKLError(
                f"estimator B: the guide's auxiliary site '{name}' is not in the model{what}; "
                f"the guide sets the model's latents from it through Delta sites, so no "
                f"closed-form KL exists (a joint or flow guide, or Pyro's AutoNormal for "
                f"global latents). Use estimator 'A' (or AutoDelta / a guide sampling the "
                f"model's sites directly)"
            )
    elbo_particle = 0.0
    for name, model_site in model_trace.nodes.items():
        if model_site["type"] != "sample":
            continue
        if model_site["is_observed"]:
            elbo_particle = elbo_particle + model_site["log_prob_sum"]
            continue
        guide_site = guide_trace.nodes.get(name)
        if guide_site is None:
            raise AnalyticKLError(f"latent site '{name}' of the model is not in the guide")
        try:
            check_fully_reparametrized(guide_site)
        except NotImplementedError:
            fn = guide_site["fn"]
            try:
                kind = " (discrete)" if fn.support.is_discrete else ""
            except NotImplementedError:  # a distribution of the user's without .support
                kind = ""
            raise AnalyticKLError(
                f"estimator B needs a reparameterized guide draw at every latent site, but "
                f"site '{name}' has guide distribution {type(fn).__name__}{kind} without "
                f"rsample. Use estimator 'A' (Trace_ELBO: a score-function gradient "
                f"for that site), or enumerate a discrete site out of the model"
            ) from None
        kl = site_kl(name, guide_site, model_site)
        if _same_weight(model_site, guide_site):
            kl = scale_and_mask(kl, scale=guide_site["scale"], mask=guide_site["mask"])
            elbo_particle = elbo_particle - kl.sum()
            continue
        # The model weighs its term otherwise than the guide (a KL weight written with
        # poutine.scale or a mask around the model's site only): what estimator A estimates,
        # s_m E_q[log p] - s_g E_q[log q], is in closed form -s_m KL + (s_g - s_m) H(q)
        # (E_q[log p] = -KL - H), each part with its own site's scale and mask.
        try:
            entropy = guide_site["fn"].entropy()
        except NotImplementedError:
            raise AnalyticKLError(
                f"estimator B: latent site '{name}' is scaled or masked in the model "
                f"otherwise than in the guide (poutine.scale / mask around one of them), and "
                f"the guide's {type(guide_site['fn']).__name__} has no closed-form entropy to "
                f"weigh them apart; put the same scale on both sites or use estimator 'A'"
            ) from None
        model_part = scale_and_mask(-kl - entropy, model_site["scale"], model_site["mask"])
        guide_part = scale_and_mask(entropy, guide_site["scale"], guide_site["mask"])
        elbo_particle = elbo_particle + model_part.sum() + guide_part.sum()
    return elbo_particle


def _same_weight(model_site: dict, guide_site: dict) -> bool:
    """Whether the two sites carry the same scale and mask (the usual case, in which the
    site's term is ``-scale * KL``, masked)."""
    return all(same_weight(model_site[k], guide_site[k]) for k in ("scale", "mask"))


class AnalyticKL_ELBO(TraceMeanField_ELBO):
    """Estimator B: strict analytic-KL ELBO (eq. 7).

    Like :class:`~pyro.infer.TraceMeanField_ELBO` (every latent is reparameterised, and its
    KL is taken given the draws before it), but a latent site without a closed-form KL, a
    guide-only (auxiliary) site, or a guide drawing a site before one its model distribution
    depends on (:func:`check_site_order`) raises :class:`AnalyticKLError` instead of
    silently switching to a Monte Carlo term or warning.
    """

    def _get_trace(self, model, guide, args, kwargs):
        # Trace_ELBO's traces, without TraceMeanField_ELBO's warning about the order of the
        # draws: check_site_order tells the orders that matter, and refuses them
        model_trace, guide_trace = Trace_ELBO._get_trace(self, model, guide, args, kwargs)
        check_site_order(model_trace, guide_trace, lambda: model_dependencies(model, args, kwargs))
        return model_trace, guide_trace

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        elbo_particle = analytic_kl_elbo_particle(model_trace, guide_trace)
        loss = -elbo_particle.detach()
        return (loss if torch._C._get_tracing_state() else loss.item()), -elbo_particle


def make_elbo(estimator: str, num_particles: int = 1, **kwargs):
    """``"A"`` -> :class:`~pyro.infer.Trace_ELBO`, ``"B"`` -> :class:`AnalyticKL_ELBO`."""
    if estimator == "A":
        return Trace_ELBO(num_particles=num_particles, **kwargs)
    if estimator == "B":
        return AnalyticKL_ELBO(num_particles=num_particles, **kwargs)
    raise ValueError(f"estimator must be 'A' or 'B', got {estimator!r}")
