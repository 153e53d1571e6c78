r"""The minibatch contract (eq. 8): a program run on ``M`` rows stands for all ``N`` datapoints.

The paper's minibatch estimator is ``L(theta, phi; X) ~= (N / M) sum_{i in batch} L(theta,
phi; x_i)``. In Pyro the ``N / M`` comes from the data plate: ``pyro.plate("data", N,
subsample=...)`` scales every site inside it by ``N / M``. A program can learn ``N`` in one of
two ways, and :func:`bind_num_data` picks the one it supports:

* **its own ``num_data`` keyword** (e.g. :class:`pyro_aevb.models.VAE`): the program builds
  ``pyro.plate("data", num_data, subsample=...)`` itself; it is called as
  ``fn(x, num_data=N)``;
* **any other program**, e.g. Pyro's example VAE with ``pyro.plate("data", x.shape[0])``,
  runs unchanged under :class:`DataPlateScale`, which multiplies the scale of every site
  inside the data plate by ``N / M`` -- exactly what a subsampled plate of full size ``N``
  would do, and nothing outside the plate (a weight prior, a global latent) is scaled.

:func:`check_minibatch_trace` verifies on the first traced step that the data plate really
stands for ``N`` datapoints of which the ``M`` rows given are the subsample, and says what to
change if not.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

from pyro.poutine.messenger import Messenger

from .plates import ProgramContractError, plate_frame, require_plate, sample_sites

__all__ = [
    "DataPlateScale",
    "accepts_num_data",
    "bind_num_data",
    "check_minibatch_trace",
]


class DataPlateScale(Messenger):
    """Scale every sample site inside a *plain* data plate by ``num_data / M``.

    A plain plate is one over the rows given (``full_size == size == M``, as
    ``pyro.plate("data", len(x))`` makes); a plate that already declares its full size (a
    subsampled ``pyro.plate("data", N, subsample=...)``) is left alone, so a program can never
    be scaled twice.
    """

    def __init__(self, plate_name: str, num_data: int):
        super().__init__()
        self.plate_name = plate_name
        self.num_data = num_data

    def _process_message(self, msg) -> None:
        if msg["type"] != "sample":
            return
        # Plates opened inside the program sit above this messenger on Pyro's stack, so their
        # frames are already in the message when it reaches us.
        frame = plate_frame(msg, self.plate_name)
        if frame is not None and frame.full_size in (None, frame.size) and frame.size:
            msg["scale"] = msg["scale"] * (self.num_data / frame.size)


def accepts_num_data(fn: Callable) -> bool:
    """Whether ``fn`` has a parameter named ``num_data`` (the program scales itself), or says
    so in a ``takes_num_data`` attribute (a guide that passes its arguments to a model that
    takes it, as the amortized autoguides do)."""
    declared = getattr(fn, "takes_num_data", None)
    if isinstance(declared, bool):
        return declared
    try:
        return "num_data" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins, some C callables
        return False


def bind_num_data(fn: Callable, num_data: int, plate_name: str = "data") -> Callable:
    """``fn`` as a program on minibatches of a data set of ``num_data`` rows.

    Returns ``g`` with ``g(x, *args, **kwargs)`` running ``fn`` so that its data plate stands
    for ``num_data`` datapoints: ``fn(x, *args, num_data=num_data, **kwargs)`` if ``fn`` takes
    ``num_data``, else ``fn(x, *args, **kwargs)`` under :class:`DataPlateScale`.
    """
    if accepts_num_data(fn):
        bound = functools.partial(fn, num_data=num_data)
    else:

        def bound(*args, **kwargs):
            with DataPlateScale(plate_name, num_data):
                return fn(*args, **kwargs)

    bound.num_data = num_data
    bound.plate_name = plate_name
    return bound


def _per_datapoint_param(site, plate_name: str) -> bool:
    """A ``pyro.param`` inside the data plate with a dimension for the plate's rows.

    A network's weight registered by ``pyro.module`` (named ``module$$$weight``) is never
    one, wherever it is used: a ``PyroModule`` re-registers its plain submodules' weights on
    every attribute access, inside the plate too, and a weight's size may equal the
    minibatch's by chance."""
    if "$$$" in site["name"]:  # Pyro's module/parameter name divider
        return False
    frame = plate_frame(site, plate_name)
    if frame is None or frame.dim is None:
        return False
    value = site["value"]
    dim = frame.dim - (site["kwargs"].get("event_dim") or 0)
    return value.dim() >= -dim and value.shape[dim] == frame.size and frame.size > 1


def check_minibatch_trace(
    trace, plate_name: str, num_data: int, batch_size: int, what: str, scaled_by_us: bool
) -> None:
    """Check that ``trace`` (of a program bound by :func:`bind_num_data`, run on ``M =
    batch_size`` rows) has a data plate of ``M`` rows standing for ``N = num_data``.

    Raises ``ValueError`` naming the plate and what to change.
    """
    require_plate(trace, plate_name, what)
    for name, site in trace.nodes.items():
        if site["type"] == "param" and _per_datapoint_param(site, plate_name):
            raise ProgramContractError(
                f"the {what} declares pyro.param('{name}') inside the data plate "
                f"'{plate_name}': a per-datapoint parameter needs the indices of the rows in "
                f"each minibatch, which the trainer does not pass (it passes the rows). Use an "
                f"amortized guide (an encoder from x to the site's parameters, e.g. "
                f"pyro_aevb's autoguides) instead"
            )
    for name, site in sample_sites(trace):
        frame = plate_frame(site, plate_name)
        if frame is None:
            continue
        full = frame.full_size if frame.full_size is not None else frame.size
        if frame.size != batch_size:
            if frame.size < full:
                raise ProgramContractError(
                    f"the {what} subsamples its own data plate '{plate_name}' "
                    f"({frame.size} of {full} rows at site '{name}'): the trainer draws the "
                    f"minibatches itself and passes {batch_size} rows per step. Remove "
                    f"subsample_size/subsample from pyro.plate('{plate_name}', ...) and size it "
                    f"from the rows given, pyro.plate('{plate_name}', len(x))"
                )
            raise ProgramContractError(
                f"the {what}'s data plate '{plate_name}' has {frame.size} rows at site "
                f"'{name}' but the minibatch has {batch_size}; size the plate from the data, "
                f"pyro.plate('{plate_name}', len(x))"
            )
        # A program may also declare its full size itself (pyro.plate(name, N, subsample=...)
        # with N from a closure): DataPlateScale leaves such a plate alone.
        expected = (batch_size, num_data) if scaled_by_us else (num_data,)
        if full not in expected:
            route = (
                "the program takes num_data, so its plate must be "
                f"pyro.plate('{plate_name}', num_data, subsample=...) with num_data={num_data}"
                if not scaled_by_us
                else f"declare the plate over the rows given, pyro.plate('{plate_name}', len(x)),"
                " and the trainer scales it to the data set"
            )
            raise ProgramContractError(
                f"the {what}'s data plate '{plate_name}' declares {full} datapoints at site "
                f"'{name}', but the data set has {num_data} rows and the minibatch "
                f"{batch_size}: {route}"
            )
