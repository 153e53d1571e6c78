r"""What every amortized autoguide shares: reading the model, the encoder trunk, the data
plate, global latents, point estimates, configs and checkpoints.

An amortized guide is built, like Pyro's autoguides, from a trace of the model on the first
call (made with the same arguments as the model, under a forked RNG so that it never shifts
the caller's draws). From the trace it learns

* the **local latents**: the latent sites inside ``pyro.plate(plate_name)``, each with its
  unconstrained coordinates ``u = T^{-1}(z)``, ``T = biject_to(support)`` (as in
  :class:`~pyro_aevb.poutine.LatentLayout`), the plates it sits in and its shapes; a site
  whose shape or plates do not fit is an error naming it;
* the **global latents** (outside the data plate), which get a standard Pyro autoguide on
  the model restricted to them (:data:`GLOBAL_GUIDES`: ``AutoNormal``, ``AutoDelta`` for MAP,
  or a factory of the user's), composed with the amortized part.

On every call the encoder trunk (:mod:`~pyro_aevb.autoguide.encoders`) maps the rows of
``x`` (the first argument) to features ``h``, and a subclass turns ``h`` into a
distribution over each datapoint's local latents, sampled inside the same data plate
(same name, same dim) as the model's. The plate is over the rows given; when the model
takes ``num_data`` and is called with it (stock ``SVI``: ``svi.step(x, num_data=N)``), the
plate declares the full size ``N``, exactly as the model's does, so both are scaled by
``N / M``; :func:`pyro_aevb.fit` calls the guide without ``num_data`` and scales its plate
itself (:class:`~pyro_aevb.poutine.DataPlateScale`).

The networks live in :attr:`AmortizedGuide.nets` (a plain ``nn.ModuleDict``, registered in
Pyro's param store with :func:`pyro.module` on each call, so stock ``SVI`` trains them) and
the global guide in :attr:`AmortizedGuide.global_guide`; both are part of the module's
``state_dict``, which also records the shape of a data row, so that a fresh guide loads a
checkpoint before it has seen data (:func:`pyro_aevb.load_run`).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoDelta, AutoNormal
from pyro.nn import PyroModule
from pyro.params.param_store import param_with_module_name
from pyro.poutine.runtime import NonlocalExit
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.distributions import biject_to
from torch.distributions.transforms import (
    AffineTransform,
    ComposeTransform,
    IndependentTransform,
    Transform,
)

from ..device import fork_rng
from ..nn.mlp import init_normal_
from ..poutine import (
    UNCONSTRAINED_OF,
    LatentLayout,
    accepts_num_data,
    latent_sites,
    plate_frame,
    require_plate,
)
from ..poutine.compile import recording
from ..poutine.layout import fixed_support, same_support, support_tensors
from ..poutine.plates import ProgramContractError
from ..poutine.program import site_mask
from .encoders import DEFAULT_HIDDEN, check_encoder, make_trunk, trunk_features

__all__ = [
    "AmortizedGuide",
    "LocalSite",
    "GLOBAL_GUIDES",
    "AUTOGUIDES",
    "register_autoguide",
    "build_guide",
]

#: Pyro autoguides for the global latents, by name.
GLOBAL_GUIDES: dict[str, Callable] = {"normal": AutoNormal, "delta": AutoDelta}

#: Amortized guide classes by family name, for :func:`build_guide`.
AUTOGUIDES: dict[str, type] = {}


def register_autoguide(cls):
    """Class decorator: register an :class:`AmortizedGuide` subclass under ``cls.family``."""
    AUTOGUIDES[cls.family] = cls
    return cls


def build_guide(config: dict, model: Callable):
    """Rebuild a guide for ``model`` from its :attr:`AmortizedGuide.config`.

    Raises ``ValueError`` for a config that names no registered family (a guide of your
    own: build it yourself and pass it in).
    """
    if not isinstance(config, dict) or config.get("guide") not in AUTOGUIDES:
        raise ValueError(
            f"cannot rebuild a guide from config {config!r}: it names no amortized guide "
            f"({', '.join(sorted(AUTOGUIDES))}); build the guide yourself and pass it in"
        )
    options = {k: v for k, v in config.items() if k != "guide"}
    return AUTOGUIDES[config["guide"]](model, **options)


@dataclass(frozen=True)
class _Frame:
    name: str
    size: int
    dim: int


@dataclass(frozen=True)
class LocalSite:
    """A local latent site as an amortized guide sees it.

    Attributes
    ----------
    name : str
    transform : Transform
        ``biject_to(support)``: unconstrained -> constrained.
    identity : bool
        Whether ``transform`` is the identity (real support): the guide's distribution is then
        put on the site itself, not pushed through a transform.
    event_dim, u_event_dim : int
        Event dimensions of the site, and of its unconstrained value.
    u_shape : tuple of int
        Shape of one datapoint's unconstrained block (the data-plate dimension removed).
    u_plate_dim : int
        Negative position of the data-plate dimension in the unconstrained value.
    frames : tuple
        The site's other (vectorised) plates, reproduced around it in the guide.
    offset, size : int
        Columns of the flat unconstrained row (:class:`~pyro_aevb.poutine.LatentLayout`).
    """

    name: str
    transform: Transform
    identity: bool
    event_dim: int
    u_event_dim: int
    u_shape: tuple[int, ...]
    u_plate_dim: int
    frames: tuple[_Frame, ...]
    offset: int
    size: int

    def shaped(self, flat: torch.Tensor) -> torch.Tensor:
        """``(n, size)`` per-row numbers -> the unconstrained value's shape, with the data
        plate at :attr:`u_plate_dim` (the flattening of :class:`LatentLayout`)."""
        return flat.reshape((flat.shape[0], *self.u_shape)).movedim(0, self.u_plate_dim)

    def distribution(self, base: dist.Distribution) -> dist.Distribution:
        """``base`` (on the unconstrained value) pushed through :attr:`transform`."""
        if self.identity:
            return base
        return dist.TransformedDistribution(base, [self.transform.with_cache()])

    def normal(self, loc: torch.Tensor, scale: torch.Tensor) -> dist.Distribution:
        """``N(loc, diag scale^2)`` on the unconstrained value, pushed through
        :attr:`transform`. An elementwise transform (positive, interval supports) is applied
        coordinate by coordinate *before* the event dimensions are declared, so a positive
        site's guide is ``TransformedDistribution(Normal, ExpTransform)`` (``.to_event``),
        the form whose KL against a ``LogNormal`` prior is registered (estimator B)."""
        normal = dist.Normal(loc, scale)
        if self.identity:
            return normal.to_event(self.u_event_dim)
        elementwise = _elementwise(self.transform)
        if elementwise is not None:
            transformed = dist.TransformedDistribution(normal, [elementwise.with_cache()])
            return transformed.to_event(self.u_event_dim)
        return self.distribution(normal.to_event(self.u_event_dim))

    @contextlib.contextmanager
    def plates(self, made: dict | None = None):
        """The site's plates other than the data plate, entered: those in ``made`` (by name:
        one plate object for every site of a call, as Pyro requires), else new ones."""
        with contextlib.ExitStack() as stack:
            for f in self.frames:
                plate = (made or {}).get(f.name) or pyro.plate(f.name, f.size, dim=f.dim)
                stack.enter_context(plate)
            yield


def _call_kind(args, kwargs) -> tuple:
    """What a call's arguments are, for :meth:`AmortizedGuide._own_subsample`: tensors by
    shape, numbers and ``None`` by value, anything else by type."""

    def kind(v):
        if isinstance(v, torch.Tensor):
            return ("tensor", tuple(v.shape))
        if v is None or isinstance(v, bool | int | float | str):
            return v
        return type(v).__name__

    return tuple(kind(v) for v in args), tuple(sorted((k, kind(v)) for k, v in kwargs.items()))


def _is_identity(transform: Transform) -> bool:
    while isinstance(transform, IndependentTransform):
        transform = transform.base_transform
    return isinstance(transform, ComposeTransform) and not transform.parts


def _is_identity_affine(transform: Transform) -> bool:
    return (
        isinstance(transform, AffineTransform)
        and bool(torch.all(torch.as_tensor(transform.loc) == 0))
        and bool(torch.all(torch.as_tensor(transform.scale) == 1))
    )


def _elementwise(transform: Transform) -> Transform | None:
    """The coordinate-wise transform inside ``transform`` (``IndependentTransform``s and
    identity affine parts removed: torch's ``biject_to(positive)`` is ``exp`` followed by
    ``x + 0``), or ``None`` if it acts on whole events or changes shapes."""
    while isinstance(transform, IndependentTransform):
        transform = transform.base_transform
    parts = transform.parts if isinstance(transform, ComposeTransform) else [transform]
    parts = [p for p in parts if not _is_identity_affine(p)]
    if not parts or any(p.domain.event_dim or p.codomain.event_dim for p in parts):
        return None
    return parts[0] if len(parts) == 1 else ComposeTransform(parts)


def _local_site(name: str, site: dict, plate_name: str, offset: int) -> LocalSite:
    fn, value = site["fn"], site["value"]
    data = plate_frame(site, plate_name)
    if not data.vectorized:
        raise ProgramContractError(
            f"local latent site '{name}' is inside the data plate '{plate_name}' used as a "
            f"Python loop (for i in pyro.plate(...)), a sequential plate: an amortized guide "
            f"encodes all rows of x at once and needs the vectorised plate, with "
            f"pyro.plate('{plate_name}', len(x)) as a context manager and one site for all "
            f"rows"
        )
    if fn.support.is_discrete:
        raise ProgramContractError(
            f"local latent site '{name}' is discrete ({type(fn).__name__}): an amortized "
            f"reparameterised guide needs continuous latents. Enumerate it out in the model "
            f"(infer={{'enumerate': 'parallel'}}, TraceEnum_ELBO) and build the guide on the "
            f"model without it, e.g. AmortizedNormal(poutine.block(model, hide=['{name}'])), "
            f"as for Pyro's autoguides; or marginalise it out by hand"
        )
    if any(t.requires_grad for t in support_tensors(fn.support)):
        raise ProgramContractError(
            f"local latent site '{name}' has a support whose bounds follow a parameter "
            f"({type(fn).__name__} with a bound from pyro.param, a network, or a latent "
            f"whose prior has one): training "
            f"changes them, but an amortized guide maps each row through one transform fixed "
            f"when it is built, so its draws would leave the support. Reparametrise the "
            f"model (z = b * w with w ~ Uniform(0, 1)) or write the guide by hand"
        )
    support = fixed_support(fn.support, data.dim - fn.event_dim)
    if support is None:
        raise ProgramContractError(
            f"local latent site '{name}' has a support whose bounds differ per row "
            f"({type(fn).__name__}: they come from another latent or from the data, e.g. "
            f"Uniform(0, s)); an amortized guide maps each row through one fixed transform, "
            f"which would keep the first batch's bounds: reparametrise the model (z = s * w "
            f"with w ~ Uniform(0, 1)) or write the guide by hand"
        )
    try:
        transform = biject_to(support)
    except NotImplementedError as err:
        raise ProgramContractError(
            f"local latent site '{name}' has support {fn.support}, for which torch has no "
            f"bijection to unconstrained space (biject_to): an amortized guide samples in "
            f"unconstrained space and maps the draws through that bijection. Reparametrise "
            f"the site (e.g. a Cholesky factor with LKJCholesky or a lower-triangular matrix "
            f"built from unconstrained latents in place of a positive-definite matrix), or "
            f"write the guide by hand"
        ) from err
    u_full = tuple(transform.inverse_shape(value.shape))
    u_event_dim = fn.event_dim + len(u_full) - value.dim()
    u_plate_dim = data.dim - u_event_dim
    if len(u_full) < -u_plate_dim or u_full[u_plate_dim] != data.size:
        raise ProgramContractError(
            f"local latent site '{name}' has value shape {tuple(value.shape)} (event dims "
            f"{fn.event_dim}), which has no dimension of size {data.size} for the plate "
            f"'{plate_name}' (dim {data.dim}): local latents must be expanded along the data "
            f"plate, one entry per datapoint"
        )
    frames = []
    for frame in site["cond_indep_stack"]:
        if frame.name == plate_name:
            continue
        if not frame.vectorized:
            raise ProgramContractError(
                f"local latent site '{name}' is inside the sequential plate '{frame.name}' "
                f"(a Python loop over pyro.plate): amortized guides reproduce vectorised plates "
                f"only; vectorise it, with pyro.plate('{frame.name}', size, dim=...)"
            )
        if frame.full_size not in (None, frame.size):
            raise ProgramContractError(
                f"local latent site '{name}' is inside the plate '{frame.name}', which "
                f"subsamples {frame.size} of {frame.full_size}: amortized guides subsample "
                f"only the data plate '{plate_name}'"
            )
        frames.append(_Frame(frame.name, frame.size, frame.dim))
    u_shape = list(u_full)
    del u_shape[len(u_shape) + u_plate_dim]
    return LocalSite(
        name=name,
        transform=transform,
        identity=_is_identity(transform),
        event_dim=fn.event_dim,
        u_event_dim=u_event_dim,
        u_shape=tuple(u_shape),
        u_plate_dim=u_plate_dim,
        frames=tuple(frames),
        offset=offset,
        size=math.prod(u_shape),
    )


def _local_layout(trace, local_names, plate_name: str) -> LatentLayout:
    """The layout of the local latents (the globals marked observed so that it accepts them)."""
    trace = trace.copy()
    for name, site in latent_sites(trace).items():
        if name not in local_names:
            trace.nodes[name] = {**site, "is_observed": True}
    return LatentLayout.from_trace(trace, plate_name)


#: The amortized guides alive in this process: a param-store entry holding one of their
#: tensors belongs to that guide, not to a store loaded from a file.
_LIVE_GUIDES: weakref.WeakSet = weakref.WeakSet()


class AmortizedGuide(PyroModule):
    """Base class of the amortized autoguides; see the module docstring.

    Parameters
    ----------
    model : callable
        The Pyro model. The guide is called with the same arguments; the first (or keyword
        ``x``) is the batch of observations ``(batch, *event_shape)`` the encoder reads.
    encoder : {"mlp", "conv"} or nn.Module
        The trunk (:mod:`~pyro_aevb.autoguide.encoders`).
    hidden_dims : int or sequence of int
        Hidden layers of the ``"mlp"`` trunk (the paper: 500); ``()``: heads linear in ``x``.
    activation : str, optional
        Of the named trunk (default: tanh for ``"mlp"``, ReLU for ``"conv"``).
    plate_name : str
        The model's data plate.
    global_guide : {"normal", "delta"}, callable or None
        Pyro autoguide for the global latents (outside the data plate): ``AutoNormal``,
        ``AutoDelta`` (MAP), a factory ``model -> guide`` (e.g.
        ``pyro.infer.autoguide.AutoMultivariateNormal``); ``None`` refuses globals. Note that
        Pyro's ``AutoNormal`` sets its sites from auxiliary draws, so a model with globals
        trains with estimator A (or ``AutoDelta``); per-datapoint results condition on the
        globals either way.
    init_std : float, optional
        Initialise the trunk (when named) and heads from ``N(0, init_std^2)`` (the paper's
        0.1); default: PyTorch's initialisation.
    name : str, optional
        Prefix of the guide's entries in Pyro's param store (default: the class name). A
        guide re-registers its own tensors under it on every call, so several guides of one
        name may be used one after the other; to train two at once, name them apart.

    Notes
    -----
    Pyro's param store: a guide starts from the entries under its name that the store holds
    when it is built (its first call), as Pyro's autoguides do, e.g. after
    ``pyro.get_param_store().load(path)``; entries of another live guide of the same name
    are not taken, and entries that do not fit (another shape or name) are dropped with a
    warning. Once built, the guide trains its own tensors: load a store before its first
    call, or its :meth:`state_dict` at any time.
    """

    #: Registry key (:data:`AUTOGUIDES`) and config name; set by subclasses.
    family = "amortized"

    def __init__(
        self,
        model: Callable,
        *,
        encoder="mlp",
        hidden_dims=DEFAULT_HIDDEN,
        activation: str | None = None,
        plate_name: str = "data",
        global_guide="normal",
        init_std: float | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name or type(self).__name__)
        if not callable(model):
            raise TypeError(f"model must be a callable Pyro model, got {type(model).__name__}")
        if not isinstance(plate_name, str) or not plate_name:
            raise TypeError(f"plate_name must be a non-empty str, got {plate_name!r}")
        if not (global_guide is None or global_guide in GLOBAL_GUIDES or callable(global_guide)):
            raise ValueError(
                f"global_guide must be one of {sorted(GLOBAL_GUIDES)}, a factory model -> "
                f"autoguide, or None; got {global_guide!r}"
            )
        if init_std is not None and not (isinstance(init_std, int | float) and init_std > 0):
            raise ValueError(f"init_std must be a number > 0 or None, got {init_std!r}")
        encoder, hidden_dims, activation = check_encoder(encoder, hidden_dims, activation)
        # Kept out of the module tree: the model may be a module with parameters of its own.
        self._model = (model,)
        self._encoder = encoder if isinstance(encoder, str) else (encoder,)
        self.plate_name = plate_name
        self.hidden_dims = hidden_dims
        self.activation = activation
        self.init_std = None if init_std is None else float(init_std)
        self._global_spec = global_guide
        serialisable = isinstance(encoder, str) and not (
            callable(global_guide) and global_guide not in GLOBAL_GUIDES
        )
        self._options = (
            {
                "encoder": encoder,
                "hidden_dims": list(hidden_dims),
                "activation": activation,
                "plate_name": plate_name,
                "global_guide": global_guide,
                "init_std": self.init_std,
                "name": name,
            }
            if serialisable
            else None
        )
        self.nets = None
        self.global_guide = None
        self.local_sites: tuple[LocalSite, ...] | None = None
        self.global_names: tuple[str, ...] = ()
        self.layout: LatentLayout | None = None
        self._row_shape: tuple[int, ...] | None = None
        self._dtype: torch.dtype | None = None
        self._plate_dim = -1
        self._takes_num_data = accepts_num_data(model)
        # the model subsamples its data plate itself (pyro.plate(name, N, subsample=...) or
        # subsample_size=M), not from a num_data argument: read from the model on each call
        # then; whether it does, by the kind of call (_own_subsample)
        self._model_subsamples = False
        self._subsampling: dict = {}
        # plates other than the data plate, made once per call (several sites share them)
        self._call_plates: dict = {}
        _LIVE_GUIDES.add(self)

    # ------------------------------------------------------------------ configuration
    @property
    def model(self) -> Callable:
        """The model this guide is for."""
        return self._model[0]

    @property
    def config(self) -> dict | None:
        """``{"guide": family, **options}`` to rebuild this guide with :func:`build_guide`, or
        ``None`` when it cannot be (an encoder module or global-guide factory of the user's)."""
        if self._options is None:
            return None
        return {"guide": self.family, **self._options, **self._family_options()}

    def _family_options(self) -> dict:
        return {}

    @property
    def takes_num_data(self) -> bool:
        """Whether the guide takes a ``num_data`` argument: when the model does (the guide
        passes its arguments to the model, and its data plate stands for the same N)."""
        return self._takes_num_data

    @property
    def built(self) -> bool:
        """Whether the guide has read the model and created its networks."""
        return self.local_sites is not None

    @property
    def latent_dim(self) -> int:
        """D, unconstrained local-latent coordinates per datapoint (after the first call)."""
        self._require_built()
        return self.layout.dim

    def _require_built(self) -> None:
        if not self.built:
            raise RuntimeError(
                f"{type(self).__name__} has not read the model yet: call it once with the "
                f"model's arguments, guide(x, ...)"
            )

    # ------------------------------------------------------------------ building
    def _data(self, args, kwargs) -> torch.Tensor:
        x = args[0] if args else kwargs.get("x")
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"{type(self).__name__} is called with the model's arguments and encodes the "
                f"first one (or x=), a batch of observations (batch, *event_shape); got "
                f"{type(x).__name__}"
            )
        if self._row_shape is not None and tuple(x.shape[1:]) != self._row_shape:
            raise ValueError(
                f"{type(self).__name__} was built for rows of shape {self._row_shape}, got x of "
                f"shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"x must have a floating dtype, got {x.dtype}")
        dtype = self._net_dtype()
        return x if dtype is None or x.dtype == dtype else x.to(dtype)

    def _net_dtype(self) -> torch.dtype | None:
        """The dtype the networks compute in now (they follow ``.double()``, ``.to()``), else
        the one the guide was built for."""
        if self.nets is not None:
            for p in self.nets.parameters():
                if p.is_floating_point():
                    return p.dtype
        return self._dtype

    def _setup(self, *args, **kwargs) -> None:
        x = self._data(args, kwargs)
        model = self.model
        # a throw-away run of the model: fork the RNG so the caller's draws are not shifted
        with fork_rng(), poutine.block():
            # with gradients: a support whose bounds follow a parameter is told by them
            trace = poutine.trace(model).get_trace(*args, **kwargs)
            with torch.no_grad():
                # other draws: a local support whose bounds follow a global latent changes
                again = poutine.trace(model).get_trace(*args, **kwargs)
        require_plate(trace, self.plate_name, "model")
        latents = latent_sites(trace)
        local = [n for n, s in latents.items() if plate_frame(s, self.plate_name)]
        globals_ = tuple(n for n in latents if n not in local)
        if not local:
            raise ProgramContractError(
                f"the model has no latent site inside the plate '{self.plate_name}', so there "
                f"is nothing to amortize (its latents: {list(latents)}); use a Pyro autoguide "
                f"such as AutoNormal, or pass the right plate_name"
            )
        if globals_ and self._global_spec is None:
            raise ProgramContractError(
                f"the model has global latent site(s) {list(globals_)} outside the plate "
                f"'{self.plate_name}' and global_guide=None: pass global_guide='normal' "
                f"(AutoNormal), 'delta' (AutoDelta, MAP) or a factory model -> autoguide"
            )
        sites, offset = [], 0
        for name in local:
            site = _local_site(name, latents[name], self.plate_name, offset)
            if site_mask(latents[name]) is not None:
                raise ProgramContractError(
                    f"local latent site '{name}' is masked in the model (some entries carry no "
                    f"density there; Pyro's obs_mask makes such a site for the missing "
                    f"entries): an amortized guide cannot know which entries each batch masks, "
                    f"and would add their entropy to the bound. Mask the likelihood instead "
                    f"(its .mask(observed) integrates the missing entries out), or write the "
                    f"guide by hand with pyro.poutine.mask on that site"
                )
            other = again.nodes.get(name)
            if other is not None and not same_support(
                latents[name]["fn"].support, other["fn"].support
            ):
                raise ProgramContractError(
                    f"local latent site '{name}' has a support whose bounds change from run to "
                    f"run (they follow a latent drawn outside the plate '{self.plate_name}', "
                    f"e.g. Uniform(0, g) with g global); an amortized guide maps each row "
                    f"through one fixed transform, which would keep the first run's bounds: "
                    f"reparametrise the model (z = g * w with w ~ Uniform(0, 1)) or write the "
                    f"guide by hand"
                )
            sites.append(site)
            offset += site.size
        dims = {plate_frame(latents[n], self.plate_name).dim for n in local}
        if len(dims) != 1:
            raise ProgramContractError(
                f"the data plate '{self.plate_name}' has different dims {sorted(dims)} at the "
                f"local sites {local}"
            )
        layout = _local_layout(trace, local, self.plate_name)
        if layout.names != tuple(local) or layout.dim != offset:
            raise AssertionError("local latent layout out of order")  # pragma: no cover
        stored = self._claim_store_entries()
        self.local_sites, self.global_names, self.layout = tuple(sites), globals_, layout
        self._plate_dim = dims.pop()
        frame = plate_frame(latents[local[0]], self.plate_name)
        full = frame.full_size if frame.full_size is not None else frame.size
        # A model that subsamples its own data plate (pyro.plate(name, N, subsample=idx), or
        # subsample_size=M drawing M of x's N rows) scales its sites by N/M: the guide's plate
        # must say the same N, and encode the rows the model uses. A full size that came
        # from the num_data argument is not the model's own.
        self._model_subsamples = self._num_data(args, kwargs) is None and full != frame.size
        self._subsampling = {_call_kind(args, kwargs): self._model_subsamples}
        if frame.size != x.shape[0] and not (self._model_subsamples and full == x.shape[0]):
            raise ProgramContractError(
                f"the model's data plate '{self.plate_name}' has {frame.size} rows (of "
                f"{full}) at site '{local[0]}', but x has {x.shape[0]} rows: an amortized "
                f"guide encodes one row of x (its first dimension) per datapoint. Declare "
                f"the plate over x's rows, pyro.plate('{self.plate_name}', len(x)), or over a "
                f"subsample of them, pyro.plate('{self.plate_name}', len(x), "
                f"subsample_size=M)"
            )
        self._row_shape, self._dtype = tuple(x.shape[1:]), x.dtype
        try:
            self._build(x, *args, **kwargs)
            self._adopt_store_entries(stored)
        except BaseException:
            # a guide that failed to build stays unbuilt (and says so), not half-built
            self.local_sites, self.layout, self.nets, self.global_guide = None, None, None, None
            self._row_shape = self._dtype = None
            self._model_subsamples, self._subsampling = False, {}
            raise

    def _build(self, x: torch.Tensor, *args, **kwargs) -> None:
        """Create the networks (and the global guide) for the sites just read."""
        model, globals_ = self.model, self.global_names
        nets = nn.ModuleDict()
        encoder = self._encoder if isinstance(self._encoder, str) else self._encoder[0]
        nets["trunk"] = make_trunk(encoder, self._row_shape, self.hidden_dims, self.activation)
        nets.to(device=x.device, dtype=x.dtype)
        with torch.no_grad():
            feature_dim = trunk_features(nets["trunk"], x[:1]).shape[-1]
        self._build_heads(nets, feature_dim)
        nets.to(device=x.device, dtype=x.dtype)
        if self.init_std is not None:  # the named trunk and the linear heads, not flows
            for key in ("trunk", "head", "heads"):
                if key in nets and (key != "trunk" or isinstance(self._encoder, str)):
                    init_normal_(nets[key], self.init_std)
        self._init_heads(nets)
        self.nets = nets
        if globals_:
            spec = self._global_spec
            factory = GLOBAL_GUIDES.get(spec, spec) if isinstance(spec, str) else spec
            self.global_guide = factory(poutine.block(model, expose=list(globals_)))
            # create its parameters now (a throw-away run), so that a checkpoint loads into them
            with fork_rng(), poutine.block(), torch.no_grad():
                self.global_guide(*args, **kwargs)

    def _claim_store_entries(self) -> dict[str, torch.Tensor]:
        """Drop entries under this guide's name from Pyro's param store that are not this
        guide's own tensors, so that they are not trained, or adopted by the global guide,
        instead of ours (the guide that runs registers its own tensors again). Returns the
        dropped entries that no live guide owns (a store loaded from a file), by name, as
        unconstrained tensors, for :meth:`_adopt_store_entries`."""
        store = pyro.get_param_store()
        prefix = self._pyro_name
        own = {id(p) for p in self.parameters()}
        owned = {id(p) for g in list(_LIVE_GUIDES) if g is not self for p in g.parameters()}
        loaded = {}
        for key, value in list(store.named_parameters()):
            if (key.startswith(prefix + ".") or key.startswith(prefix + "$$$")) and (
                id(value) not in own
            ):
                if id(value) not in owned:
                    loaded[key] = value
                del store[key]
        return loaded

    def _nets_store_name(self) -> str:
        return f"{self._pyro_name}.nets" if self._pyro_name else "nets"

    def _adopt_store_entries(self, loaded: dict[str, torch.Tensor]) -> None:
        """Start the guide just built from the store's entries that fit it (same name and
        shape): Pyro's save/load of the param store. The others are dropped, with a warning."""
        if not loaded:
            return
        store = pyro.get_param_store()
        own = {id(p) for p in self.parameters()}
        targets = {
            param_with_module_name(self._nets_store_name(), name): p
            for name, p in self.nets.named_parameters()
        }
        # the global guide registered its own entries in its first (throw-away) run
        targets.update((k, v) for k, v in store.named_parameters() if id(v) in own)
        misfits = []
        with torch.no_grad():
            for key, value in loaded.items():
                target = targets.get(key)
                if target is None or target.shape != value.shape:
                    misfits.append(f"'{key}' {tuple(value.shape)}")
                else:
                    target.copy_(value.detach().to(device=target.device, dtype=target.dtype))
        if misfits:
            warnings.warn(
                f"Pyro's param store held entries under the name '{self._pyro_name}' that do "
                f"not fit this {type(self).__name__} (no such parameter, or another shape): "
                f"{', '.join(misfits[:5])}{' ...' if len(misfits) > 5 else ''}; they were "
                f"dropped and the guide starts from fresh values (name guides apart, or call "
                f"pyro.clear_param_store() before building a new one)",
                UserWarning,
                stacklevel=4,
            )

    def _build_heads(self, nets: nn.ModuleDict, feature_dim: int) -> None:
        """Add the output heads (and flows) to ``nets``; subclasses."""
        raise NotImplementedError

    def _init_heads(self, nets: nn.ModuleDict) -> None:
        """Family-specific initialisation after the generic one (none by default)."""

    # ------------------------------------------------------------------ checkpoints
    def get_extra_state(self) -> dict:
        return {
            "row_shape": None if self._row_shape is None else list(self._row_shape),
            "dtype": None if self._dtype is None else str(self._net_dtype()).replace("torch.", ""),
        }

    def set_extra_state(self, state: dict) -> None:
        row = state.get("row_shape")
        if row is not None and self.built and tuple(row) != self._row_shape:
            raise ValueError(
                f"the checkpoint's {type(self).__name__} was built for rows of shape "
                f"{tuple(row)}, this one for {self._row_shape}"
            )

    def build_for_state(self, state_dict: dict, prefix: str = "") -> None:
        """Build an unbuilt guide for the rows a saved ``state_dict`` records, so that its
        networks exist (and can be compared with the saved ones) before loading: the model is
        traced once on a zero batch of that shape. A built guide is left as it is."""
        extra = state_dict.get(prefix + "_extra_state")
        if self.built or not isinstance(extra, dict) or extra.get("row_shape") is None:
            return
        row, dtype = extra["row_shape"], extra.get("dtype") or "float32"
        if not (
            isinstance(row, list | tuple)
            and all(isinstance(n, int) and not isinstance(n, bool) and 0 < n < 2**31 for n in row)
        ):
            raise ValueError(f"the saved {type(self).__name__}'s row shape {row!r} is not a shape")
        if dtype not in ("float16", "bfloat16", "float32", "float64"):
            raise ValueError(f"the saved {type(self).__name__}'s dtype {dtype!r} is not a float")
        self._setup(torch.zeros(2, *row, dtype=getattr(torch, dtype)))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.build_for_state(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ the program
    def _register(self) -> None:
        """``pyro.module`` for the networks (stock ``SVI`` finds them in the param store)."""
        pyro.module(self._nets_store_name(), self.nets)

    def _num_data(self, args, kwargs):
        """The ``num_data`` the model is called with (keyword, positional or its default), if
        it takes one."""
        if not self._takes_num_data:
            return None
        if "num_data" in kwargs:
            return kwargs["num_data"]
        try:
            bound = inspect.signature(self.model).bind_partial(*args, **kwargs)
        except TypeError:
            return None
        bound.apply_defaults()
        return bound.arguments.get("num_data")

    def _model_plate(self, args, kwargs):
        """``(N, M, indices or None)`` of the model's own data plate on these arguments: the
        model is run up to the plate (no draws kept, the caller's RNG untouched)."""

        def at_plate(msg) -> bool:
            return msg["name"] == self.plate_name and site_is_subsample(msg)

        with fork_rng(), poutine.block(), torch.no_grad():
            try:
                poutine.escape(self.model, at_plate)(*args, **kwargs)
            except NonlocalExit as stop:
                stop.reset_stack()
                fn, given = stop.site["fn"], stop.site["value"]
                if fn.subsample_size is not None:
                    return fn.size, fn.subsample_size, given
                return fn.size, fn.size if given is None else len(given), given
        raise ProgramContractError(
            f"the model did not open its data plate '{self.plate_name}' on these arguments"
        )

    def _own_subsample(self, args, kwargs):
        """``(N, M, indices or None)`` of the model's data plate on this call when the model
        subsamples it itself, else ``None``. Whether it does is read from the model once per
        kind of call (the shapes of the tensor arguments, the other arguments' values:
        ``idx=None`` or given, ``subsample_size=min(10, len(x))``), and from the first call
        while a step is recorded; where it does, the plate is read on every call (its
        indices)."""
        if recording():
            subsamples = self._model_subsamples
        else:
            subsamples = self._subsampling.get(_call_kind(args, kwargs))
        if subsamples is False:
            return None
        size, m, given = self._model_plate(args, kwargs)
        if subsamples is None:
            self._subsampling[_call_kind(args, kwargs)] = m != size
        return (size, m, given) if m != size else None

    def _data_plate(self, x: torch.Tensor, args, kwargs):
        """``(plate, rows)``: the guide's data plate, standing for as many datapoints as the
        model's, and the rows of ``x`` it covers (``None``: all of them).

        The model's own subsample indices are kept (the guide's subsample site is hidden from
        Pyro's replay), except where the model draws ``M`` of ``x``'s ``N`` rows at random
        (``subsample_size=M``): then the guide draws them, as a Pyro guide with the same
        plate does, and the model gets the same rows by replay."""
        n, dim, name = x.shape[0], self._plate_dim, self.plate_name
        num_data, given = self._num_data(args, kwargs), None
        own = None if num_data is not None else self._own_subsample(args, kwargs)
        if own is not None:
            num_data, m, given = own
            if m != n:
                if num_data != n:
                    raise ProgramContractError(
                        f"the model's data plate '{name}' has {m} rows of {num_data} but x "
                        f"has {n}: an amortized guide encodes the plate's rows of x, which "
                        f"must be x itself or a subsample of its rows"
                    )
                if given is None:  # the guide draws the subsample
                    plate = pyro.plate(name, n, subsample_size=m, dim=dim)
                    return plate, plate.indices
                with poutine.block(hide=[name]):
                    plate = pyro.plate(name, n, subsample=given, dim=dim)
                return plate, given
        if num_data is None or num_data == n:
            return pyro.plate(name, n, dim=dim), None
        subsample = given if given is not None else torch.arange(n, device=self._device())
        with poutine.block(hide=[name]):  # the model keeps its own indices
            return pyro.plate(name, num_data, subsample=subsample, dim=dim), None

    def _inner_plates(self) -> dict:
        """The local sites' other plates, one ``pyro.plate`` each for this call (the global
        guide's own where it has one of that name), so several sites may share one."""
        made = dict(getattr(self.global_guide, "plates", None) or {})
        for site in self.local_sites:
            for f in site.frames:
                if f.name not in made:
                    made[f.name] = pyro.plate(f.name, f.size, dim=f.dim)
        return made

    def _device(self) -> torch.device:
        p = next(self.nets.parameters(), None)
        return torch.device("cpu") if p is None else p.device

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's features ``(batch, F)`` of observations ``x``."""
        self._require_built()
        return trunk_features(self.nets["trunk"], self._data((x,), {}))

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Sample the latents given the model's arguments; returns ``{site: value}``."""
        if not self.built:
            self._setup(*args, **kwargs)
        x = self._data(args, kwargs)
        self._claim_store_entries()
        out = {}
        if self.global_guide is not None:
            out.update(self.global_guide(*args, **kwargs))
        self._register()
        # Everything that touches the networks runs outside the data plate: a PyroModule
        # re-registers a plain submodule's weights (pyro.param) on each attribute access,
        # and inside the plate they would be recorded as per-datapoint parameters.
        nets = self.nets
        plate, rows = self._data_plate(x, args, kwargs)
        self._call_plates = self._inner_plates()
        params = self._params_from_features(
            trunk_features(nets["trunk"], x if rows is None else x[rows]), nets
        )
        with plate:
            out.update(self._sample_from_params(params, nets))
        return out

    def _params_from_features(self, h: torch.Tensor, nets: nn.ModuleDict):
        """The per-datapoint parameters of ``q`` ``{name: (n, ...)}`` from the features
        ``h`` ``(n, F)``; subclasses."""
        raise NotImplementedError

    def _sample_from_params(
        self, params: dict[str, torch.Tensor], nets: nn.ModuleDict
    ) -> dict[str, torch.Tensor]:
        """Sample every local site from per-datapoint parameters; subclasses."""
        raise NotImplementedError

    # ------------------------------------------------------------------ refinement
    def local_params(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-datapoint parameters of ``q(z | x_i)`` the encoder computes for the rows
        of ``x``, ``{name: (B, ...)}`` (unconstrained; with gradients to the encoder), for
        :func:`pyro_aevb.infer.refine.refine`: what refinement optimises per datapoint."""
        self._require_built()
        return self._params_from_features(self.features(x), self.nets)

    def local_guide(self, params: dict[str, torch.Tensor]) -> Callable:
        """A guide called with the model's arguments, like this one, whose local latents are
        drawn from ``q`` with the given per-datapoint ``params`` (each ``(B, ...)`` for the
        ``B`` rows of ``x``) instead of the encoder's; the global latents as this guide."""
        self._require_built()

        def guide(*args, **kwargs):
            x = self._data(args, kwargs)
            rows = {int(v.shape[0]) for v in params.values()}
            if rows != {x.shape[0]}:
                raise ValueError(
                    f"the local parameters are for {sorted(rows)} rows, x has {x.shape[0]}"
                )
            out = {}
            if self.global_guide is not None:
                out.update(self.global_guide(*args, **kwargs))
            self._register()
            nets = self.nets  # outside the plate (see forward)
            plate, picked = self._data_plate(x, args, kwargs)
            self._call_plates = self._inner_plates()
            own = params if picked is None else {k: v[picked] for k, v in params.items()}
            with plate:
                out.update(self._sample_from_params(own, nets))
            return out

        return guide

    def _local_center(self, h: torch.Tensor) -> torch.Tensor:
        """A point in the flat unconstrained space per row, ``(n, D)``; subclasses."""
        raise NotImplementedError

    def _sample_auxiliary(self, aux_fn: dist.Distribution, n: int) -> dict[str, torch.Tensor]:
        """Sample one joint unconstrained row per datapoint from ``aux_fn`` (batch ``n`` at the
        data plate, event ``(D,)``) as an auxiliary site, and set every local site from it
        through a ``Delta`` carrying ``-log|det dT/du|`` (:mod:`pyro_aevb.poutine.auxiliary`)."""
        u = pyro.sample(
            f"_{self._pyro_name or type(self).__name__}_latent",
            aux_fn,
            infer={"is_auxiliary": True, UNCONSTRAINED_OF: self.layout.names},
        )
        if u.numel() != n * self.layout.dim:
            raise ProgramContractError(
                f"{type(self).__name__} draws one joint row of {self.layout.dim} coordinates "
                f"per datapoint, but its draw has shape {tuple(u.shape)} for {n} rows: it runs "
                f"under another vectorised plate (Trace_ELBO(vectorize_particles=True), "
                f"Predictive(parallel=True)), which joint guides do not support. Draw "
                f"particles one by one (vectorize_particles=False, parallel=False), or use "
                f"AmortizedNormal"
            )
        values, log_jac = self.layout.unflatten(u.reshape(n, self.layout.dim))
        out = {}
        for site in self.local_sites:
            with site.plates(self._call_plates):
                delta = dist.Delta(
                    values[site.name], log_density=-log_jac[site.name], event_dim=site.event_dim
                )
                out[site.name] = pyro.sample(site.name, delta)
        return out

    @property
    def samples_site_directly(self) -> bool:
        """Whether a joint (full-covariance or flow) guide puts its distribution on the model's
        site itself rather than on an auxiliary site: the model has one local site, a vector
        per datapoint ``(n, D)`` with no other plate. Only then can estimator B apply."""
        self._require_built()
        if len(self.local_sites) != 1:
            return False
        s = self.local_sites[0]
        return (
            s.event_dim == 1
            and s.u_event_dim == 1
            and not s.frames
            and s.u_plate_dim == -2
            and len(s.u_shape) == 1
        )

    def _row_batch(self, n: int) -> tuple[int, ...]:
        """The batch shape of a per-row joint distribution: ``n`` at the data plate's dim."""
        return (n,) + (1,) * (-self._plate_dim - 1)

    @torch.no_grad()
    def median(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Point estimates of every latent: the global guide's medians, and for each local
        site the transform of the guide's centre in unconstrained space (the median for the
        Gaussian guides; for a flow, the flow's image of its base median)."""
        if not self.built:
            with fork_rng():
                self._setup(*args, **kwargs)
        out = {} if self.global_guide is None else dict(self.global_guide.median(*args, **kwargs))
        x = self._data(args, kwargs)
        center = self._local_center(trunk_features(self.nets["trunk"], x))
        out.update(self.layout.unflatten_constrained(center))
        return out

    def extra_repr(self) -> str:
        if not self.built:
            return "not built yet (call it once with the model's arguments)"
        return f"plate={self.plate_name!r}, local={list(self.layout.names)}, D={self.layout.dim}"
