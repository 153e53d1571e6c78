r"""A model/guide pair prepared for per-datapoint estimators.

Every per-datapoint estimator (the bound ``L_i``, IWAE, HMC, Appendix D, AIS, MCEM's E-step)
needs the same preparation, done once here:

* **The data plate covers every row given, exactly once.** Programs run under
  :class:`DataPlateRows`, which refuses a plate that subsamples its rows (``subsample_size``)
  or has another size than the rows given: a result is never for other rows than the caller's.
* **Local and global latents are told apart** from a trace: local latents live inside the
  data plate, global ones (shared by all datapoints, e.g. a noise scale ``sigma`` outside the
  plate) outside it.
* **Global latents are conditioned on a point estimate.** ``log p(x_i)`` of one datapoint is
  not defined while a latent shared with the others is integrated out, so every per-datapoint
  quantity here is conditional on the globals ``g``::

      L_i(g) = E_q(z_i | x_i, g)[log p(x_i, z_i | g) - log q(z_i | x_i, g)],
      log p(x_i | g) = log integral p(x_i, z_i | g) dz_i,

  with ``g`` fixed at ``global_values`` if given, else at the guide's point estimate
  (:func:`global_point_estimate`: the median of each global site's guide distribution, as
  :meth:`pyro.infer.autoguide.AutoGuide.median` defines it). The values used are reported in
  :attr:`PerDatapointProgram.settings`.
* **Model and guide must match**: every latent of the model has a guide site and the guide
  has no site the model lacks, except auxiliary ones (``infer={"is_auxiliary": True}``, see
  :mod:`~pyro_aevb.poutine.auxiliary`); a mismatch is an error naming the site.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_factor, site_is_subsample
from torch.distributions import biject_to

from ..device import fork_rng
from .auxiliary import is_auxiliary
from .layout import LatentLayout
from .params import buffers_kept, row_coupling_modules
from .plates import (
    ProgramContractError,
    RowsOutsidePlateError,
    SubsampledPlateError,
    latent_sites,
    plate_frame,
    require_plate,
    same_weight,
    sample_sites,
)
from .supports import check_guide_supports

__all__ = [
    "DataPlateRows",
    "site_mask",
    "ProgramContractError",
    "first_trace_errors",
    "PerDatapointProgram",
    "as_program",
    "global_point_estimate",
    "replicate_rows",
    "trace_guide_and_model",
]


def replicate_rows(x: torch.Tensor, num_copies: int) -> torch.Tensor:
    """Stack ``num_copies`` copies of ``x`` (shape ``(B, ...)``) into ``(num_copies * B, ...)``.

    Row ``c * B + i`` is ``x[i]``: the copy-major order used for several chains or particles
    per datapoint. A program run on the copies is an ordinary program on a bigger batch, so
    any user code that works on a batch (``cat``, ``reshape(-1, k)``, convolutions) works.
    """
    if num_copies == 1:
        return x
    return x.repeat((num_copies,) + (1,) * (x.dim() - 1))


@contextlib.contextmanager
def first_trace_errors(shape, what: str = "the model and guide", dtype=None):
    """Turn an error raised while first running the user's programs into one that says what
    was run on what, so that a raw torch or Pyro shape error never reaches the user alone.
    ``dtype``: the data's, named in the hint for a dtype mismatch (float64 data, float32
    parameters)."""
    try:
        yield
    except ProgramContractError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError, KeyError) as err:
        hint = ""
        bad = _non_finite_params()
        if bad:
            hint = (
                f" The parameter(s) {bad} of Pyro's param store hold non-finite values "
                f"(NaN or inf): check their initial values"
            )
        elif dtype is not None and "dtype" in str(err).lower():
            hint = (
                f" The data x is {dtype}: the programs' parameters or constants may be of "
                f"another dtype; convert x (x.float() / x.double()) or the modules "
                f"(module.to(x.dtype)), or pass dtype= to put the modules and the data in one"
            )
        raise ValueError(
            f"running {what} on x of shape {tuple(shape)} failed: {type(err).__name__}: "
            f"{err}. The programs are called as fn(x) with a batch x of shape "
            f"(batch, *event_shape), one datapoint per row, and per-datapoint sites inside "
            f"the data plate.{hint}"
        ) from err


def _non_finite_params() -> list[str]:
    """Names of Pyro param-store entries holding a NaN or inf (their constrained values)."""
    bad = []
    for name, value in pyro.get_param_store().items():
        with torch.no_grad():
            if isinstance(value, torch.Tensor) and not bool(torch.isfinite(value).all()):
                bad.append(name)
    return bad


class DataPlateRows(Messenger):
    """Require the data plate to cover exactly the ``rows`` rows given, each once.

    Raises ``ValueError`` when the plate draws its own subsample (``subsample_size``), has
    another size, or is given a subsample of another length.
    """

    def __init__(self, plate_name: str, rows: int):
        super().__init__()
        self.plate_name = plate_name
        self.rows = rows

    def _process_message(self, msg) -> None:
        if msg["name"] != self.plate_name or not site_is_subsample(msg):
            return
        fn = msg["fn"]
        given = msg["value"]
        if given is not None:
            if len(given) != self.rows:
                raise ProgramContractError(
                    f"the data plate '{self.plate_name}' is given a subsample of {len(given)} "
                    f"indices but there are {self.rows} rows: per-datapoint estimators need "
                    f"one plate entry per row of x"
                )
            return
        if fn.subsample_size not in (None, fn.size):
            raise ProgramContractError(
                f"the data plate '{self.plate_name}' subsamples {fn.subsample_size} of its "
                f"{fn.size} rows (subsample_size=): a per-datapoint result would be for other "
                f"rows than the {self.rows} given. Remove subsample_size from "
                f"pyro.plate('{self.plate_name}', ...) (pyro_aevb.fit draws minibatches itself)"
            )
        if fn.size != self.rows:
            raise ProgramContractError(
                f"the data plate '{self.plate_name}' has size {fn.size} but x has {self.rows} "
                f"rows; size the plate from the data, pyro.plate('{self.plate_name}', len(x))"
            )


def _with_rows(fn: Callable, plate_name: str) -> Callable:
    def wrapped(x, *args, **kwargs):
        with DataPlateRows(plate_name, x.shape[0]):
            return fn(x, *args, **kwargs)

    wrapped.__wrapped__ = fn
    return wrapped


def trace_guide_and_model(model: Callable, guide: Callable, *args, **kwargs):
    """``(guide_trace, model_trace)``: the guide traced, and the model replayed on its draws."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return guide_trace, model_trace


def _base(fn):
    while isinstance(fn, dist.Independent | torch.distributions.Independent):
        fn = fn.base_dist
    return fn


_LOC_FAMILIES = (dist.Normal, dist.StudentT, dist.Cauchy, dist.Laplace)


def _median(fn, value: torch.Tensor, num_draws: int) -> torch.Tensor:
    """A point estimate of a guide site: its median where known in closed form, else the
    image of the mean of draws in the unconstrained space of the site's support (always inside
    the support; the median for any monotone transform of a symmetric family)."""
    base = _base(fn)
    if isinstance(base, dist.Delta):
        return base.v.expand_as(value)
    if isinstance(base, _LOC_FAMILIES):
        return base.loc.expand_as(value)
    if isinstance(base, dist.LogNormal):
        return base.loc.exp().expand_as(value)
    if isinstance(base, torch.distributions.TransformedDistribution) and isinstance(
        _base(base.base_dist), _LOC_FAMILIES
    ):
        out = _base(base.base_dist).loc
        for t in base.transforms:
            out = t(out)
        return out.expand_as(value)
    transform = biject_to(fn.support)
    with torch.no_grad():
        draws = fn.sample((num_draws,))
        return transform(transform.inv(draws).mean(0))


class _AuxiliaryAtPointEstimates(Messenger):
    """Auxiliary guide sites take their point estimate (:func:`_median`), not a draw: a
    global set through a ``Delta`` from an auxiliary draw (Pyro's ``AutoNormal`` inside a
    guide of the user's, joint guides) then sits at the point estimate of that draw."""

    def __init__(self, num_draws: int):
        super().__init__()
        self.num_draws = num_draws

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or msg["value"] is not None or not is_auxiliary(msg):
            return
        fn = msg["fn"]
        shape = tuple(fn.batch_shape) + tuple(fn.event_shape)
        template = torch.empty(shape, dtype=torch.get_default_dtype())
        msg["value"] = _median(fn, template, self.num_draws)
        msg["done"] = True


@torch.no_grad()
def global_point_estimate(
    guide: Callable, x: torch.Tensor, names, num_draws: int = 1000
) -> dict[str, torch.Tensor]:
    """Point estimates of the global latent sites ``names`` from the guide.

    A Pyro autoguide (anything with a ``median(*args)`` method) gives its own medians;
    otherwise each site's guide distribution gives its median (:func:`_median`). Draws use a
    forked RNG with a fixed seed, so this never shifts the caller's random stream.
    """
    names = list(names)
    median = getattr(getattr(guide, "__wrapped__", guide), "median", None)
    if callable(median):
        with fork_rng(), poutine.block():
            torch.manual_seed(0)
            values = median(x)
        missing = [n for n in names if n not in values]
        if not missing:
            return {n: values[n].detach() for n in names}
    with fork_rng(), poutine.block(), _AuxiliaryAtPointEstimates(num_draws):
        torch.manual_seed(0)
        trace = poutine.trace(guide).get_trace(x)
        out = {}
        for n in names:
            if n not in trace.nodes:
                raise ValueError(f"the guide has no site for the model's global latent '{n}'")
            site = trace.nodes[n]
            out[n] = _median(site["fn"], site["value"], num_draws).detach()
    return out


class PerDatapointProgram:
    """A model (and guide) ready for per-datapoint estimators; see the module docstring.

    Parameters
    ----------
    model : callable
        Pyro model called as ``model(x)``; per-datapoint sites inside
        ``pyro.plate(plate_name, len(x))``.
    guide : callable, optional
        Pyro guide ``guide(x)`` over the model's latents.
    x : torch.Tensor
        ``(B, *event_shape)`` observations the estimator will run on; the programs are
        traced once on them.
    plate_name : str
        Name of the data plate.
    global_values : dict, optional
        Values of the model's global latents to condition on; default: the guide's point
        estimate (required if the model has globals and there is no guide).
    warn : bool
        Warn about what makes per-datapoint densities differ from the model's own: scales
        inside the data plate, BatchNorm or dropout in training mode. ``False`` for a caller
        that only checks the contract (a training objective that applies the scales).

    Attributes
    ----------
    model, guide : callable
        The programs with globals conditioned and the data plate checked, called as ``fn(x)``.
    local_names, global_names : tuple of str
        The model's latent sites inside / outside the data plate.
    global_values : dict of str to torch.Tensor
        What the globals are conditioned on (empty without globals).
    layout : LatentLayout
        The local latents' unconstrained layout.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable | None,
        x: torch.Tensor,
        *,
        plate_name: str = "data",
        global_values: dict | None = None,
        warn: bool = True,
    ):
        if isinstance(model, PerDatapointProgram):
            raise TypeError("model is already a PerDatapointProgram; pass its .model")
        self.plate_name = plate_name
        self.raw_model, self.raw_guide = model, guide
        model_r = _with_rows(model, plate_name)
        guide_r = None if guide is None else _with_rows(guide, plate_name)
        # Traced on the rows the estimator will use: a guide with per-datapoint parameters
        # (pyro.param of shape (len(x), ...)) creates them here, so they must have that size.
        with first_trace_errors(x.shape, dtype=x.dtype), poutine.block(), torch.no_grad():
            with fork_rng(), buffers_kept() as called:
                if guide_r is not None:
                    guide_trace, model_trace = trace_guide_and_model(model_r, guide_r, x)
                else:
                    guide_trace, model_trace = None, poutine.trace(model_r).get_trace(x)
        require_plate(model_trace, plate_name, "model")
        for trace in (model_trace, guide_trace):
            _check_only_data_plate_subsamples(trace, plate_name)
        _check_site_shapes(model_trace, plate_name)
        _check_observed_rows(model_trace, plate_name, x.shape[0])
        check_rows_stay_in_plate(model_r, x, plate_name)
        if warn:
            _warn_scaled_sites(plate_name, model_trace, guide_trace)
        coupling = row_coupling_modules(called) if warn else []
        if coupling:
            warnings.warn(
                f"the programs run {', '.join(coupling)} layers in training mode: there each "
                f"row's density depends on the other rows of the batch (batch statistics) or "
                f"on chance (dropout), so per-datapoint bounds, log p(x_i) estimates and HMC "
                f"are not those of the model; call .eval() on the modules first",
                UserWarning,
                stacklevel=3,
            )
        latents = latent_sites(model_trace)
        self.local_names = tuple(n for n, s in latents.items() if plate_frame(s, plate_name))
        #: Latent sites the model masks in part (their masked entries carry no density).
        self.masked_names = tuple(n for n, s in latents.items() if site_mask(s) is not None)
        self.global_names = tuple(n for n in latents if n not in self.local_names)
        given = dict(global_values or {})
        if guide_trace is not None:
            _check_guide_matches(model_trace, guide_trace, plate_name, skip=given)
        if self.global_names:
            missing = [n for n in self.global_names if n not in given]
            if missing and guide is None:
                raise ValueError(
                    f"the model has global latent sites {missing} (outside the plate "
                    f"'{plate_name}') and there is no guide to estimate them: pass "
                    f"global_values={{name: value}} to condition on"
                )
            if missing:
                given.update(global_point_estimate(guide_r, x, missing))
            unknown = sorted(set(given) - set(self.global_names))
            if unknown:
                raise ValueError(
                    f"global_values names {unknown}, which are not global latent sites of the "
                    f"model (its globals: {list(self.global_names)})"
                )
            self.global_values = {n: torch.as_tensor(given[n]) for n in self.global_names}
            model_r = poutine.condition(model_r, data=self.global_values)
            guide_r = None if guide_r is None else poutine.condition(guide_r, self.global_values)
        else:
            if global_values:
                raise ValueError(
                    f"global_values given for {sorted(global_values)}, but the model has no "
                    f"global latent site"
                )
            self.global_values = {}
        self.model, self.guide = model_r, guide_r
        #: The ``nn.Module`` objects whose forward the programs ran when traced here.
        self.called_modules = called
        self._model_trace = _conditioned(model_trace, self.global_names)
        first = model_trace.nodes[self.local_names[0]]["value"] if self.local_names else x
        self.dtype = first.dtype
        self._layout = None

    def check_no_masked_latents(self, what: str, instead: str) -> None:
        """Refuse latents the model masks in part: MCMC draws of their masked entries (which
        carry no density) are an unbounded random walk, so ``what`` would describe those
        instead of the posterior; ``instead`` says what to use."""
        if self.masked_names:
            raise ValueError(
                f"latent site(s) {list(self.masked_names)} are masked in the model (entries "
                f"with no density there, as Pyro's obs_mask makes for the missing entries): HMC "
                f"draws of those entries are an unbounded random walk, so {what} would not be "
                f"the posterior's; {instead}"
            )

    @property
    def layout(self) -> LatentLayout:
        """The local latents' unconstrained layout (raises for a model without local latents)."""
        if self._layout is None:
            self._layout = LatentLayout.from_trace(self._model_trace, self.plate_name)
        return self._layout

    @property
    def settings(self) -> dict:
        """What the per-datapoint results are conditional on (JSON-friendly)."""
        out: dict = {"plate_name": self.plate_name}
        if self.global_values:
            out["globals_conditioned_on"] = {
                n: v.detach().cpu().tolist() for n, v in self.global_values.items()
            }
        return out


def _conditioned(trace, names):
    """A shallow copy of ``trace`` with the sites ``names`` marked observed (for the layout)."""
    if not names:
        return trace
    trace = trace.copy()
    for n in names:
        trace.nodes[n] = {**trace.nodes[n], "is_observed": True}
    return trace


def _check_site_shapes(trace, plate_name: str) -> None:
    """Every value in the data plate fits its distribution's shape: an observation of the
    wrong width is an error here, named, not a broadcasting error at the first evaluation."""
    for name, site in sample_sites(trace):
        if plate_frame(site, plate_name) is None:
            continue
        fn, value = site["fn"], site["value"]
        shape = tuple(fn.batch_shape) + tuple(fn.event_shape)
        try:
            torch.broadcast_shapes(tuple(value.shape), shape)
        except RuntimeError:
            raise ProgramContractError(
                f"site '{name}' has a value of shape {tuple(value.shape)}, which does not fit "
                f"its distribution's batch and event shape {shape}; check the shape of x "
                f"(one datapoint per row) against the model"
            ) from None


def _check_only_data_plate_subsamples(trace, plate_name: str) -> None:
    """No plate but the data plate subsamples: a per-datapoint density summed over a random
    subset of another plate is a random estimate of it (HMC and AIS would target a different
    density at every step), and its ``full_size / size`` scale is not applied per datapoint."""
    for name, site in sample_sites(trace) if trace is not None else ():
        for f in site["cond_indep_stack"]:
            if f.name != plate_name and f.full_size not in (None, f.size):
                raise SubsampledPlateError(
                    f"site '{name}' is inside the plate '{f.name}', which subsamples {f.size} "
                    f"of {f.full_size}: per-datapoint densities (bounds, log p(x_i), HMC, AIS) "
                    f"need every entry of plates other than '{plate_name}'; run the model "
                    f"with that plate in full (subsample_size=None) for these estimators"
                )


def _warn_scaled_sites(plate_name: str, *traces) -> None:
    """Warn about sites in the data plate that carry a scale (``poutine.scale``): the
    per-datapoint quantities are the model's own densities of each datapoint, so a scale put
    there (a tempered likelihood, a KL weight) is not applied, and the user should know."""
    scaled = {}
    for trace in traces:
        for name, site in sample_sites(trace) if trace is not None else ():
            if plate_frame(site, plate_name) is None:
                continue
            # the subsampling scale of the site's plates (a model that takes num_data and
            # subsamples its plate) is not the user's: only what is left over counts
            subsampling = 1.0
            for f in site["cond_indep_stack"]:
                if f.full_size is not None and f.size:
                    subsampling *= f.full_size / f.size
            scale = site["scale"] / subsampling
            if isinstance(scale, torch.Tensor):
                if not torch.allclose(scale, torch.ones_like(scale)):
                    scaled[name] = "a tensor"
            elif not math.isclose(scale, 1.0, rel_tol=1e-6):
                scaled[name] = f"{scale:g}"
    if scaled:
        sites = ", ".join(f"'{n}' by {v}" for n, v in scaled.items())
        warnings.warn(
            f"site(s) inside the data plate '{plate_name}' are scaled ({sites}: "
            f"poutine.scale); per-datapoint bounds and log p(x_i) estimates use the unscaled "
            f"log-densities of each datapoint, so these scales are not applied",
            UserWarning,
            stacklevel=3,
        )


def check_rows_stay_in_plate(model: Callable, x: torch.Tensor, plate_name: str) -> None:
    """No site outside the data plate has a shape that follows the number of rows.

    Such a site holds the rows without the plate knowing: an observation ``x`` sampled after
    the plate (or in a second plate over the same rows) is left out of every per-datapoint
    density and gets no minibatch scale ``N/M``; a per-row latent sampled outside the plate
    would be taken for a global one and conditioned on a point estimate. The model (which
    ran on ``x``) is run twice more, alone, on the first 2 and 3 rows
    (cheap whatever the size of ``x``; for fewer rows, on one row fewer or two copies), and
    the shapes of the sites outside the plate compared. A program that cannot run on those
    rows (a parameter sized to the rows) is not checked further. Raises
    :class:`~pyro_aevb.poutine.plates.RowsOutsidePlateError`.
    """
    rows = x.shape[0]
    if rows >= 3:
        pair = (x[:2], x[:3])
    else:
        pair = (x, x[:-1] if rows == 2 else torch.cat([x, x]))
    try:
        with poutine.block(), torch.no_grad(), fork_rng(), buffers_kept():
            first, other = (poutine.trace(model).get_trace(xs) for xs in pair)
    except Exception:  # a check only: the programs ran on x itself
        return
    rows, other_x = pair[0].shape[0], pair[1]
    for name, site in sample_sites(first):
        if plate_frame(site, plate_name) is not None:
            continue
        again = other.nodes.get(name)
        if again is None or again["type"] != "sample":
            continue
        shape, shape_again = tuple(site["value"].shape), tuple(again["value"].shape)
        if shape == shape_again:
            continue
        seen = f"shape {shape} for {rows} rows, {shape_again} for {other_x.shape[0]}"
        if site["is_observed"] or site_is_factor(site):
            raise RowsOutsidePlateError(
                f"observed site '{name}' is outside the data plate '{plate_name}' but its "
                f"shape follows the rows of x ({seen}): per-datapoint densities count only "
                f"the sites inside the plate, and the minibatch scale N/M applies only there. "
                f"Observe it inside pyro.plate('{plate_name}', len(x)) (its per-row dims as "
                f".to_event)"
            )
        raise RowsOutsidePlateError(
            f"latent site '{name}' is outside the data plate '{plate_name}' but its shape "
            f"follows the rows of x ({seen}): it would be taken for a global latent shared by "
            f"all rows. Sample it inside pyro.plate('{plate_name}', len(x)) (its per-row dims "
            f"as .to_event)"
        )


def _check_observed_rows(trace, plate_name: str, rows: int) -> None:
    """Every observation inside the data plate has one entry per row along the plate: an
    observation without that dimension would be scored against every row."""
    for name, site in sample_sites(trace):
        frame = plate_frame(site, plate_name)
        if frame is None or not site["is_observed"] or site_is_factor(site):
            continue
        value, event_dim = site["value"], site["fn"].event_dim
        dim = frame.dim - event_dim
        if value.dim() < -dim or value.shape[dim] != rows:
            raise ProgramContractError(
                f"observed site '{name}' has value shape {tuple(value.shape)} (event dims "
                f"{event_dim}), which has no dimension of size {rows} for the plate "
                f"'{plate_name}' (dim {frame.dim}): each row of x must be one datapoint; check "
                f"the shape of x and the site's event dimensions (.to_event)"
            )


def _check_guide_matches(model_trace, guide_trace, plate_name: str, skip=()) -> None:
    model_latents = latent_sites(model_trace)
    guide_sites = dict(sample_sites(guide_trace))
    extra = [
        n for n, s in guide_sites.items() if n not in model_trace.nodes and not is_auxiliary(s)
    ]
    if extra:
        raise ProgramContractError(
            f"guide site(s) {extra} are not in the model: a guide-only variable must be marked "
            f"auxiliary, infer={{'is_auxiliary': True}}, so that its log q is counted in the "
            f"per-datapoint bounds and importance weights; mark it, remove it from the guide "
            f"or add it to the model"
        )
    missing = [n for n in model_latents if n not in guide_sites and n not in skip]
    if missing:
        raise ProgramContractError(
            f"model latent site(s) {missing} have no site in the guide; the guide must sample "
            f"every latent of the model (guide sites: {list(guide_sites)})"
        )
    check_guide_supports({n: s for n, s in model_latents.items() if n not in skip}, guide_sites)
    for n, s in model_latents.items():
        if n in skip:
            continue
        if plate_frame(s, plate_name) and not plate_frame(guide_sites[n], plate_name):
            raise ProgramContractError(
                f"latent site '{n}' is inside the data plate '{plate_name}' in the model but "
                f"not in the guide; sample it inside pyro.plate('{plate_name}', len(x)) there too"
            )
        model_mask = site_mask(s)
        if model_mask is not None and not same_weight(model_mask, site_mask(guide_sites[n])):
            raise ProgramContractError(
                f"latent site '{n}' is masked in the model (some of its entries carry no "
                f"density there; Pyro's obs_mask makes such a site for the missing entries), "
                f"but the guide does not mask the same entries: the bounds and importance "
                f"weights would count the guide's density of entries the model does not have. "
                f"Mask them in the guide too (pyro.poutine.mask(mask=...) around its site), or "
                f"mask the likelihood instead (its .mask(observed) integrates the missing "
                f"entries out)"
            )


def site_mask(site: dict) -> torch.Tensor | bool | None:
    """The site's mask if it masks anything (``False`` or a tensor with a ``False`` entry),
    else ``None``: ``poutine.mask``'s or ``obs_mask``'s (the site's ``mask``), or that of a
    distribution made with ``.mask(m)`` (a ``MaskedDistribution``, also inside
    ``.to_event``)."""
    masks = [site.get("mask")]
    fn = site.get("fn")
    while fn is not None:
        if isinstance(fn, dist.MaskedDistribution):
            masks.append(fn._mask)
        fn = getattr(fn, "base_dist", None)
    for mask in masks:
        if mask is None or mask is True:
            continue
        if isinstance(mask, torch.Tensor) and bool(mask.all()):
            continue
        return mask
    return None


def as_program(
    model,
    guide: Callable | None,
    x: torch.Tensor,
    *,
    plate_name: str = "data",
    global_values: dict | None = None,
) -> PerDatapointProgram:
    """``model`` if it is already a :class:`PerDatapointProgram`, else one built from the
    pair and ``x``."""
    if isinstance(model, PerDatapointProgram):
        return model
    return PerDatapointProgram(model, guide, x, plate_name=plate_name, global_values=global_values)
