"""Input validation at the public boundary, with messages that name the argument.

Every check raises ``ValueError`` (or ``TypeError`` for a wrong type) whose message says which
argument was wrong, what was expected and what was received, so a user can fix the call
without reading our source.
"""

from __future__ import annotations

import contextlib
import math
import threading
from numbers import Integral, Real

import torch

__all__ = [
    "check_data",
    "data_to_dtype",
    "value_checks_skipped",
    "event_shape_of",
    "check_positive_int",
    "check_positive_float",
    "check_bool",
    "check_seed",
    "check_choice",
    "check_num_data",
]


_STATE = threading.local()


@contextlib.contextmanager
def value_checks_skipped():
    """Within this context :func:`check_data` checks types and shapes but not values
    (finiteness, range).

    For code that records a program's tensor arithmetic once (:mod:`pyro_aevb.poutine.compile`)
    on data that was checked before: reading values would be data-dependent Python control
    flow in the recording, and the recorded program would never repeat the check anyway.
    """
    before = getattr(_STATE, "skip_values", False)
    _STATE.skip_values = True
    try:
        yield
    finally:
        _STATE.skip_values = before


def event_shape_of(event_shape) -> tuple[int, ...] | None:
    """``None``, an int ``D`` (flat rows) or a tuple: the expected shape of one datapoint."""
    if event_shape is None:
        return None
    return (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)


def check_data(
    x,
    name: str = "x",
    event_shape=None,
    unit_interval: bool = False,
    allow_empty: bool = False,
) -> torch.Tensor:
    """Check a batch of datapoints and return it.

    Parameters
    ----------
    x : torch.Tensor
        Shape ``(batch, *event_shape)``: one row per datapoint, of any shape (flat vectors
        ``(batch, D)``, images ``(batch, C, H, W)``); floating dtype; finite values.
    name : str
        Argument name used in error messages.
    event_shape : int or tuple of int, optional
        Required shape of one datapoint (an int ``D`` means ``(D,)``).
    unit_interval : bool
        Require every value to lie in ``[0, 1]`` (Bernoulli decoders).
    allow_empty : bool
        Accept ``batch == 0``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape (batch, *event_shape), got {type(x).__name__}"
        )
    if not (x.is_floating_point()):
        raise TypeError(
            f"{name} must have a floating dtype (e.g. torch.float32), got {x.dtype}; "
            f"convert uint8 images with x.float() / 256 as the paper does"
        )
    if x.dim() < 1:
        raise ValueError(
            f"{name} must have a batch dimension, shape (batch, *event_shape), got a scalar"
        )
    expected = event_shape_of(event_shape)
    if expected is not None and tuple(x.shape[1:]) != expected:
        hint = ""
        if math.prod(x.shape[1:]) == math.prod(expected):
            hint = f"; reshape it with {name}.reshape(len({name}), *{expected})"
        raise ValueError(
            f"{name} must have shape (batch, *{expected}) (one datapoint of shape {expected}), "
            f"got shape {tuple(x.shape)}{hint}"
        )
    if x.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); need at least one row")
    if x.numel() and not getattr(_STATE, "skip_values", False):
        # A finite sum proves every entry finite (NaN and inf propagate); only a non-finite
        # sum (which may also be an overflow) needs the elementwise pass.
        if not bool(torch.isfinite(x.sum())):
            finite = torch.isfinite(x)
            if not bool(finite.all()):
                bad = (~finite).nonzero()[0].tolist()
                raise ValueError(
                    f"{name} contains non-finite values (NaN or inf), first at index {tuple(bad)}"
                )
        if unit_interval:
            lo, hi = (float(v) for v in torch.aminmax(x))
            if lo < 0.0 or hi > 1.0:
                raise ValueError(
                    f"{name} must lie in [0, 1] for a Bernoulli decoder, got values in "
                    f"[{lo:g}, {hi:g}]; scale pixels with x / 256 or use a Gaussian decoder"
                )
    return x


#: The largest count torch can represent (int64): sizes, budgets, particles beyond it overflow.
MAX_COUNT = 2**63 - 1


def data_to_dtype(x: torch.Tensor, dtype: torch.dtype | None, name: str = "x") -> torch.Tensor:
    """``x`` converted to ``dtype``; values a narrower floating dtype cannot hold are an error
    naming the first of them (``check_data`` passed them as finite: the conversion would make
    them ``inf``, and the model's per-row results ``-inf``)."""
    if dtype is None or x.dtype == dtype:
        return x
    if (
        x.is_floating_point()
        and dtype.is_floating_point
        and x.numel()
        and torch.finfo(x.dtype).max > torch.finfo(dtype).max
    ):
        limit = torch.finfo(dtype).max
        lo, hi = (float(v) for v in torch.aminmax(x))
        if lo < -limit or hi > limit:
            where = tuple((x.abs() > limit).nonzero()[0].tolist())
            raise ValueError(
                f"{name} holds values beyond the range of {str(dtype).removeprefix('torch.')} "
                f"(|value| > {limit:.3g}), the model's dtype, first at index {where}: "
                f"{float(x[where]):g}; rescale the data, or run the model in "
                f"{str(x.dtype).removeprefix('torch.')} (dtype=...)"
            )
    return x.to(dtype)


def check_positive_int(value, name: str, minimum: int = 1, maximum: int | None = MAX_COUNT) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an int <= {maximum}, got {value}")
    return int(value)


#: The largest seed accepted: torch's generators take seeds below 2^64, and the library
#: derives further seeds by adding small offsets to it.
MAX_SEED = 2**63 - 1


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` must be an int in ``[0, MAX_SEED]`` (``torch.manual_seed``'s range, with room
    for the offsets derived seeds add)."""
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        raise TypeError(f"{name} must be an int in [0, 2**63 - 1], got {seed!r}")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name} must be an int in [0, 2**63 - 1], got {seed}")
    return int(seed)


def check_positive_float(value, name: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a positive number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")
    return value


def check_bool(value, name: str) -> bool:
    """``value`` if it is ``True`` or ``False`` (a string such as ``"maybe"`` from a command
    line, or a number, is an error naming ``name``)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def check_num_data(num_data, batch_size: int) -> int:
    """``num_data`` (N of eq. 8) must be an int no smaller than the minibatch size M."""
    if num_data is None:
        return batch_size
    num_data = check_positive_int(num_data, "num_data")
    if num_data < batch_size:
        raise ValueError(
            f"num_data (the full data set size N) must be >= the minibatch size "
            f"{batch_size}, got {num_data}"
        )
    return num_data
