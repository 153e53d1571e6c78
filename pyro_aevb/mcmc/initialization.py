r"""Starting points for per-datapoint chains: sampling-importance-resampling (SIR).

A chain started at one draw from the prior (or a poor encoder) can settle in a minor mode of
a sharp, multimodal posterior and never leave it within a short run; the Appendix-D estimate
then measures that mode's mass only, far below ``log p(x_i)``. SIR draws ``K`` particles
``u_i^(k)`` from a proposal ``r`` and keeps one with probability proportional to its
importance weight::

    w_i^(k) = p(x_i, u_i^(k)) / r(u_i^(k) | x_i)      (prior: w = p(x_i | z_i^(k)))

so the start is distributed as the self-normalised importance approximation of the
posterior, which puts chains in modes in proportion to their mass as ``K`` grows (``K = 1``
is a plain draw from the proposal). Particles are drawn in chunks and the pick is streamed
with the Gumbel-max trick (``argmax_k log w^(k) + G^(k)`` is a categorical draw with
probabilities ``softmax(log w)``), so memory does not grow with ``K``.
"""

from __future__ import annotations

import torch

from ..validation import check_positive_int
from .potential import PerDatapointPotential

__all__ = ["importance_resampled_init"]

#: Rows (particles x chains) evaluated at once when ``chunk_size`` is not given.
_MAX_ROWS = 1 << 16


@torch.no_grad()
def importance_resampled_init(
    potential: PerDatapointPotential,
    num_particles: int,
    *,
    proposal: str | None = None,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One SIR draw per chain of ``potential``: positions ``(C * B, D)``, unconstrained.

    Parameters
    ----------
    potential : PerDatapointPotential
        The target: its model, observations, chains per datapoint and (optional) guide.
    num_particles : int
        K, proposals per chain.
    proposal : {"guide", "prior"}, optional
        Where the particles come from; default the guide if ``potential`` has one, else the
        model's prior.
    chunk_size : int, optional
        Particles evaluated per model call (default: as many as keep one call under
        ``2**16`` rows).
    generator : torch.Generator, optional
        Randomness of the resampling step (the particles use Pyro's global RNG, as
        :meth:`PerDatapointPotential.sample_prior` does).
    """
    num_particles = check_positive_int(num_particles, "num_particles")
    if proposal is None:
        proposal = "guide" if potential.guide is not None else "prior"
    if proposal not in ("guide", "prior"):
        raise ValueError(f"proposal must be 'guide' or 'prior', got {proposal!r}")
    if proposal == "guide" and potential.guide is None:
        raise ValueError("proposal='guide' needs a potential built with guide=")
    rows = potential.num_rows
    if chunk_size is None:
        chunk_size = max(1, _MAX_ROWS // rows)
    chunk_size = check_positive_int(chunk_size, "chunk_size")

    device = potential.x.device
    best_key = torch.full((rows,), -torch.inf, dtype=potential.dtype, device=device)
    best = torch.zeros(rows, potential.dim, dtype=potential.dtype, device=device)
    done = 0
    while done < num_particles:
        k = min(chunk_size, num_particles - done)
        # k particles per chain as one model call: k * C chains per datapoint, chain-major,
        # so row j * (C * B) + r is particle j of chain r
        chunk = potential.with_chains(k * potential.num_chains)
        if proposal == "guide":
            position, log_q = chunk.sample_guide()
            log_w = chunk.log_joint(position) - log_q
        else:
            position = chunk.sample_prior()
            log_w = chunk.log_joint_parts(position)[1]
        log_w = torch.nan_to_num(log_w, nan=-torch.inf).reshape(k, rows)
        uniform = torch.rand(k, rows, dtype=log_w.dtype, device=device, generator=generator)
        key = log_w - torch.log(-torch.log(uniform.clamp_min(torch.finfo(log_w.dtype).tiny)))
        chunk_key, pick = key.max(0)
        better = chunk_key > best_key
        picked = position.reshape(k, rows, -1)[pick, torch.arange(rows, device=device)]
        best = torch.where(better[:, None], picked, best)
        best_key = torch.where(better, chunk_key, best_key)
        done += k
    if not torch.isfinite(best_key).all():
        bad = (~torch.isfinite(best_key)).nonzero().flatten()[:10].tolist()
        raise ValueError(
            f"no particle with a finite importance weight for chain rows {bad}: the model's "
            f"log-density is -inf or NaN wherever the {proposal} puts its mass"
        )
    return best
