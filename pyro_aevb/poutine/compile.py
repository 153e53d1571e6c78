r"""Record the tensor arithmetic of a Pyro program once, and replay it without Pyro.

Every call of a Pyro program pays for Pyro's machinery on top of its arithmetic: a messenger
stack that handles each ``pyro.sample``/``pyro.param``/``pyro.module`` statement, a
:class:`~pyro.poutine.Trace` per run, distribution objects, scale and log-density
bookkeeping, and the autograd graph of all of it. On small networks this costs more than the
arithmetic itself. :func:`capture` runs a function of tensors once -- typically "trace the
programs, compute the loss, differentiate it" -- under :func:`torch.fx.experimental.
proxy_tensor.make_fx`, which records every ATen operation that reaches the tensors, and only
those: the result is a straight-line program over the inputs (a :class:`torch.fx.GraphModule`)
with the forward pass, the backward pass of ``torch.autograd.grad`` and the random draws, and
nothing of Pyro's Python. Running it computes exactly what the traced run computes:

* the same operations in the same order (the **replay** engine runs the recorded ATen calls
  one by one, so results are bitwise those of the eager run), or the same operations fused by
  :func:`torch.compile` (inductor) into C++ kernels (the **inductor** engine: equal to float
  rounding, much faster on small models, seconds to a minute to compile);
* the same random draws: random operations (``normal_``, ``bernoulli``, ...) are recorded as
  such and draw from torch's global RNG in the recorded order on every run, as Pyro's
  ``rsample`` does (inductor is told ``fallback_random=True`` so that it keeps them).

**What is recorded, and what is not.** The recording is specialised to the shapes, dtypes and
devices of its inputs and to the Python control flow taken while recording. Reading a tensor
value in Python (``bool(t)``, ``t.item()``, ``if x.sum() > 0``) on anything that depends on
the inputs cannot be recorded: :func:`capture` raises :class:`CaptureError` saying so, and the
caller keeps running the program under Pyro; so does an operation whose output's shape
depends on tensor values (boolean-mask indexing ``x[x > 0]``, ``nonzero``, ``unique``), whose
recorded shapes would not fit other data. Pyro's own argument validation reads values, so
recording runs with validation off (the caller validates on a traced run first), and
:func:`~pyro_aevb.validation.check_data` skips its value scans. Python state read by the
program (a counter, an annealing factor in an attribute, the set of sites it chooses to
sample) is frozen at recording time: callers compare a
:class:`~pyro_aevb.poutine.python_state.PythonState` snapshot before each run, and
:meth:`RecordedFunction.values_read_changed` for tensors whose values were read in Python
(``float(self.beta_buffer)``); :func:`structure_of` gives a signature of the sites, shapes,
plates, distribution types and scales of traces, which callers compare on a traced run now
and then to catch a program whose structure changes. A draw from a user's own
``torch.Generator``, or from Python's or NumPy's global generator, is refused (the recording
replays torch's global RNG only). Tensors the
function reads that are not inputs (buffers, constants) are read by reference at every run,
so in-place updates of them are seen; trainable tensors must be passed as inputs to get
their gradients.
"""

from __future__ import annotations

import contextlib
import random
import threading
import warnings
import weakref
from collections.abc import Callable, Sequence

import numpy as np
import pyro
import torch
from pyro.poutine.util import site_is_subsample
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from ..device import fork_rng
from ..distributions import distribution_name
from ..validation import value_checks_skipped

__all__ = [
    "ENGINES",
    "CaptureError",
    "RecordedFunction",
    "describe_error",
    "capture",
    "recording",
    "structure_of",
]

#: How a recording is run: ATen calls one by one (exact), or compiled by inductor (fused).
ENGINES = ("replay", "inductor")

# make_fx's message when a traced tensor's value is read in Python (aten._local_scalar_dense)
_DATA_DEPENDENT = ("_local_scalar_dense", "data-dependent", "get value out of a tracing tensor")


_aten = torch.ops.aten
# ATen operations whose output's shape depends on the values of their inputs: a recording
# holds the shapes of the run it was made on, so another batch would make it fail or, worse,
# compute on the wrong rows.
_VALUE_SHAPED = {
    _aten.nonzero,
    _aten.argwhere,
    _aten.masked_select,
    _aten._unique,
    _aten._unique2,
    _aten.unique_dim,
    _aten.unique_consecutive,
    _aten.bincount,
}
# Indexing is value-shaped when an index is a boolean mask (x[x > 0]).
_INDEXING = {_aten.index, _aten.index_put, _aten.index_put_, _aten._index_put_impl_}


def _varying_nodes(graph) -> set:
    """The nodes of a recorded graph whose values can change from one run to the next: the
    inputs, random draws, and everything computed from them (constants, e.g. a mask made
    by ``arange`` or held in a buffer, are the same at every run)."""
    varying = set()
    for node in graph.nodes:  # topological order
        random = node.op == "call_function" and torch.Tag.nondeterministic_seeded in getattr(
            node.target, "tags", ()
        )
        if node.op == "placeholder" or random or any(a in varying for a in node.all_input_nodes):
            varying.add(node)
    return varying


def _value_shaped_op(node, varying: set) -> str | None:
    """The name of ``node``'s operation if its output shape depends on values that can
    change between runs (``varying`` nodes)."""
    packet = getattr(node.target, "overloadpacket", None)
    if packet in _VALUE_SHAPED or (
        packet is _aten.repeat_interleave and node.target._overloadname != "self_int"
    ):
        return str(node.target) if any(a in varying for a in node.all_input_nodes) else None
    if packet in _INDEXING and len(node.args) > 1:
        if packet is not _aten.index and len(node.args) > 2:
            # x[mask] = c: filling with one value writes a shape-free result
            values = getattr(node.args[2], "meta", {}).get("val")
            if isinstance(values, torch.Tensor) and values.dim() == 0:
                return None
        for index in node.args[1] or ():
            val = getattr(index, "meta", {}).get("val")
            if (
                isinstance(val, torch.Tensor)
                and val.dtype in (torch.bool, torch.uint8)
                and index in varying
            ):
                return f"{node.target} with a boolean mask"
    return None


# Operations a recording holds but cannot run again: torch's oneDNN LSTM kernels (float32 on
# the CPU) pass a workspace tensor that make_fx does not keep.
_NOT_REPLAYABLE = {_aten.mkldnn_rnn_layer, _aten.mkldnn_rnn_layer_backward}


class CaptureError(ValueError):
    """A program whose arithmetic cannot be recorded (or compiled); the message says why."""


# Tensor methods that hand a tensor's values to Python.
_VALUE_READS = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.numpy,
    torch.Tensor.__array__,
    torch.Tensor.__bool__,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__index__,
}


# Torch functions that draw: their results change from run to run like the inputs do.
_RANDOM = {
    "rand",
    "randn",
    "randint",
    "randperm",
    "rand_like",
    "randn_like",
    "randint_like",
    "bernoulli",
    "normal",
    "multinomial",
    "poisson",
    "bernoulli_",
    "normal_",
    "uniform_",
    "exponential_",
    "random_",
    "cauchy_",
    "log_normal_",
    "geometric_",
    "dropout",
    "alpha_dropout",
    "feature_alpha_dropout",
    "rrelu",
}


def _tensors(obj):
    """The tensors in ``obj``, a tensor or nested tuples, lists and dicts of them."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, tuple | list):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


# Tensors read in Python up to this size are also compared by value: an in-place update
# through ``.data`` does not bump the version counter.
_READ_COPY_MAX = 4096


def _read_record(t: torch.Tensor) -> tuple:
    """What identifies the values of a tensor read in Python: (weak reference, version
    counter, storage address, a copy of small tensors)."""
    copy = t.detach().clone() if t.numel() <= _READ_COPY_MAX else None
    return weakref.ref(t), t._version, t.data_ptr(), copy


def _read_changed(record: tuple) -> bool:
    ref, version, address, copy = record
    t = ref()
    if t is None:
        return False
    if t._version != version or t.data_ptr() != address:
        return True
    return copy is not None and (t.shape != copy.shape or not torch.equal(t.detach(), copy))


class _ValueReads(TorchFunctionMode):
    """Refuse Python reads of values that depend on the recorded function's inputs.

    ``make_fx`` itself only stops at reads that reach the dispatcher (``.item()``, ``if t``);
    ``.tolist()`` and ``.numpy()`` read memory directly, and the value of the recording run
    would silently be baked in. Every tensor computed from an input is marked as it is made
    (a torch function with a marked argument marks its results, as does a random draw), and
    a read of a marked tensor raises :class:`CaptureError`. Reads of tensors that do not
    depend on the inputs (``float(self.beta)`` of a buffer or a constant) are baked into the
    recording like any Python state: the tensors they were computed from are listed in
    :attr:`reads` (weak references), so that a recording notices when one of them
    is updated in place (:meth:`RecordedFunction.values_read_changed`).
    """

    def __init__(self, inputs: Sequence[torch.Tensor], what: str):
        super().__init__()
        self.what = what
        self.marked = WeakIdKeyDictionary()
        for t in inputs:
            self.marked[t] = True
        # unmarked tensors computed in the run -> the tensors they were computed from
        self.sources = WeakIdKeyDictionary()
        self.reads: list = []

    def _sources(self, tensors) -> list:
        out = []
        for t in tensors:
            out.extend(self.sources.get(t, (t,)))
        return out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = list(_tensors((args, kwargs)))
        hit = any(t in self.marked for t in tensors)
        if func in _VALUE_READS:
            if hit:
                raise CaptureError(
                    f"{self.what} read a tensor value in Python (Tensor.{func.__name__}: "
                    f"data-dependent control flow such as `if x.sum() > 0`, or .item(), "
                    f".tolist(), .numpy()), which a recording cannot repeat"
                )
            self.reads.extend(weakref.ref(t) for t in self._sources(tensors))
        if kwargs.get("generator") is not None:
            # a recording replays draws from the global RNG only, and the recording run
            # itself would advance the user's generator
            raise CaptureError(
                f"{self.what} drew from a torch.Generator of the user's "
                f"({getattr(func, '__name__', func)}(generator=...)), which a recording cannot "
                f"repeat"
            )
        out = func(*args, **kwargs)
        if hit or getattr(func, "__name__", "") in _RANDOM:
            for t in _tensors(out):
                self.marked[t] = True
        elif tensors and func not in _VALUE_READS:
            sources = tuple({id(s): s for s in self._sources(tensors)}.values())
            for t in _tensors(out):
                if all(t is not s for s in sources):
                    self.sources[t] = sources
        return out


def describe_error(err: BaseException, limit: int = 300) -> str:
    """``"Type: first line of the message"`` (at most ``limit`` characters), for reasons."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text[:limit]}"


class RecordedFunction:
    """A function of tensors recorded by :func:`capture`; call it like the original.

    Attributes
    ----------
    graph_module : torch.fx.GraphModule
        The recorded ATen program.
    engine : str
        ``"replay"`` or ``"inductor"`` (after :meth:`compile`).
    input_shapes : tuple
        ``(shape, dtype, device)`` of each input it was recorded for.
    num_ops : int
        Operations in the recording.
    """

    def __init__(
        self,
        graph_module: torch.fx.GraphModule,
        inputs: Sequence[torch.Tensor],
        reads: Sequence = (),
    ):
        self.graph_module = graph_module
        self.input_shapes = tuple((tuple(t.shape), t.dtype, t.device) for t in inputs)
        self.engine = "replay"
        self._run = graph_module
        self.num_ops = sum(1 for n in graph_module.graph.nodes if n.op == "call_function")
        # (weak reference, version) of the tensors whose values the recorded run read in
        # Python, which the recording holds as constants
        self._reads = list(reads)

    def values_read_changed(self) -> bool:
        """Whether a tensor whose value the recorded run read in Python (not an input: a
        buffer, a constant) has been modified in place since; the recording then holds its
        old value. Tensors that no longer exist are not changes."""
        return any(_read_changed(r) for r in self._reads)

    def accept_values_read(self) -> None:
        """Take the current values of the tensors read as the recorded ones (after a check
        showed that the recording still computes what the program computes)."""
        self._reads = [_read_record(t) for r in self._reads if (t := r[0]()) is not None]

    def matches(self, inputs: Sequence[torch.Tensor]) -> bool:
        """Whether ``inputs`` have the shapes, dtypes and devices it was recorded for."""
        if len(inputs) != len(self.input_shapes):
            return False
        return all(
            (tuple(t.shape), t.dtype, t.device) == spec
            for t, spec in zip(inputs, self.input_shapes, strict=True)
        )

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # The recording holds the backward pass explicitly: no autograd graph is built here.
        with torch.no_grad():
            out = self._run(*[t.detach() for t in inputs])
        return tuple(out)

    def compile(self, engine: str, *example: torch.Tensor) -> None:
        """Switch to ``engine``. For ``"inductor"`` compile now with :func:`torch.compile`
        (seconds to a minute; torch caches the kernels on disk), running once on ``example``
        inputs (as for :meth:`__call__`) under a forked RNG. Raises :class:`CaptureError` if
        the compiler is unavailable or fails, and stays on the replay engine then."""
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
        if engine == self.engine:
            return
        if engine == "replay":
            self._run, self.engine = self.graph_module, "replay"
            return
        try:
            # fallback_random: torch's own random kernels, so the compiled program draws
            # exactly what the recorded one (and Pyro) draws, from the global RNG
            compiled = torch.compile(
                self.graph_module,
                backend="inductor",
                fullgraph=True,
                dynamic=False,
                options={"fallback_random": True},
            )
            with fork_rng(), torch.no_grad(), warnings.catch_warnings():
                # torch's own lowering calls a function torch deprecated; nothing a user of
                # this library could act on
                warnings.filterwarnings(
                    "ignore",
                    message=r"`torch\._prims_common\.check` is deprecated",
                    category=FutureWarning,
                )
                compiled(*[t.detach() for t in example])  # compiles
        except Exception as err:  # no C++ compiler, an unsupported operation, ...
            raise CaptureError(f"the inductor compiler failed: {describe_error(err)}") from err
        self._run, self.engine = compiled, "inductor"


def _simplify(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Drop what a run without autograd does not need: ``detach`` calls and dead code.

    Random operations count as side effects (torch.fx's default), so an unused draw is kept
    and the random stream stays that of the traced program.
    """
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten.detach.default:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    graph.eliminate_dead_code()
    graph.lint()
    gm.recompile()
    return gm


@contextlib.contextmanager
def _sample_checks_skipped():
    """No support checks of values in ``log_prob`` while recording.

    ``pyro.validation_enabled(False)`` only reaches distributions made from now on; one made
    before with validation on (a prior built once, as in ``PyroSample(dist.Normal(0, 1)
    .expand([d]))``) keeps checking its samples, a Python read of recorded values. The
    callers validate on traced runs.
    """
    Distribution = torch.distributions.Distribution
    original = Distribution.__dict__.get("_validate_sample")
    if original is None:  # a torch without this hook: nothing to switch off
        yield
        return
    Distribution._validate_sample = lambda self, value: None
    try:
        yield
    finally:
        Distribution._validate_sample = original


_state = threading.local()


@contextlib.contextmanager
def _recording_now():
    _state.recording = True
    try:
        yield
    finally:
        _state.recording = False


def recording() -> bool:
    """Whether :func:`capture` is recording now (on this thread): code that must not be part
    of a recording (a run of the model for a one-off check) asks first."""
    return getattr(_state, "recording", False)


def capture(
    fn: Callable[..., Sequence[torch.Tensor]],
    inputs: Sequence[torch.Tensor],
    *,
    what: str = "the programs",
) -> RecordedFunction:
    """Record ``fn(*inputs)`` (a flat sequence of tensors out) as a :class:`RecordedFunction`.

    ``fn`` runs once, for real, with Pyro's validation off and under a forked RNG (CPU and
    every GPU: the recording run never shifts the caller's random stream). Raises
    :class:`CaptureError` naming the reason when ``fn`` reads tensor values in Python or
    fails.
    """
    from torch.fx.experimental.proxy_tensor import make_fx

    inputs = list(inputs)

    def flat(*args):
        out = fn(*args)
        if not isinstance(out, tuple | list) or not all(isinstance(t, torch.Tensor) for t in out):
            raise TypeError("the recorded function must return a sequence of tensors")
        return tuple(out)

    python_rngs = _python_rng_states()
    try:
        with fork_rng(), pyro.validation_enabled(False):
            with value_checks_skipped(), _sample_checks_skipped(), torch.enable_grad():
                with _ValueReads(inputs, what) as reads, _recording_now():
                    gm = make_fx(flat, tracing_mode="real")(*inputs)
    except CaptureError:
        raise
    except Exception as err:
        message = str(err)
        if any(s in message for s in _DATA_DEPENDENT):
            raise CaptureError(
                f"{what} read a tensor value in Python (data-dependent control flow such as "
                f"`if x.sum() > 0`, or .item(); or inside a torch function that checks its "
                f"arguments' values, e.g. F.one_hot: use scatter_), which a recording cannot "
                f"repeat"
            ) from err
        raise CaptureError(f"recording {what} failed: {describe_error(err)}") from err
    drew = _restore_python_rngs(python_rngs)
    if drew:
        # a replay would take the branch of the recording run's draw at every step
        raise CaptureError(
            f"{what} drew from {drew}'s random number generator (e.g. random.random() or "
            f"np.random.rand() deciding a branch), which a recording cannot repeat; use "
            f"torch's (torch.rand) so that Pyro's seeding covers it"
        )
    varying = _varying_nodes(gm.graph)
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if getattr(node.target, "overloadpacket", None) in _NOT_REPLAYABLE:
            raise CaptureError(
                f"{what} used an LSTM through torch's oneDNN kernels ({node.target}, float32 "
                f"on the CPU), which a recording cannot run again (float64 records)"
            )
        op = _value_shaped_op(node, varying)
        if op is not None:
            raise CaptureError(
                f"{what} computed a tensor whose shape depends on tensor values ({op}: e.g. "
                f"boolean-mask indexing x[x > 0], nonzero or unique), which a recording "
                f"cannot repeat on other data"
            )
    # described after the run: a copy made inside it would be recorded too
    read = [_read_record(t) for r in reads.reads if (t := r()) is not None]
    return RecordedFunction(_simplify(gm), inputs, read)


def _python_rng_states() -> tuple:
    """The states of Python's and NumPy's global random number generators."""
    return random.getstate(), np.random.get_state()  # noqa: NPY002 -- the legacy global one


def _restore_python_rngs(states: tuple) -> str:
    """Put back the states of :func:`_python_rng_states` (a recording run must not shift the
    caller's streams); returns ``"Python"``/``"NumPy"`` if a run drew from one, else ``""``."""
    py, npy = states
    drew = []
    if random.getstate() != py:
        drew.append("Python")
        random.setstate(py)
    now = np.random.get_state()  # noqa: NPY002
    if now[0] != npy[0] or now[2:] != npy[2:] or not np.array_equal(now[1], npy[1]):
        drew.append("NumPy")
        np.random.set_state(npy)  # noqa: NPY002
    return " and ".join(drew)


def _scale_key(scale):
    # A tensor scale is described by its shape: reading its value would be a Python read of
    # a recorded tensor (an annealing factor in a buffer, a product with the N/M scale); a
    # change of its value is a change of the numbers, which the callers' checks compare.
    if isinstance(scale, torch.Tensor):
        return ("tensor", tuple(scale.shape))
    return float(scale)


def structure_of(*traces) -> tuple:
    """The static structure of Pyro traces: one entry per sample, plate and param site.

    A sample site gives its name, distribution type, value shape and dtype, whether it is
    observed, its event dimension, its plates (name, dim, size, full size), its scale (a
    number, or the shape of a tensor scale) and whether it is masked; a param site its name
    and shape. Two runs of a program with the same structure have equal signatures.
    """
    out = []
    for trace in traces:
        for name, site in trace.nodes.items():
            kind = site["type"]
            if kind == "param":
                out.append(("param", name, tuple(site["value"].shape)))
            elif kind == "sample" and site_is_subsample(site):
                out.append(("plate", name, tuple(site["value"].shape)))
            elif kind == "sample":
                fn, value = site["fn"], site["value"]
                frames = tuple(
                    (f.name, f.dim, f.size, f.full_size) for f in site["cond_indep_stack"]
                )
                out.append(
                    (
                        "sample",
                        name,
                        distribution_name(fn),
                        tuple(getattr(value, "shape", ())),
                        str(getattr(value, "dtype", "")),
                        bool(site["is_observed"]),
                        getattr(fn, "event_dim", None),
                        frames,
                        _scale_key(site["scale"]),
                        site["mask"] is None,
                    )
                )
    return tuple(out)
