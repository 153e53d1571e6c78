r"""The importance-weighted bound (IWAE; Burda et al. 2016) as a training loss for any Pyro
model/guide pair with a data plate, and its gradient: plain, or doubly reparameterized (DReG;
Tucker et al. 2019).

**The bound.** For datapoint ``i`` with ``K`` proposals ``z_ik ~ q(z | x_i)`` from the guide::

    log w_ik = log p(x_i, z_ik) - log q(z_ik | x_i)
    L_K(x_i) = log (1/K) sum_k w_ik = logsumexp_k log w_ik - log K        (<= log p(x_i))

``K = 1`` is estimator A of the ELBO (eq. 6); ``L_K`` increases with ``K`` toward
``log p(x_i)``.

**Minibatch loss** (``M`` of ``N`` rows, ``s = N / M``)::

    loss = -s sum_{i in batch} L_K(x_i) - G

where ``G`` holds everything outside the data plate, unscaled: the model's global factors
(the VAE's weight prior ``log p(theta)``) and, for global latents ``g`` drawn once per step
from the guide and shared by every particle, ``log p(g) - log q(g)``. Its expectation is
``E_q(g)[log p(g) - log q(g) + sum_{i=1}^N L_K(x_i | g) + log p(theta)]``, a lower bound on
``log p(X) + log p(theta)`` (an ELBO over the globals, an IWAE bound for each datapoint).
Unlike Pyro's ``RenyiELBO`` (pyro-ppl/pyro #3104) the log-mean-exp is taken per datapoint,
inside the data plate, not over the whole minibatch.

**Particles as rows.** The ``K`` particles are drawn by running the user's programs once on
``K`` stacked copies of the minibatch (:func:`~pyro_aevb.poutine.replicate_rows`, row
``k M + i`` is ``x_i``): an ordinary bigger batch, so any user code that works on a batch
works. The programs run *unbound* (no ``num_data``, no
:class:`~pyro_aevb.poutine.DataPlateScale`) under
:class:`~pyro_aevb.poutine.DataPlateRows`, every term is reduced to one number per row of
the plate, and ``s`` is applied once, here. A site's own scale (``poutine.scale``, a nested
subsampled plate) weights its term as in ``Trace_ELBO``; a scale the data plate itself would
apply (``pyro.plate(name, N, subsample=...)``) is divided out, so it is never applied twice.

**Gradients.** With normalised weights ``v_ik = w_ik / sum_k' w_ik'`` (softmax over ``k``)
and reparameterised draws ``z_ik = z(eps_ik, phi)``, the plain gradient is that of the loss
(``sum_k v_ik grad log w_ik``, total derivatives). Its encoder part carries the score term
``-sum_k v_ik d log q_phi(z_ik) / d phi`` (at fixed ``z``), whose variance does not shrink
with ``K``. DReG replaces it, without bias, by a second path term (Tucker et al. 2019, eq. 7)::

    grad_phi L_K  =  E[ sum_k v_ik^2 (d log w_ik / d z_ik) (d z_ik / d phi) ]

where ``d log w / d z`` is the partial derivative at fixed ``phi``; the model's own
parameters keep ``sum_k v_ik grad_theta log p(x_i, z_ik)``. A parameter used by both
programs gets both parts.

**DReG for any guide, without detaching a distribution.** Pyro distributions have no
``.detach()`` (pyro-ppl/pyro #2598), and lazily parameterised transforms (flows) would read
their parameters at ``log_prob`` time anyway. So the partial derivative at fixed ``phi`` is
taken as a derivative with respect to *leaves*: every local latent value ``z`` is copied into
a detached leaf ``u`` (same numbers), the guide and the model are replayed on the leaves, and

1. ``g_u = d/du [ -s sum_ik stop(v_ik^2) log w_ik(u) ]`` with :func:`torch.autograd.grad`
   restricted to the leaves: no parameter is differentiated, so it is exactly the partial
   derivative, whatever the distribution (the replayed guide also gives the dependence of a
   later site's distribution on an earlier latent, for hierarchical guides);
2. one backward pass of ``-s sum_ik stop(v_ik) log p(x_i, u_ik) - G`` into the parameters
   (the model's direct gradient; the guide's ``log q`` at the leaves never reaches them)
   together with ``z.backward(g_u)``, which carries ``g_u`` through the reparameterisation
   ``z(eps, phi)`` to the encoder (and, for a local guide that depends on a global ``g``, to
   ``g``'s parameters).

The loss value is the same with and without DReG; with ``K = 1`` DReG is the "sticking the
landing" gradient of the ELBO (Roeder et al. 2017). The guide must be deterministic given
``x`` and its latents (replaying it must give the same ``q``: no dropout in training mode).
For a transformed distribution (a normalising flow) ``log q`` at the leaves goes through the
flow's inverse, which the partial derivative needs by definition: one pass for coupling and
masked-autoregressive flows, one pass per dimension for an inverse autoregressive flow.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask

from ..poutine import DataPlateRows, plate_frame, replicate_rows, sample_sites, sum_to_plate
from ..poutine.params import buffer_values, modules_run, restore_buffers
from .per_datapoint import check_per_datapoint

__all__ = ["IWAETerms", "run_stacked", "trace_terms", "iwae_loss_and_backward"]


class IWAETerms:
    """The pieces of the minibatch IWAE loss from one run on ``K`` stacked copies.

    Attributes
    ----------
    log_p, log_q : torch.Tensor
        ``(K, M)``: ``log p(x_i, z_ik)`` and ``log q(z_ik | x_i)`` per particle and row (the
        per-datapoint terms only, inside the data plate).
    global_term : torch.Tensor
        Scalar ``G``: the model's terms outside the data plate minus the guide's.
    leaves, paths : list of torch.Tensor or None
        For DReG: the detached leaves the terms were evaluated at, and the reparameterised
        values they copy (with the graph to the guide's parameters), site by site.
    buffers : list or None
        For DReG: the modules' buffers as the guide's first run left them
        (:func:`~pyro_aevb.poutine.params.buffer_values`), put back after the backward pass.
    """

    def __init__(self, log_p, log_q, global_term, leaves=None, paths=None, buffers=None):
        self.log_p, self.log_q, self.global_term = log_p, log_q, global_term
        self.leaves, self.paths = leaves, paths
        self.buffers = buffers

    @property
    def log_w(self) -> torch.Tensor:
        """``(K, M)`` log importance weights."""
        return self.log_p - self.log_q


def _plate_own_scale(frame) -> float:
    """The ``N / M`` a subsampled data plate applies itself (1 for a plate over the rows)."""
    if frame.full_size is None or not frame.size:
        return 1.0
    return frame.full_size / frame.size


def trace_terms(model_trace, guide_trace, plate_name: str, rows: int):
    """``(log_p (rows,), log_q (rows,), global_term)`` from a guide trace and the model
    replayed on it, with the data plate over ``rows`` rows (see the module docstring for the
    scales)."""
    per_row = {}
    global_term = 0.0
    for key, trace in (("p", model_trace), ("q", guide_trace)):
        total = None
        for _, site in sample_sites(trace):
            log_prob = site["fn"].log_prob(site["value"])
            frame = plate_frame(site, plate_name)
            if frame is None:
                term = scale_and_mask(log_prob, site["scale"], site["mask"]).sum()
                global_term = global_term + term if key == "p" else global_term - term
                continue
            scale = site["scale"]
            own = _plate_own_scale(frame)
            if own != 1.0:
                scale = scale / own
            if not (isinstance(scale, int | float) and scale == 1.0):
                log_prob = log_prob * scale
            row = sum_to_plate(log_prob, site, plate_name)
            total = row if total is None else total + row
        if total is None:
            total = torch.zeros(())
        what = "the model's log p(x, z)" if key == "p" else "the guide's log q(z | x)"
        per_row[key] = check_per_datapoint(total.reshape(-1), rows, what)
    if not torch.is_tensor(global_term):
        global_term = per_row["p"].new_zeros(())
    return per_row["p"], per_row["q"], global_term


def _local_latent_names(guide_trace, plate_name: str) -> list[str]:
    """The guide's latent sites inside the data plate, in trace order."""
    return [
        name
        for name, site in sample_sites(guide_trace)
        if not site["is_observed"] and plate_frame(site, plate_name) is not None
    ]


def run_stacked(
    model: Callable, guide: Callable, x: torch.Tensor, num_particles: int, plate_name: str, dreg
) -> IWAETerms:
    """Run ``guide`` and ``model`` (unbound programs, called as ``fn(x)``) once on
    ``num_particles`` stacked copies of the rows of ``x`` and collect the IWAE terms.

    With ``dreg`` the local latents are copied into detached leaves and both programs are
    replayed on them (see the module docstring); the guide's first run only draws the values.
    """
    x_rep = replicate_rows(x, num_particles)
    rows = x_rep.shape[0]
    with (
        DataPlateRows(plate_name, rows),
        modules_run() if dreg else contextlib.nullcontext() as ran,
    ):
        guide_trace = poutine.trace(guide).get_trace(x_rep)
    leaves = paths = drawn_buffers = None
    if dreg:
        # the guide runs twice: its buffers (BatchNorm statistics) as the first run left them
        # are put back after the backward pass, so a step updates them once, as stock Pyro's
        drawn_buffers = buffer_values(ran)
        values = guide_trace.copy()
        leaves, paths = [], []
        for name in _local_latent_names(guide_trace, plate_name):
            site = guide_trace.nodes[name]
            leaf = site["value"].detach().requires_grad_()
            values.nodes[name] = {**site, "value": leaf}
            leaves.append(leaf)
            paths.append(site["value"])
        with DataPlateRows(plate_name, rows):
            guide_trace = poutine.trace(poutine.replay(guide, trace=values)).get_trace(x_rep)
    with DataPlateRows(plate_name, rows):
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x_rep)
    log_p, log_q, global_term = trace_terms(model_trace, guide_trace, plate_name, rows)
    shape = (num_particles, x.shape[0])
    return IWAETerms(
        log_p.reshape(shape), log_q.reshape(shape), global_term, leaves, paths, drawn_buffers
    )


def iwae_loss_and_backward(
    terms: IWAETerms, scale: float, params: Sequence[torch.Tensor], dreg: bool
) -> torch.Tensor:
    """The minibatch loss ``-s sum_i L_K(x_i) - G``; its gradient (plain or DReG) is
    accumulated into ``p.grad`` for every tensor in ``params``.

    Returns the loss as a detached scalar. If a log weight or ``G`` is not finite (NaN, or an
    infinite weight that would give NaN gradients), nothing is differentiated and the
    returned loss is NaN, so that the trainer stops before an update. The buffers the terms
    hold (:attr:`IWAETerms.buffers`) are put back afterwards.
    """
    try:
        return _loss_and_backward(terms, scale, params, dreg)
    finally:
        if terms.buffers:
            restore_buffers(terms.buffers)


def _loss_and_backward(terms: IWAETerms, scale: float, params, dreg: bool) -> torch.Tensor:
    log_w = terms.log_w
    num_particles = log_w.shape[0]
    bound_rows = torch.logsumexp(log_w, dim=0) - math.log(num_particles)
    loss = -scale * bound_rows.sum() - terms.global_term
    if not (bool(torch.isfinite(log_w).all()) and bool(torch.isfinite(terms.global_term))):
        return torch.full_like(loss, math.nan).detach()
    params = [p for p in params if p.requires_grad]  # a frozen one gets no gradient
    if not params:
        return loss.detach()
    if not dreg:
        if loss.requires_grad:
            torch.autograd.backward(loss, inputs=params)
        return loss.detach()
    if terms.leaves is None:
        raise ValueError("DReG needs the terms evaluated at detached leaves (dreg=True)")
    v = torch.softmax(log_w.detach(), dim=0)  # normalised weights, (K, M)
    path_loss = -scale * (v * v * log_w).sum()
    outputs, grads = [], []
    if terms.leaves and path_loss.requires_grad:
        # partial derivatives at fixed parameters: only the leaves are differentiated
        leaf_grads = torch.autograd.grad(
            path_loss, terms.leaves, retain_graph=True, allow_unused=True
        )
        for path, grad in zip(terms.paths, leaf_grads, strict=True):
            if grad is not None and path.requires_grad:
                outputs.append(path)
                grads.append(grad)
    direct_loss = -scale * (v * terms.log_p).sum() - terms.global_term
    if direct_loss.requires_grad:
        outputs.append(direct_loss)
        grads.append(None)
    if outputs:
        torch.autograd.backward(outputs, grads, inputs=params)
    return loss.detach()
