r"""Marginal likelihoods of a large test set in independently seeded blocks, split across ranks.

:func:`~pyro_aevb.evaluate.log_marginal` with ``block_size=b`` cuts the ``B`` rows into blocks
of ``b`` consecutive rows (the last may be shorter) and estimates block ``k`` on its own, as one
call of the estimator on those rows with the seed :func:`block_seed` ``(seed, k)`` (its guide
draws, HMC momenta and accept/reject draws all follow from that seed and those rows). A
block's estimates therefore do not depend on which process computes it, nor on how many
processes share the work:

* in one process the blocks run one after the other;
* under ``torch.distributed`` (e.g. ``torchrun --nproc-per-node=P``) rank ``r`` computes a
  contiguous range of blocks (:func:`~pyro_aevb.train.distributed.shard_bounds`), and every
  rank receives every block's per-datapoint results (``all_gather_object``), put back in row
  order.

So a run over ``P`` ranks returns the same per-datapoint estimates, standard errors and
per-datapoint diagnostics as one process with the same ``seed`` and ``block_size`` (the same
arithmetic on the same rows; bit for bit on the same hardware and thread count). The merged
result is a :class:`~pyro_aevb.evaluate.result.LogMarginalResult` over all ``B`` rows, whose
:meth:`~pyro_aevb.evaluate.result.LogMarginalResult.mean` and
:meth:`~pyro_aevb.evaluate.result.LogMarginalResult.mean_stderr` are computed from all the
per-datapoint values, hence exactly those of one process (:func:`merge_means` combines block
summaries into the same numbers without them).

Without ``block_size`` (and in one process) the estimate is one call on all rows seeded with
``seed``, as before; a sharded run needs ``block_size`` so that its result is defined
independently of the number of ranks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch

from ..train.distributed import (
    all_gather_objects,
    derive_seed,
    resolve_distributed,
    shard_bounds,
    world,
)
from ..validation import check_positive_int
from .result import LogMarginalResult, unreliable_collected, warn_unreliable_merged

__all__ = ["block_seed", "block_bounds", "estimate_in_blocks", "merge_blocks", "merge_means"]

logger = logging.getLogger("pyro_aevb")

# Keeps the blocks' streams apart from other streams derived from the same seed.
_EVAL_STREAM = 0x6576


def block_seed(seed: int, block: int) -> int:
    """The seed of block ``block`` of an evaluation seeded with ``seed``."""
    return derive_seed(seed, _EVAL_STREAM, block)


def block_bounds(num_rows: int, block_size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of the blocks of ``block_size`` consecutive rows."""
    return [(s, min(s + block_size, num_rows)) for s in range(0, num_rows, block_size)]


#: Options that hold one entry per datapoint (BDMC's exact posterior samples ``z``): cut to
#: each block's rows. Any other option (a grid of KDE bandwidths that happens to have as many
#: entries as there are rows) is the same for every block.
PER_DATAPOINT_OPTIONS = ("z",)


def _slice_options(options: dict, start: int, stop: int, num_rows: int) -> dict:
    """Options for the rows ``start:stop``: the per-datapoint tensors of
    :data:`PER_DATAPOINT_OPTIONS` (leading dimension ``num_rows``, or a dict of them) are cut
    to the block."""

    def cut(value):
        if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == num_rows:
            return value[start:stop]
        if isinstance(value, dict):
            return {k: cut(v) for k, v in value.items()}
        return value

    return {k: cut(v) if k in PER_DATAPOINT_OPTIONS else v for k, v in options.items()}


def _to_cpu(result: LogMarginalResult) -> LogMarginalResult:
    """The result with its tensors on the CPU (to travel between ranks and be merged)."""

    def cpu(v):
        return v.detach().cpu() if isinstance(v, torch.Tensor) else v

    result.estimate, result.stderr = cpu(result.estimate), cpu(result.stderr)
    result.upper, result.upper_stderr = cpu(result.upper), cpu(result.upper_stderr)
    result.diagnostics = {k: cpu(v) for k, v in result.diagnostics.items()}
    return result


def _same(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and bool(torch.equal(a, b))
        )
    try:
        return bool(a == b)
    except Exception:  # objects without a usable ==
        return a is b


def _merge_diagnostics(parts: list[dict], sizes: list[int]) -> dict:
    """Per-datapoint tensors (leading dimension = the block's rows) are concatenated, wall
    times (keys ending in ``seconds``) summed, values all blocks share kept once, and any
    other value kept as a list over the blocks."""
    keys: list[str] = []
    for d in parts:
        keys.extend(k for k in d if k not in keys)
    out = {}
    for key in keys:
        values = [d.get(key) for d in parts]
        if all(
            isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n
            for v, n in zip(values, sizes, strict=True)
        ):
            out[key] = torch.cat(values)
        elif key.endswith("seconds") and all(isinstance(v, int | float) for v in values):
            out[key] = float(sum(values))
        elif all(_same(values[0], v) for v in values[1:]):
            out[key] = values[0]
        else:
            out[key] = values
    return out


def merge_blocks(
    blocks: list[LogMarginalResult], *, seed: int, block_size: int, seconds: float
) -> LogMarginalResult:
    """One result over all rows from the blocks' results, in row order."""
    sizes = [r.batch_size for r in blocks]

    def cat(name):
        values = [getattr(r, name) for r in blocks]
        return None if values[0] is None else torch.cat(values)

    settings = dict(blocks[0].settings)
    settings.update({"seed": seed, "block_size": block_size, "num_blocks": len(blocks)})
    rest = [{k: v for k, v in r.settings.items() if k != "seed"} for r in blocks]
    if not all(_same(rest[0], s) for s in rest[1:]):
        # e.g. globals conditioned on a point estimate that differs between blocks
        settings["block_settings"] = rest
    return LogMarginalResult(
        estimate=cat("estimate"),
        stderr=cat("stderr"),
        method=blocks[0].method,
        settings=settings,
        diagnostics=_merge_diagnostics([r.diagnostics for r in blocks], sizes),
        seconds=seconds,
        upper=cat("upper"),
        upper_stderr=cat("upper_stderr"),
    )


def estimate_in_blocks(
    estimate: Callable[[torch.Tensor, int, dict], LogMarginalResult],
    x: torch.Tensor,
    options: dict,
    *,
    seed: int,
    block_size: int | None,
    distributed: bool | None = None,
    kept: dict | None = None,
    on_block: Callable | None = None,
) -> LogMarginalResult:
    """Run ``estimate(x_block, block_seed, options_block)`` on every block this rank owns and
    merge all ranks' blocks (see the module docstring). Every rank returns the whole result.

    ``kept``: ``{block: (result, flagged)}`` of blocks finished earlier (not estimated again;
    :mod:`~pyro_aevb.evaluate.kept_blocks`); ``on_block(block, result, flagged)`` is called
    after each block estimated here, and logged at INFO level."""
    use_group = resolve_distributed(distributed)
    if block_size is None:
        if use_group:
            raise ValueError(
                f"log_marginal over {world()[1]} ranks needs block_size= (rows per "
                f"independently seeded block), so that the result does not depend on the number "
                f"of ranks; one process with the same block_size gives the same numbers"
            )
        block_size = x.shape[0]
    block_size = check_positive_int(block_size, "block_size")
    rank, size = world() if use_group else (0, 1)
    t_start = time.perf_counter()
    blocks = block_bounds(x.shape[0], block_size)
    first, last = shard_bounds(len(blocks), size)[rank]
    local = []
    for k in range(first, last):
        if kept and k in kept:
            local.append((k, *kept[k]))
            continue
        start, stop = blocks[k]
        # the blocks' warnings about unreliable rows are held back and given once, over all
        # rows, with each row's index in x (a block's own would count from its first row)
        with unreliable_collected() as flagged:
            part = estimate(
                x[start:stop],
                block_seed(seed, k),
                _slice_options(options, start, stop, x.shape[0]),
            )
        local.append((k, _to_cpu(part), flagged))
        if len(blocks) > 1:
            logger.info(
                "block %d of %d (rows %d-%d) done in %.1f s",
                k + 1, len(blocks), start, stop - 1, part.seconds,
            )  # fmt: skip
        if on_block is not None:
            on_block(k, local[-1][1], flagged)
    if size > 1:
        local = [item for items in all_gather_objects(local) for item in items]
    local.sort(key=lambda item: item[0])
    if rank == 0:
        warn_unreliable_merged([(k, f) for k, _, f in local], [b - a for a, b in blocks])
    return merge_blocks(
        [r for _, r, _ in local],
        seed=seed,
        block_size=block_size,
        seconds=time.perf_counter() - t_start,
    )


def merge_means(parts: list[tuple[int, float, float]]) -> tuple[float, float]:
    """``(mean, mean_stderr)`` over all datapoints from per-part ``(n, mean, mean_stderr)``.

    With independent per-datapoint errors, ``mean = sum_p n_p mean_p / n`` and
    ``stderr = sqrt(sum_p (n_p stderr_p)^2) / n`` -- what
    :meth:`LogMarginalResult.mean` / :meth:`~LogMarginalResult.mean_stderr` give on the
    concatenated per-datapoint values (up to rounding).
    """
    n = sum(p[0] for p in parts)
    if n == 0:
        raise ValueError("merge_means needs at least one datapoint")
    mean = math.fsum(k * m for k, m, _ in parts) / n
    stderr = math.sqrt(math.fsum((k * s) ** 2 for k, _, s in parts)) / n
    return mean, stderr
