r"""Whether a guide's draws of a latent lie where the model gives that latent density.

The ELBO, the importance weights and AIS started from the guide all evaluate
``log p(x, z) - log q(z | x)`` at the guide's draws ``z``. Two mismatches of supports make
that quietly wrong or quietly partial:

* **A guide draw outside the model's support** (a ``Normal`` guide for an ``Exponential``
  latent) has no model density. With Pyro's validation on, ``log_prob`` raises; with it off,
  or in a recorded replay that does not validate, many ``log_prob`` formulas return a finite
  number there (``Exponential``: ``log rate - rate z`` for ``z < 0``), so the objective is
  silently wrong. The draws of the set-up trace are checked against the model's support
  whatever the validation setting. (Declared supports cannot decide this: torch's
  ``biject_to(interval(a, b))`` ends in an affine map and declares ``real``.)
* **The guide's support is narrower** (a ``LogNormal`` guide for a ``Normal`` latent): every
  bound and estimate is then one of the model's mass on the guide's part of the space only.

For the second case the declared supports are compared where both are intervals of the real
line, elementwise (``real``, ``positive``, ``greater_than``, ``interval``, ... under any
``independent``), with their bounds broadcast to the site's value; other supports
(``simplex``, ``lower_cholesky``, ...) and point masses (``Delta``, ``Empirical``, whose
declared support says nothing of their draws) are not compared.
"""

from __future__ import annotations

import math
import warnings

import pyro.distributions as dist
import torch
from torch.distributions import constraints

from .plates import ProgramContractError

__all__ = ["support_interval", "check_guide_supports"]

_UNBOUNDED = math.inf


def support_interval(support) -> tuple | None:
    """``(lower, upper)`` (floats or tensors) of a support that is an interval of the real
    line elementwise, or ``None`` for any other support."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    if getattr(support, "is_discrete", False):
        return None
    if type(support) is type(constraints.real):
        return (-_UNBOUNDED, _UNBOUNDED)
    if isinstance(support, (constraints.greater_than, constraints.greater_than_eq)):
        return (support.lower_bound, _UNBOUNDED)
    if isinstance(support, constraints.less_than):
        return (-_UNBOUNDED, support.upper_bound)
    if isinstance(support, (constraints.interval, constraints.half_open_interval)):
        return (support.lower_bound, support.upper_bound)
    return None


def _bound(value, shape) -> torch.Tensor | None:
    t = torch.as_tensor(value.detach() if isinstance(value, torch.Tensor) else value)
    try:
        return torch.broadcast_to(t.to(torch.float64), shape)
    except RuntimeError:
        return None


def _describe(interval) -> str:
    def one(v):
        if isinstance(v, torch.Tensor) and v.numel() > 1:
            flat = v.detach().reshape(-1)
            return f"{float(flat[0]):g}" if bool((flat == flat[0]).all()) else "per entry"
        return f"{float(v):g}"

    return f"({one(interval[0])}, {one(interval[1])})"


def _point_mass(fn) -> bool:
    while isinstance(fn, (dist.Independent, dist.MaskedDistribution, dist.ExpandedDistribution)):
        fn = fn.base_dist
    return isinstance(fn, (dist.Delta, dist.Empirical))


def _draws_outside(m_site) -> int:
    """How many of the guide's draws (the model site's value, replayed) the model's support
    refuses, counting only entries the model's mask keeps; 0 where the support cannot be
    checked."""
    mask = m_site.get("mask")
    if mask is False:
        return 0
    try:
        ok = m_site["fn"].support.check(m_site["value"])
    except (NotImplementedError, RuntimeError, ValueError, TypeError):
        return 0  # a dependent or unchecked support, or a distribution without .support
    if isinstance(mask, torch.Tensor):
        try:
            ok = ok | ~mask.bool()
        except RuntimeError:
            return 0
    return int((~ok.bool()).sum())


def check_guide_supports(model_sites: dict, guide_sites: dict) -> None:
    """Check each latent's guide draws and support against the model's (see the module
    docstring).

    ``model_sites`` and ``guide_sites`` map site names to the sites of a model trace replayed
    on a guide trace; sites present in only one of them are skipped (their mismatch is
    reported elsewhere).

    Raises :class:`ProgramContractError` where a guide draw lies outside the model's support
    (whether or not Pyro's validation is on: with it off, ``log_prob`` would return a number
    there). Warns where the guide's declared support is narrower than the model's. A guide
    whose declared support is wider than its draws (``biject_to(interval)`` ends in an affine
    map, declared ``real``) is not flagged for that alone.
    """
    narrower = []
    for name, m_site in model_sites.items():
        g_site = guide_sites.get(name)
        if g_site is None:
            continue
        outside = _draws_outside(m_site)
        if outside:
            numel = m_site["value"].numel()
            raise ProgramContractError(
                f"{outside} of {numel} guide draws of latent site '{name}' lie outside the "
                f"model's support {m_site['fn'].support} (guide distribution "
                f"{type(g_site['fn']).__name__}, support {g_site['fn'].support}): the model "
                f"has no density there. Give the guide a distribution on the model's support "
                f"(e.g. TransformedDistribution(Normal(...), biject_to(support)))"
            )
        if _point_mass(g_site["fn"]):
            continue
        try:
            m_int = support_interval(m_site["fn"].support)
            g_int = support_interval(g_site["fn"].support)
        except NotImplementedError:  # a distribution of the user's without .support
            continue
        if m_int is None or g_int is None:
            continue
        shape = tuple(m_site["value"].shape)
        bounds = [_bound(v, shape) for v in (*m_int, *g_int)]
        if any(b is None for b in bounds):
            continue
        m_lo, m_hi, g_lo, g_hi = bounds
        # A relative tolerance: bounds computed two ways (loc - w in the guide) may differ
        # in the last bit without the supports differing.
        tol_lo = 1e-6 * (1.0 + m_lo.abs().nan_to_num(posinf=0.0))
        tol_hi = 1e-6 * (1.0 + m_hi.abs().nan_to_num(posinf=0.0))
        within = bool((g_lo >= m_lo - tol_lo).all()) and bool((g_hi <= m_hi + tol_hi).all())
        if within and (bool((g_lo > m_lo + tol_lo).any()) or bool((g_hi < m_hi - tol_hi).any())):
            narrower.append(f"'{name}' (model {_describe(m_int)}, guide {_describe(g_int)})")
    if narrower:
        warnings.warn(
            f"the guide's distribution of latent site(s) {', '.join(narrower)} has a narrower "
            f"support than the model's: the ELBO, importance weights and estimates started "
            f"from the guide then count only the model's mass where the guide can draw",
            UserWarning,
            stacklevel=4,
        )
