r"""Local refinement: the best member of the guide's family for each datapoint, from the encoder.

An amortized guide computes the parameters ``lambda_i = f_phi(x_i)`` of ``q(z | x_i)`` with
one encoder for all datapoints. Refinement optimises, for each datapoint of a batch at once, a
free copy of those parameters, started at the encoder's output, to maximise the per-datapoint
ELBO with the model (and the encoder) frozen::

    lambda_i^(0) = f_phi(x_i),     lambda_i^(t+1) = lambda_i^(t) + Adam step on L_i(lambda_i^(t))

so ``q*(z | x_i)`` is (approximately) the best member of the family for ``x_i``. The
per-datapoint bounds are independent, so one optimiser over the ``(B, ...)`` parameter
tensors refines every datapoint at once. The difference ``L_i[q*] - L_i[q]`` is the
*amortization gap* of Cremer et al. (2018); ``log p(x_i) - L_i[q*]`` the *approximation
gap* of the family (:func:`pyro_aevb.evaluate.gap_report`).

**Guides that can be refined** expose their per-datapoint parameters, on the guide object (or
the object a bound-method guide belongs to, e.g. :class:`~pyro_aevb.models.VAE`):

* ``local_params(x) -> dict[str, Tensor]``: each ``(B, ...)``, unconstrained, with gradients
  to the encoder;
* ``local_guide(params) -> guide``: a Pyro guide ``guide(x)`` that draws the local latents of
  the ``B`` rows from ``q`` with those parameters (and everything else as the original guide).

:func:`refine` returns a :class:`RefinedGuide`: a Pyro guide usable wherever a guide is
(``elbo_per_datapoint``, ``log_marginal``, HMC starts), for the rows it was refined on (and
stacked copies of them, which IWAE and several chains per datapoint use); other rows are an
error, never a result for the wrong rows.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..device import fork_rng
from ..poutine import as_program
from ..validation import check_data, check_positive_float, check_positive_int, check_seed
from .per_datapoint import stacked_elbo

__all__ = ["refine", "RefinedGuide", "local_params_owner", "supports_refinement"]


def local_params_owner(guide):
    """The object implementing ``local_params``/``local_guide`` for ``guide``, or ``None``."""
    for owner in (guide, getattr(guide, "__self__", None)):
        if owner is not None and callable(getattr(owner, "local_params", None)):
            if callable(getattr(owner, "local_guide", None)):
                return owner
    return None


def supports_refinement(guide) -> bool:
    """Whether :func:`refine` can refine ``guide`` (see the module docstring)."""
    return local_params_owner(guide) is not None


class RefinedGuide:
    """A guide with per-datapoint parameters fixed for the rows ``x`` it was refined on.

    Called with ``x`` (or ``k`` stacked copies of it, copy-major, as
    :func:`~pyro_aevb.poutine.replicate_rows` makes them), it draws from ``q*(z | x_i)``.

    Attributes
    ----------
    params : dict of str to torch.Tensor
        The refined parameters, each ``(B, ...)``.
    x : torch.Tensor
        The rows they belong to.
    diagnostics : dict
        Per-datapoint refinement diagnostics (see :func:`refine`).
    """

    def __init__(self, owner, params: dict, x: torch.Tensor, diagnostics: dict | None = None):
        self.owner = owner
        self.params = {k: v.detach() for k, v in params.items()}
        self.x = x
        self.diagnostics = diagnostics or {}
        self._index: dict | None = None  # a row's bytes -> its index (see _params_for)

    def _params_for(self, x: torch.Tensor) -> dict:
        """The refined parameters of the rows of ``x``: the refined rows themselves, stacked
        copies of them (particles), or any of them in any order (a block of an evaluation
        in blocks, one row for a Pyro MCMC chain), found by their values. Rows with equal
        values (a data set with duplicates, each refined on its own) take the refined copies
        in order of appearance."""
        b = self.x.shape[0]
        rows = x.shape[0]
        if x.shape[1:] != self.x.shape[1:]:
            raise ValueError(
                f"this refined guide holds parameters for {b} rows of shape "
                f"{tuple(self.x.shape[1:])}; it was called with x of shape {tuple(x.shape)}. "
                f"Refine the rows you evaluate: refine(model, guide, x)"
            )
        k = rows // b
        if rows % b == 0 and torch.equal(
            x.reshape(k, b, *x.shape[1:]), self.x.expand(k, *self.x.shape)
        ):
            return {n: v.repeat((k,) + (1,) * (v.dim() - 1)) for n, v in self.params.items()}
        index = self._index
        if index is None:  # a row's bytes -> the refined rows holding it, in order
            index = {}
            for j, row in enumerate(self.x.detach().cpu().reshape(b, -1)):
                index.setdefault(row.numpy().tobytes(), []).append(j)
            self._index = index
        # the k-th copy of a row among those of x takes the k-th refined copy of it (a data
        # set with duplicate rows refined each on its own), cycling for stacked particles
        seen: dict = {}
        found = []
        for row in x.detach().cpu().reshape(rows, -1):
            key = row.numpy().tobytes()
            copies = index.get(key)
            k = seen.get(key, 0)
            seen[key] = k + 1
            found.append(None if copies is None else copies[k % len(copies)])
        if any(j is None for j in found):
            raise ValueError(
                f"this refined guide was called on {sum(j is None for j in found)} row(s) it was "
                f"not refined on; refine(model, guide, x) for the rows you evaluate"
            )
        idx = torch.tensor(found, device=self.x.device)
        return {n: v[idx] for n, v in self.params.items()}

    def __call__(self, x, *args, **kwargs):
        return self.owner.local_guide(self._params_for(x))(x, *args, **kwargs)


@dataclass
class _Trace:
    steps: list = field(default_factory=list)
    bounds: list = field(default_factory=list)


def refine(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    steps: int = 200,
    lr: float = 0.1,
    num_particles: int = 8,
    estimator: str = "A",
    plate_name: str = "data",
    global_values: dict | None = None,
    tol: float = 1e-3,
    seed: int | None = None,
) -> RefinedGuide:
    """Refine the guide's distribution for each row of ``x`` (the model and encoder frozen).

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``fn(x)``; ``guide`` must expose its per-datapoint
        parameters (see the module docstring; the :class:`~pyro_aevb.models.VAE`'s guide,
        :class:`~pyro_aevb.models.LinearGaussian`'s and pyro-aevb's amortized autoguides do).
    x : torch.Tensor
        ``(B, *event_shape)``.
    steps : int
        Adam steps on the per-datapoint ELBO.
    lr : float
        Adam's step size, decayed as ``lr / sqrt(1 + t / 50)``; the parameters returned are
        the average of the last fifth of the iterates (Polyak-Ruppert averaging), so that the
        Monte Carlo noise of the ELBO's gradient averages out.
    num_particles : int
        Draws of ``z`` per datapoint in each step's ELBO estimate.
    estimator : {"A", "B"}
        The ELBO estimator (B: closed-form KL where the family allows it).
    tol : float
        Convergence tolerance of the diagnostics: a datapoint is converged when its bound
        changed by less than ``tol`` nats (plus twice its Monte Carlo error) over the last
        fifth of the steps.
    seed : int, optional
        Seeds the draws (inside a forked RNG); ``None`` uses the global RNG.

    Returns
    -------
    RefinedGuide
        With ``diagnostics``, each ``(B,)``: ``initial_bound``, the bound at the encoder's
        parameters (``num_particles`` draws per step for a fifth of ``steps``, without
        gradients); ``final_bound``, the mean of the last fifth of the steps' estimates
        (around the averaged parameters returned); ``improvement = final_bound -
        initial_bound``, an estimate of the amortization gap ``L_i[q*] - L_i[q]`` (from
        as many draws at each end); ``converged`` (bool); and ``steps``.
    """
    x = check_data(x, "x")
    steps = check_positive_int(steps, "steps")
    lr = check_positive_float(lr, "lr")
    num_particles = check_positive_int(num_particles, "num_particles")
    seed = None if seed is None else check_seed(seed)
    owner = local_params_owner(guide)
    if owner is None:
        raise TypeError(
            f"{getattr(guide, '__qualname__', type(guide).__name__)} cannot be refined: a guide "
            f"must expose local_params(x) and local_guide(params) (the VAE's guide and "
            f"pyro-aevb's autoguides do)"
        )
    with torch.no_grad():
        start = owner.local_params(x)
    params = {k: v.detach().clone().requires_grad_() for k, v in start.items()}
    refined = RefinedGuide(owner, params, x)
    # the guide that reads the live (optimised) parameters
    refined.params = params
    program = as_program(model, refined, x, plate_name=plate_name, global_values=global_values)
    optimizer = torch.optim.Adam(list(params.values()), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1 / math.sqrt(1 + t / 50))
    history = []
    window = max(1, steps // 5)
    averaged = {k: torch.zeros_like(v) for k, v in params.items()}
    rng = fork_rng() if seed is not None else contextlib.nullcontext()
    with rng:
        if seed is not None:
            torch.manual_seed(seed)
        # the bound at the encoder's parameters, from as many draws as the final window's
        # mean, so that their difference is not dominated by the noise of either end
        with torch.no_grad():
            initial = torch.stack(
                [stacked_elbo(program, x, estimator, num_particles) for _ in range(window)]
            ).mean(0)
        for t in range(steps):
            bound = stacked_elbo(program, x, estimator, num_particles)  # (B,)
            optimizer.zero_grad()
            grads = torch.autograd.grad(-bound.sum(), list(params.values()))
            for p, g in zip(params.values(), grads, strict=True):
                p.grad = g
            optimizer.step()
            schedule.step()
            history.append(bound.detach())
            if t >= steps - window:  # Polyak-Ruppert: average the last iterates
                with torch.no_grad():
                    for k, v in params.items():
                        averaged[k] += v / window
    trace = torch.stack(history)  # (steps, B)
    last = trace[-window:].mean(0)
    half = trace[-window:]
    prev = trace[-2 * window : -window] if steps >= 2 * window else trace[:window]
    noise = half.std(0) / math.sqrt(window) if window > 1 else torch.zeros_like(last)
    converged = (last - prev.mean(0)).abs() < tol + 2 * noise
    diagnostics = {
        "initial_bound": initial,
        "final_bound": last,
        "improvement": last - initial,
        "converged": converged,
        "steps": steps,
    }
    return RefinedGuide(owner, averaged, x, diagnostics)
