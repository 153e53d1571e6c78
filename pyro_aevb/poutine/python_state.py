r"""A cheap snapshot of the Python state a pair of programs reads besides its tensor inputs.

A recorded program (:mod:`pyro_aevb.poutine.compile`) holds the Python state of the run it was
made on: an annealing factor in an attribute (``self.beta = 0.5``), a flag that adds a site,
``module.eval()``, a frozen parameter (``requires_grad_(False)``), a replaced submodule or
param-store entry, a global variable of a plain-function program. Changing any of them between
replays would silently give the old numbers. :class:`PythonState` takes, in tens of
microseconds, a snapshot of everything of that kind it can see -- so that a caller compares it
before each replay and re-checks (training) or re-records (potentials) when it changed:

* of every ``nn.Module`` the programs own or run (and their submodules): its public
  attributes (of a module of the user's class, its private ones too, ``self._beta``) --
  numbers, strings, ``None`` and flags (``training``) by value, anything else (a tensor, a
  tuple, an object) by identity -- which parameters, buffers and submodules it
  holds, each parameter's ``requires_grad``, and a ``PyroModule``'s ``PyroSample`` priors
  and ``PyroParam`` declarations;
* of the object behind a bound-method program that is not a module: the same attributes;
* of the programs' functions, the functions and lambdas defined inside them, and the helper
  functions of their own module they name: the global variables and closure cells they
  name (likewise; a plain object's public attributes, a small dict's, list's or tuple's
  entries one level deep);
* of Pyro's param store: which tensor each name holds.

:meth:`settle` compares the snapshots before and after a recording run: programs that change
their own numbers or flags while running (a counter incremented inside the model) cannot be
replayed, and objects they rebuild at every run are not watched. What a snapshot cannot see:
changes two levels down (``cfg.opts.beta``), inside containers of more than
:data:`MAX_ENTRIES` entries, and state read by functions of other modules. In-place updates
of tensors are not changes (a recording reads tensors by reference); the values of tensors
read in Python while recording are watched by the recording itself
(:meth:`~pyro_aevb.poutine.compile.RecordedFunction.values_read_changed`).
"""

from __future__ import annotations

import functools
import sys
import types
from collections.abc import Callable, Iterable

import pyro
import torch
from pyro.nn import PyroModule
from torch import nn

from .params import owner_modules

__all__ = ["PythonState"]

_SCALARS = frozenset({int, float, bool, str, complex, type(None)})


def _value(value):
    """What is compared of a value: numbers, strings and ``None`` by value, anything else
    (tensors, modules, objects, containers) by identity, as ``(id,)``."""
    return value if type(value) in _SCALARS else (id(value),)


#: The attributes torch and Pyro keep in a module's ``__dict__`` (parameters, buffers,
#: submodules and hooks are compared apart; the rest does not change the numbers).
_MODULE_INTERNALS = frozenset(
    k for k in [*vars(nn.Module()), *vars(PyroModule())] if k.startswith("_")
)


def _attributes(d: dict, ignored, deep: bool = False) -> tuple:
    """``(name, value)`` of an object's public attributes (see :func:`_value`); with ``deep``
    (an object of the user's class), its private ones too (``self._beta``), except torch's
    and Pyro's module internals, and one level into a config object, dict or list it holds
    (``self.cfg.beta``, ``self.hparams["beta"]``; see :func:`_shallow`)."""
    if deep:
        skip = _MODULE_INTERNALS.union(ignored) if ignored else _MODULE_INTERNALS
        return tuple(
            [
                (k, v if type(v) in _SCALARS else _shallow(v))
                for k, v in d.items()
                if k not in skip and k[:2] != "__"
            ]
        )
    if ignored:
        return tuple([(k, _value(v)) for k, v in d.items() if k[0] != "_" and k not in ignored])
    return tuple([(k, v if type(v) in _SCALARS else (id(v),)) for k, v in d.items() if k[0] != "_"])


#: Containers (dict, list, tuple) with at most this many entries are watched entry by entry.
MAX_ENTRIES = 64
#: At most this many functions are watched (the programs' and the helpers they name).
MAX_FUNCTIONS = 32
#: An attribute shown not to change the numbers at this many consecutive steps (a step
#: counter) is no longer watched (:meth:`PythonState.harmless`).
IGNORE_AFTER_CONSECUTIVE = 3


def _plain_object(value) -> bool:
    """An instance of a user's class (its attributes are watched one level deep)."""
    return (
        hasattr(value, "__dict__")
        and not isinstance(
            value,
            (type, types.ModuleType, types.FunctionType, types.MethodType, nn.Module, torch.Tensor),
        )
        and type(value).__module__ not in ("builtins", "functools")
    )


def _shallow(value, names: tuple = ()):
    """:func:`_value`, and one level into a small container or a plain object: a rebound
    ``cfg.beta``, ``params["w"]`` or ``scales[0]`` read by a program is a change; of a module
    or class of the user's (``settings.noise``, ``Config.noise``), the attributes among
    ``names`` (the names the reading code uses)."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if (kind is types.ModuleType or isinstance(value, type)) and names and _user_code(value):
        d = vars(value)
        return (id(value), tuple([(n, _value(d[n])) for n in names if n in d]))
    if isinstance(value, dict) and len(value) <= MAX_ENTRIES:  # OrderedDict, defaultdict too
        return (id(value), tuple([(k, _value(v)) for k, v in value.items() if type(k) in _SCALARS]))
    if isinstance(value, list | tuple) and len(value) <= MAX_ENTRIES:
        return (id(value), tuple([_value(v) for v in value]))
    if _plain_object(value):
        return (id(value), _attributes(value.__dict__, None))
    return (id(value),)


def _pyro_entries(d: dict) -> tuple:
    """A PyroModule's ``_pyro_samples`` and ``_pyro_params`` entries, by identity."""
    samples, params = d.get("_pyro_samples"), d.get("_pyro_params")
    if not samples and not params:
        return ()
    return tuple([(k, id(v)) for k, v in (samples or {}).items()]) + tuple(
        [(k, id(v)) for k, v in (params or {}).items()]
    )


def _functions(program: Callable) -> list:
    """The plain functions behind a program: a function, a bound method's function, a
    callable object's ``__call__``, and through ``functools.partial`` (Pyro's handlers,
    ``poutine.scale(model, s)``, are partials of a library function and the model) the
    function it wraps and the functions among its arguments; library functions left out."""
    out = []
    stack = [program]
    while stack:
        p = stack.pop()
        if isinstance(p, functools.partial):
            stack.extend([p.func, *[a for a in p.args if callable(a)]])
            continue
        fn = getattr(p, "__func__", p)
        if not hasattr(fn, "__code__") and callable(fn) and _user_code(type(fn)):
            # a callable object of the user's class (an nn.Module's __call__ is torch's)
            fn = getattr(type(fn).__call__, "__func__", type(fn).__call__)
        if (
            hasattr(fn, "__code__")
            and hasattr(fn, "__globals__")
            and str(getattr(fn, "__module__", "")).split(".")[0] not in _LIBRARY_FUNCTIONS
        ):
            out.append(fn)
    return out


def _owner(program: Callable):
    """The object whose attributes a program reads: a bound method's owner, a callable
    object (not a plain function), through ``functools.partial``."""
    while isinstance(program, functools.partial):
        program = program.func
    owner = getattr(program, "__self__", None)
    if owner is None and not isinstance(program, (types.FunctionType, type)):
        owner = program
    return owner


def _partials(program: Callable) -> list:
    """The ``functools.partial`` objects around a program (their bound arguments are read)."""
    out = []
    while isinstance(program, functools.partial):
        out.append(program)
        program = program.func
    return out


# Functions of these packages are not watched (Pyro's handler wrappers, torch's functions).
_LIBRARY_FUNCTIONS = ("torch", "pyro", "numpy", "scipy", "functools")

_LIBRARIES = (
    "pyro_aevb",
    "torch",
    "pyro",
    "numpy",
    "scipy",
    "builtins",
    "functools",
    "typing",
    "abc",
)


@functools.lru_cache(maxsize=4096)
def _user_code(obj) -> bool:
    """Whether a class or module is the user's (not Python's, torch's, Pyro's, ...)."""
    name = getattr(obj, "__module__", None) if isinstance(obj, type) else obj.__name__
    if not isinstance(name, str) or not name:
        return False
    root = name.split(".")[0]
    return root not in _LIBRARIES and root not in sys.stdlib_module_names


def _user_classes(objects) -> list[type]:
    """The user's classes in the MROs of ``objects``' types (their class attributes and
    methods are read through ``self``)."""
    out: list[type] = []
    for obj in objects:
        for cls in type(obj).__mro__:
            if _user_code(cls) and all(cls is not c for c in out):
                out.append(cls)
    return out


def _class_attributes(cls: type) -> tuple:
    """A class's attributes holding numbers, strings, flags or ``None`` (private ones too,
    ``Config._noise``; not Python's dunders)."""
    return tuple([(k, v) for k, v in vars(cls).items() if k[:2] != "__" and type(v) in _SCALARS])


def _names(code: types.CodeType) -> tuple:
    """The global names ``code`` and the functions and lambdas defined in it may read."""
    names = dict.fromkeys(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.update(dict.fromkeys(_names(const)))
    return tuple(names)


def _with_helpers(functions: list) -> list:
    """``functions`` and the functions of their own module they name (transitively)."""
    out = list(functions)
    i = 0
    while i < len(out) and len(out) < MAX_FUNCTIONS:
        fn = out[i]
        i += 1
        glob = fn.__globals__
        cells = []
        for cell in fn.__closure__ or ():
            try:
                cells.append(cell.cell_contents)
            except ValueError:  # an empty cell
                pass
        for value in [glob.get(n) for n in _names(fn.__code__)] + cells:
            if (
                isinstance(value, types.FunctionType)
                and value.__module__ == fn.__module__
                and all(value is not f for f in out)
                and len(out) < MAX_FUNCTIONS
            ):
                out.append(value)
    return out


class PythonState:
    """Snapshots of the Python state of ``programs`` (see the module docstring).

    Parameters
    ----------
    programs : callables
        The model and guide as the user wrote them (functions, bound methods, modules).
    modules : iterable of nn.Module
        Further modules the programs use (``pyro.module`` registrations, modules whose
        forward ran); their submodules are included.
    """

    def __init__(self, programs: Iterable[Callable], modules: Iterable[nn.Module] = ()):
        programs = [p for p in programs if p is not None]
        roots: list[nn.Module] = list(owner_modules(*programs))
        for m in modules:
            if all(m is not r for r in roots):
                roots.append(m)
        seen: set[int] = set()
        self._modules: list[nn.Module] = []
        for root in roots:
            for sub in root.modules():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    self._modules.append(sub)
        self._objects = []
        for p in programs:
            owner = _owner(p)
            if owner is None or isinstance(owner, nn.Module):
                continue
            if all(owner is not o for o in self._objects):
                self._objects.append(owner)
        # modules of the user's classes: their config objects are watched one level deep
        self._deep = [_user_code(type(m)) for m in self._modules]
        self._partials = [q for p in programs for q in _partials(p)]
        # the user's classes of the modules and objects: class attributes read through
        # ``self``, and methods (a ``forward``, ``self.noise_scale()``) whose globals count
        self._classes = _user_classes([*self._modules, *self._objects])
        methods = [
            v
            for cls in self._classes
            for v in vars(cls).values()
            if isinstance(v, types.FunctionType)
        ]
        own = [f for p in programs for f in _functions(p)]
        methods = [m for m in methods if m.__code__.co_names or m.__closure__]
        self._functions = _with_helpers(own + methods[: max(0, MAX_FUNCTIONS - len(own))])
        # the globals the functions read, one entry per module namespace: (namespace, names,
        # the first function's name); and the functions with closure cells
        groups: dict[int, tuple] = {}
        for f in self._functions:
            glob, names, first = groups.get(id(f.__globals__), (f.__globals__, {}, f.__name__))
            names.update(dict.fromkeys(_names(f.__code__)))
            groups[id(glob)] = (glob, names, first)
        self._globals = [(g, tuple(names), first) for g, names, first in groups.values()]
        self._closures = [f for f in self._functions if f.__closure__]
        # part -> attribute names left out of snapshots (see ignore)
        self._ignored: dict = {}
        # (part, name) -> (last step it changed harmlessly, consecutive steps so far)
        self._harmless: dict = {}

    def snapshot(self) -> dict:
        """The current state: a dict of keys to comparable values (equal dicts: no change)."""
        ign = self._ignored
        out: dict = {}
        for i, m in enumerate(self._modules):
            d = m.__dict__
            params = d["_parameters"].values()
            out["m", i] = (
                _attributes(d, ign.get(("m", i)), self._deep[i]),
                tuple(map(id, params)),
                tuple([p.requires_grad for p in params if p is not None]),
                tuple(map(id, d["_buffers"].values())),
                tuple(map(id, d["_modules"].values())),
                # a PyroModule's PyroSample priors and PyroParam declarations (``m.s =
                # PyroSample(prior)`` rebinds an entry of these private dicts)
                _pyro_entries(d),
            )
        for i, obj in enumerate(self._objects):
            out["o", i] = _attributes(getattr(obj, "__dict__", {}), ign.get(("o", i)), True)
        for i, cls in enumerate(self._classes):
            out["k", i] = _class_attributes(cls)
        for i, q in enumerate(self._partials):
            out["p", i] = tuple(
                [(f"argument {j}", _shallow(a)) for j, a in enumerate(q.args)]
                + [(k, _shallow(v)) for k, v in q.keywords.items()]
            )
        for i, (glob, names, _) in enumerate(self._globals):
            skip = ign.get(("g", i)) or ()
            out["g", i] = tuple(
                [(n, _shallow(glob[n], names)) for n in names if n in glob and n not in skip]
            )
        for i, fn in enumerate(self._closures):
            cells = []
            for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=False):
                try:
                    cells.append((name, _shallow(cell.cell_contents)))
                except ValueError:  # an empty cell
                    pass
            out["c", i] = tuple(cells)
        out["store",] = tuple(
            [(id(t), t.requires_grad) for _, t in pyro.get_param_store().named_parameters()]
        )
        return out

    def tensor_versions(self) -> tuple:
        """The version counters of the watched modules' parameters and buffers and of the
        param store's tensors: they change with every in-place update (for caches of values
        computed from them; :meth:`snapshot` treats in-place updates as no change)."""
        out = [
            t._version
            for m in self._modules
            for d in (m._parameters, m._buffers)
            for t in d.values()
            if t is not None
        ]
        out.extend(t._version for _, t in pyro.get_param_store().named_parameters())
        return tuple(out)

    @staticmethod
    def changes(old: dict, new: dict) -> list:
        """What differs between two snapshots: ``(part, attribute name or None)`` pairs."""
        out = []
        for key in old.keys() | new.keys():
            a, b = old.get(key), new.get(key)
            if a == b:
                continue
            if a is None or b is None or key[0] == "store":
                out.append((key, None))
                continue
            module = key[0] == "m"
            attrs_a, attrs_b = (a[0], b[0]) if module else (a, b)
            if attrs_a != attrs_b:  # name the attributes
                da, db = dict(attrs_a), dict(attrs_b)
                out.extend((key, n) for n in da.keys() | db.keys() if da.get(n) != db.get(n))
            if module and a[1:] != b[1:]:
                out.append((key, None))
        return out

    @staticmethod
    def value_changes(old: dict, new: dict) -> list:
        """The changes (as :meth:`changes`) of attributes holding numbers, strings, flags or
        ``None`` before or after: a counter, a switch. Objects rebuilt each call (Pyro's
        autoguides rebuild their ``plates`` dict) are not among them."""
        out = []
        for key, name in PythonState.changes(old, new):
            if name is None:
                continue
            a, b = old.get(key), new.get(key)
            va = dict(a[0] if key[0] == "m" else a).get(name) if a is not None else None
            vb = dict(b[0] if key[0] == "m" else b).get(name) if b is not None else None
            if not isinstance(va, tuple) or not isinstance(vb, tuple):
                out.append((key, name))
        return out

    def settle(self, before: dict, after: dict) -> list:
        """Compare the snapshots before and after a run of the programs (a recording): the
        objects the programs rebuild at every run (Pyro's autoguides rebuild their
        ``plates`` dict) are not watched from now on, and the attributes holding numbers,
        strings, flags or ``None`` that the run changed (a counter: state a replay would not
        update) are returned."""
        if before == after:
            return []
        values = self.value_changes(before, after)
        self.ignore(c for c in self.changes(before, after) if c not in values)
        return values

    def changed_by_run(self, before: dict, run_again: Callable[[], object]) -> tuple[list, dict]:
        """After a run of the programs (a recording) that started in state ``before``:
        ``(changes, state now)``, the changes being the numbers, strings or flags the
        programs change themselves (:meth:`settle`) and move again when ``run_again``
        runs them once more on the same input -- a counter, not an attribute set from the
        input (``self.batch_size = len(x)``)."""
        after = self.snapshot()
        changed = self.settle(before, after)
        if changed:
            run_again()
            again = self.snapshot()
            moving = self.value_changes(after, again)
            # set by the programs from their input (self.n = len(x)): every run sets them, a
            # replay's numbers do not depend on them (a recording is per input shape), so a
            # change of them (a smaller last minibatch) is not a reason to check
            self.ignore([c for c in changed if c not in moving])
            changed, after = moving, self.snapshot()
        return changed, after

    def ignore(self, changes: Iterable) -> None:
        """Leave the attributes of ``changes`` (from :meth:`changes`) out of later snapshots:
        state shown not to change the numbers. Parameters, modules and the param store are
        always watched."""
        for key, name in changes:
            if name is not None and key[0] in ("m", "o", "g"):
                self._ignored.setdefault(key, set()).add(name)

    def harmless(self, changes: Iterable, step: int) -> None:
        """Note that ``changes`` (from :meth:`changes`) left the numbers equal at ``step``.

        An attribute that changes harmlessly at :data:`IGNORE_AFTER_CONSECUTIVE` consecutive
        steps (a counter the user keeps on a module) is ignored from then on; one that changes
        now and then (an epoch counter that a KL warm-up reads) stays watched, so a later
        change of it that does change the numbers is still seen.
        """
        for change in changes:
            last, count = self._harmless.get(change, (None, 0))
            count = count + 1 if last == step - 1 else 1
            self._harmless[change] = (step, count)
            if count >= IGNORE_AFTER_CONSECUTIVE:
                self.ignore([change])

    def describe(self, changes: Iterable) -> str:
        """Readable names of changes, e.g. ``"VAE.beta, Pyro's param store"``."""
        names = []
        for key, name in sorted(changes, key=repr)[:4]:
            kind = key[0]
            if kind == "store":
                names.append("Pyro's param store")
            elif kind == "m":
                module = type(self._modules[key[1]]).__name__
                what = name if name is not None else "parameters, buffers or submodules"
                names.append(f"{module}.{what}")
            elif kind == "o":
                names.append(f"{type(self._objects[key[1]]).__name__}.{name}")
            elif kind == "k":
                names.append(f"class attributes of {self._classes[key[1]].__name__}")
            elif kind == "p":
                names.append(f"{name or 'the arguments'} of a functools.partial program")
            else:
                if kind == "g":
                    fn, where = self._globals[key[1]][2], "global"
                else:
                    fn, where = self._closures[key[1]].__name__, "closure variable"
                names.append(f"{where} {name!r} of {fn}" if name else f"{where}s of {fn}")
        return ", ".join(names)
