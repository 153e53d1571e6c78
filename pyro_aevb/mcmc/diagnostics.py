"""Per-datapoint MCMC diagnostics: ArviZ's bulk ESS, mean ESS and rank R-hat, vectorised.

ArviZ defines the numbers: :func:`ess_rhat` and :func:`ess_mean` compute exactly what
``az.ess(..., method="bulk")``, ``az.ess(..., method="mean")`` and ``az.rhat(...)`` (its
default ``method="rank"``) compute (ArviZ 0.23.4, ``arviz/stats/diagnostics.py``; Vehtari
et al. 2021, "Rank-normalization, folding, and localization: An improved R-hat"), including
their special cases (NaN, constant series, fewer than 4 draws, odd draw counts, ties). ArviZ
loops in Python over every series; here the same algorithm runs in float64 torch over all
series at once (loops only over lags), which is what makes it fast. The tests
(``tests/mcmc/test_diagnostics.py``) compare against ArviZ itself.

Notation: ``C`` chains of ``S`` draws. Every chain is split into halves of ``n = S // 2``
draws (for odd ``S`` the middle draw is dropped), giving ``M = 2C`` chains of ``n`` draws.

* ESS (``_ess``): ``ESS = M n / tau`` with ``tau = -1 + 2 sum_{t=0}^{K} rho_t (+ rho_{K+1})``,
  where ``rho_t = 1 - (W - mean_m acov_m(t)) / var_plus`` from the FFT autocovariances of the
  chains, ``W = mean_m acov_m(0) n / (n - 1)``, ``var_plus = W (n - 1) / n + Var_m(mean_m)``,
  truncated by Geyer's initial positive sequence (pairs ``rho_{2k} + rho_{2k+1} > 0``) made
  monotone (Geyer's initial monotone sequence), with ArviZ's "improve estimation" step (a
  positive last even ``rho`` is kept) and ``tau >= 1 / log10(M n)``.
* Bulk ESS: the ESS of the rank-normalised split chains: average ranks ``r`` (ties share
  their average rank) pooled over all ``M n`` values, ``z = Phi^{-1}((r - 3/8) / (M n + 1/4))``
  (Blom).
* Mean ESS: the ESS of the split chains themselves.
* R-hat: ``max(R(z(x)), R(z(|x - median(x)|)))`` on the split chains, with
  ``R = sqrt((B / W + n - 1) / n)``, ``B = n Var_m(chain means)``, ``W = mean_m Var(chain m)``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["ess_rhat", "ess_mean"]

_RESOLUTION = 1e-15  # np.finfo(float).resolution, ArviZ's "constant series" threshold
_BLOM = 3 / 8
#: Draws per block of series (float64: 32 MB; the FFT and sort work arrays are a few times it).
_CHUNK_VALUES = 1 << 22


def ess_rhat(draws: torch.Tensor, rhat: bool = True) -> dict[str, torch.Tensor]:
    """ArviZ bulk ESS (min over coordinates) and rank R-hat (max) per datapoint.

    ``draws``: ``(C, S, B, D)``. Returns ``{"ess_bulk": (B,), "r_hat": (B,)}`` (float64, CPU);
    no entries for fewer than 4 draws and no R-hat for one chain (or ``rhat=False``). Per
    coordinate the values are ArviZ's ``az.ess(draws, method="bulk")`` and ``az.rhat(draws)``
    of the draws in float64 (see the module docstring); a coordinate with a NaN draw gives NaN
    and is ignored by the reduction unless every coordinate of the datapoint is NaN.
    """
    c, s = draws.shape[:2]
    out = {}
    if s < 4:
        return out
    with_rhat = rhat and c > 1
    ess, r_hat = [], []
    for x in _series_chunks(draws):  # (N, C, S) each
        split = _split_chains(x)
        invalid = torch.isnan(x).flatten(1).any(-1)
        split = torch.where(invalid[:, None, None], 0.0, split)
        sorted_vals, order = split.flatten(1).sort(-1)
        z = _z_scale(sorted_vals, order).view_as(split)
        ess.append(_ess(z).masked_fill(invalid, float("nan")))
        if with_rhat:
            r_hat.append(_rhat_rank(split, sorted_vals, z).masked_fill(invalid, float("nan")))
    trailing = draws.shape[2:]
    out["ess_bulk"] = _reduce(torch.cat(ess).reshape(trailing), torch.amin)
    if with_rhat:
        out["r_hat"] = _reduce(torch.cat(r_hat).reshape(trailing), torch.amax)
    return out


def ess_mean(draws: torch.Tensor) -> torch.Tensor:
    """ArviZ's ESS for the mean (``az.ess(draws, method="mean")``) of every series.

    ``draws``: ``(C, S, *T)``, ``C`` chains of ``S`` draws of the series indexed by ``T`` (e.g.
    ``(C, S, B)``). Returns a float64 CPU tensor of shape ``T``: the ESS ``M n / tau`` of the
    split chains (module docstring) without rank normalisation; NaN for a series with a NaN
    draw (or an infinite one) and for fewer than 4 draws, ``M n`` for a constant series.
    """
    c, s = draws.shape[:2]
    if s < 4:
        return torch.full(draws.shape[2:], float("nan"), dtype=torch.float64)
    ess = []
    for x in _series_chunks(draws):
        invalid = torch.isnan(x).flatten(1).any(-1)
        split = torch.where(invalid[:, None, None], 0.0, _split_chains(x))
        ess.append(_ess(split).masked_fill(invalid, float("nan")))
    return torch.cat(ess).reshape(draws.shape[2:])


def _series_chunks(draws: torch.Tensor):
    """``(C, S, *T)`` -> float64 CPU ``(N_k, C, S)`` blocks of the ``N = prod(T)`` series,
    in order, each of at most :data:`_CHUNK_VALUES` values (the work arrays are a few times
    a block, so memory stays bounded however many series there are); one empty block for
    ``N = 0``."""
    c, s = draws.shape[:2]
    flat = draws.detach().reshape(c, s, math.prod(draws.shape[2:]))
    n = flat.shape[-1]
    step = max(1, _CHUNK_VALUES // max(1, c * s))
    for start in range(0, max(n, 1), step):
        block = flat[..., start : start + step].to("cpu", torch.float64)
        yield block.permute(2, 0, 1).contiguous()


def _split_chains(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, S)`` -> ``(N, 2C, S // 2)``: first halves, then last halves (ArviZ's order)."""
    s = x.shape[-1]
    half = s // 2
    return torch.cat([x[..., :half], x[..., s - half :]], dim=-2)


def _z_scale(sorted_vals: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Rank normalisation of each row, given the row sorted and the sorting permutation.

    ``z = ndtri((r - 3/8) / (K - 3/4 + 1))`` with ``r`` the 1-based average rank
    (``scipy.stats.rankdata(method="average")``) among the row's ``K`` values. A run of ties
    at sorted positions ``first..last`` (0-based) has ``r = (first + last) / 2 + 1``, one of
    the ``2K - 1`` half-integers, whose ``z`` is looked up in a table.
    """
    k = sorted_vals.shape[-1]
    pos = torch.arange(k).expand_as(sorted_vals)
    new = torch.ones_like(sorted_vals, dtype=torch.bool)
    new[:, 1:] = sorted_vals[:, 1:] != sorted_vals[:, :-1]  # a run of ties starts here
    first = torch.where(new, pos, 0).cummax(-1).values
    ends = torch.ones_like(new)
    ends[:, :-1] = new[:, 1:]  # a run ends here
    last = torch.where(ends, pos, k - 1).flip(-1).cummin(-1).values.flip(-1)
    ranks = torch.arange(2 * k - 1, dtype=torch.float64) / 2 + 1  # rank of first + last
    table = torch.special.ndtri((ranks - _BLOM) / (k - 2 * _BLOM + 1))
    return torch.empty_like(sorted_vals).scatter_(-1, order, table[first + last])


def _ess(x: torch.Tensor) -> torch.Tensor:
    """ArviZ's ``_ess`` of every row of ``(N, M, n)`` (``M`` chains of ``n`` draws): ``(N,)``.

    NaN-free input assumed (the callers mask NaN series).
    """
    num, m, n = x.shape
    size = float(m * n)
    if num == 0:
        return x.new_empty(0)
    span = x.amax((-2, -1)) - x.amin((-2, -1))
    constant = span < _RESOLUTION
    acov = _autocov(x)  # (N, M, n)
    mean_var = acov[..., 0].mean(-1) * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if m > 1:
        var_plus = var_plus + x.mean(-1).var(-1, correction=1)
    rho = 1.0 - (mean_var[:, None] - acov.mean(-2)) / var_plus[:, None]  # (N, n)

    # Geyer's initial positive sequence: pairs (t + 1, t + 2), t = 1, 3, ..., while t < n - 3
    # and the previous pair sum is positive; a pair is kept where its sum is >= 0
    rho_hat = torch.zeros_like(rho)
    rho_hat[:, 0] = 1.0
    rho_hat[:, 1] = rho[:, 1]
    even = torch.ones_like(var_plus)
    odd = rho[:, 1].clone()
    t_end = torch.ones_like(var_plus, dtype=torch.long)
    for t in range(1, n - 3, 2):
        active = (even + odd) > 0.0
        if not active.any():
            break
        even = torch.where(active, rho[:, t + 1], even)
        odd = torch.where(active, rho[:, t + 2], odd)
        keep = active & ((even + odd) >= 0)
        rho_hat[:, t + 1] = torch.where(keep, even, rho_hat[:, t + 1])
        rho_hat[:, t + 2] = torch.where(keep, odd, rho_hat[:, t + 2])
        t_end = t_end + 2 * active
    max_t = t_end - 2
    # improve estimation: keep a positive last even autocorrelation
    idx = (max_t + 1)[:, None]
    current = rho_hat.gather(-1, idx)[:, 0]
    rho_hat.scatter_(-1, idx, torch.where(even > 0, even, current)[:, None])
    # Geyer's initial monotone sequence, sequential in t
    for t in range(1, n - 2, 2):
        on = t <= max_t - 2
        if not on.any():
            break
        prev = rho_hat[:, t - 1] + rho_hat[:, t]
        fix = on & ((rho_hat[:, t + 1] + rho_hat[:, t + 2]) > prev)
        rho_hat[:, t + 1] = torch.where(fix, prev / 2.0, rho_hat[:, t + 1])
        rho_hat[:, t + 2] = torch.where(fix, rho_hat[:, t + 1], rho_hat[:, t + 2])

    lags = torch.arange(n)
    head = torch.where(lags <= max_t[:, None], rho_hat, 0.0).sum(-1)
    tail = rho_hat.gather(-1, idx)[:, 0]  # rho_hat[max_t + 1]
    tau = -1.0 + 2.0 * head + tail
    floor = 1.0 / math.log10(size)
    tau = torch.where(floor > tau, floor, tau)  # Python's max(tau, floor): NaN tau stays NaN
    ess = size / tau
    ess = ess.masked_fill(torch.isnan(rho_hat).any(-1), float("nan"))
    return torch.where(constant, size, ess)


def _autocov(x: torch.Tensor) -> torch.Tensor:
    """Autocovariances for every lag along the last axis (ArviZ's ``autocov``, via FFT)."""
    n = x.shape[-1]
    m = _next_fast_len(2 * n)
    xc = x - x.mean(-1, keepdim=True)
    f = torch.fft.rfft(xc, n=m, dim=-1)
    return torch.fft.irfft(f * f.conj(), n=m, dim=-1)[..., :n] / n


def _next_fast_len(target: int) -> int:
    """Smallest 5-smooth integer ``>= target`` (``scipy.fftpack.next_fast_len``)."""
    m = target
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def _rhat(z: torch.Tensor) -> torch.Tensor:
    """ArviZ's ``_rhat`` of every row of ``(N, M, n)``: ``sqrt((B / W + n - 1) / n)``."""
    if z.shape[0] == 0:
        return z.new_empty(0)
    n = z.shape[-1]
    between = n * z.mean(-1).var(-1, correction=1)
    within = z.var(-1, correction=1).mean(-1)
    return torch.sqrt((between / within + n - 1) / n)


def _rhat_rank(split: torch.Tensor, sorted_vals: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """ArviZ's ``_rhat_rank``: max of the split R-hat of the ranks and of the folded ranks.

    ``split``: ``(N, M, n)`` split chains (NaN-free), ``sorted_vals`` each series sorted,
    ``z`` the rank-normalised ``split``.
    """
    k = sorted_vals.shape[-1]
    if k % 2:
        median = sorted_vals[:, k // 2]
    else:
        median = (sorted_vals[:, k // 2 - 1] + sorted_vals[:, k // 2]) / 2
    folded = (split - median[:, None, None]).abs()
    # an infinite median gives NaN folded values, for which ArviZ's tail R-hat is NaN
    bad_fold = torch.isnan(folded).flatten(1).any(-1)
    folded = folded.masked_fill(torch.isnan(folded), 0.0)
    sorted_fold, order = folded.flatten(1).sort(-1)
    rhat_tail = _rhat(_z_scale(sorted_fold, order).view_as(folded))
    rhat_tail = rhat_tail.masked_fill(bad_fold, float("nan"))
    rhat_bulk = _rhat(z)
    return torch.where(rhat_tail > rhat_bulk, rhat_tail, rhat_bulk)  # Python's max(bulk, tail)


def _reduce(values: torch.Tensor, fn) -> torch.Tensor:
    """Reduce over the last axis ignoring NaN; NaN where every entry is NaN."""
    nan = torch.isnan(values)
    fill = float("inf") if fn is torch.amin else float("-inf")
    out = fn(values.masked_fill(nan, fill), dim=-1)
    return out.masked_fill(nan.all(-1), float("nan"))
