r"""The trainable parameters of a model/guide pair: modules and Pyro's param store, by name.

Pyro programs keep parameters in two places: ``torch.nn.Module`` objects the program computes
with (registered with ``pyro.module`` or as a ``PyroModule``) and Pyro's global param store
(``pyro.param``, which holds each parameter as an *unconstrained* leaf tensor).
:func:`collect_params` finds everything a pair of programs touches, as ``SVI`` does (a
``param_only`` trace), and merges it with the parameters of the modules that own the programs,
without duplicates. :class:`ProgramParams` is that set, in a fixed order, with a state dict
keyed by name for checkpoints.

Pyro's param store is global: building a second model under the same ``pyro.module`` name
leaves the *first* model's tensors in the store, while the new module computes with its own.
Training the store's entries would then never change the model. When a module is given,
:func:`collect_params` points such stale entries at the module's own parameters, so that the
store, the optimizer and the program agree.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence

import pyro
import pyro.poutine as poutine
import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook

from ..device import fork_rng

__all__ = [
    "ProgramParams",
    "buffer_values",
    "buffers_kept",
    "check_params_cover",
    "untrained_param_sites",
    "modules_run",
    "restore_buffers",
    "collect_params",
    "eval_mode",
    "owner_modules",
    "row_coupling_modules",
    "UntrainedParamError",
]

_DIVIDER = "$$$"  # pyro.module's separator between the module name and the parameter name


def owner_modules(*programs) -> list[nn.Module]:
    """The ``nn.Module`` objects behind programs: a module itself, or a bound method's owner."""
    out: list[nn.Module] = []
    for fn in programs:
        owner = fn if isinstance(fn, nn.Module) else getattr(fn, "__self__", None)
        if isinstance(owner, nn.Module) and all(owner is not m for m in out):
            out.append(owner)
    return out


class UntrainedParamError(ValueError):
    """A training step used a parameter that the run does not train (see
    :func:`check_params_cover`)."""


def untrained_param_sites(params: Iterable[torch.Tensor], *traces) -> list:
    """``(name, leaf)`` of the param sites of ``traces`` (Pyro traces of a training step)
    holding a trainable tensor that is not among ``params``: a ``pyro.param`` first created
    after training started, a module replaced by a new one -- or a stale param-store entry the
    programs do not compute with. :func:`check_params_cover` tells them apart after the
    backward pass: their gradients are cleared here, so that only that pass can set them."""
    known = getattr(params, "_ids", None)
    if known is None:
        known = {id(p) for p in params}
    out = []
    for trace in traces:
        for name, site in trace.nodes.items():
            if site["type"] != "param":
                continue
            value = site["value"]
            leaf = getattr(value, "unconstrained", None)
            leaf = leaf() if callable(leaf) else value
            if isinstance(leaf, torch.Tensor) and leaf.requires_grad and id(leaf) not in known:
                leaf.grad = None
                out.append((name, leaf))
    return out


def check_params_cover(sites: list) -> None:
    """After the backward pass of a step: raise :class:`UntrainedParamError` if one of the
    :func:`untrained_param_sites` got a gradient (the loss depends on it). Pyro's ``SVI``
    would start training it; an optimizer and checkpoints built on the first minibatch's
    parameters would silently leave it at its initial value. Their gradients are cleared."""
    used = [name for name, leaf in sites if leaf.grad is not None]
    for _, leaf in sites:
        leaf.grad = None
    if used:
        raise UntrainedParamError(
            f"param site '{used[0]}' holds a tensor that was not among the parameters when "
            f"training started (a pyro.param first created after the first step, or a module "
            f"replaced by a new one): the optimizer and the checkpoints hold the parameters "
            f"the programs used on their first minibatch, so it would never be trained. "
            f"Create it before training (run the programs once with the settings that create "
            f"it, or call pyro.param('{used[0]}', ...) before fit)"
        )


class ProgramParams:
    """An ordered set of trainable tensors, with names for checkpoints.

    Attributes
    ----------
    modules : list of nn.Module
        Modules whose ``state_dict`` (parameters and buffers) belongs to the state.
    store_names : list of str
        Param-store entries touched by the programs that no module owns, sorted.
    tensors : list of torch.Tensor
        Every trainable leaf tensor: the modules' parameters, then the store entries. A
        parameter frozen now (``requires_grad_(False)``) is among them: it gets no gradient
        while it is frozen (the optimizers skip it) and is trained once it is unfrozen, as
        Pyro's ``SVI`` does (a fine-tuning schedule that unfreezes a decoder mid-run).
    buffers : dict of str to torch.Tensor
        Buffers of the other modules the programs run (``pyro.module`` inside a plain
        function: BatchNorm statistics), named ``"<i>.<buffer>"`` by the order in which the
        programs first run their modules.
    """

    def __init__(
        self,
        modules: Sequence[nn.Module],
        store_names: Sequence[str],
        buffer_modules: Sequence[nn.Module] = (),
    ):
        self.modules = list(modules)
        self.store_names = list(store_names)
        self.buffers = {
            f"{i}.{name}": b
            for i, m in enumerate(buffer_modules)
            for name, b in m.named_buffers(recurse=False)
        }
        store = _unconstrained()
        seen: set[int] = set()
        tensors = []
        for m in self.modules:
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    tensors.append(p)
        for name in self.store_names:
            p = store.get(name)
            if p is None:
                raise KeyError(f"param '{name}' is no longer in Pyro's param store")
            if id(p) not in seen:
                seen.add(id(p))
                tensors.append(p)
        self.tensors = tensors
        self._ids = seen  # for check_params_cover

    def __iter__(self):
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def state_dict(self) -> dict:
        """``{"modules": [state_dict, ...], "store": {name: unconstrained tensor}}``, and
        ``"buffers": {name: tensor}`` when the programs run such modules; detached."""
        store = _unconstrained()
        state = {
            "modules": [m.state_dict() for m in self.modules],
            "store": {n: store[n].detach().clone() for n in self.store_names},
        }
        if self.buffers:
            state["buffers"] = {n: b.detach().clone() for n, b in self.buffers.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        """Load values saved by :meth:`state_dict` in place (the tensors keep their identity,
        so an optimizer built on them stays valid). Errors name what does not match."""
        buffers = state.get("buffers")
        if buffers is None and self.buffers:
            # saved before buffers of such modules were: their values restart, said so
            warnings.warn(
                f"the checkpoint holds no values for the buffers {sorted(self.buffers)} of "
                f"modules the programs run through pyro.module (it was saved by an earlier "
                f"version); they keep their current values",
                UserWarning,
                stacklevel=2,
            )
        elif buffers is not None:
            self._check_buffers(buffers)
        modules = state.get("modules", [])
        if len(modules) != len(self.modules):
            raise ValueError(
                f"the checkpoint holds the state of {len(modules)} module(s) but the programs "
                f"have {len(self.modules)}"
            )
        for m, sd in zip(self.modules, modules, strict=True):
            try:
                m.load_state_dict(sd)
            except RuntimeError as err:
                raise ValueError(
                    f"the checkpoint's parameters do not fit {type(m).__name__}: {err}"
                ) from err
        saved = state.get("store", {})
        if sorted(saved) != sorted(self.store_names):
            raise ValueError(
                f"the checkpoint's param-store entries {sorted(saved)} differ from the "
                f"programs' {sorted(self.store_names)}"
            )
        store = _unconstrained()
        with torch.no_grad():
            for name, value in saved.items():
                target = store[name]
                if target.shape != value.shape:
                    raise ValueError(
                        f"param '{name}' has shape {tuple(target.shape)} but the checkpoint "
                        f"holds {tuple(value.shape)}"
                    )
                target.copy_(value)
            for name, value in (buffers or {}).items():
                self.buffers[name].copy_(value)

    def _check_buffers(self, saved: dict) -> None:
        """The saved buffers are the programs' own, by name and shape (before any loading)."""
        if sorted(saved) != sorted(self.buffers):
            raise ValueError(
                f"the checkpoint's buffers {sorted(saved)} differ from those of the modules the "
                f"programs run {sorted(self.buffers)}"
            )
        for name, value in saved.items():
            own = self.buffers[name]
            if own.shape != value.shape or own.dtype != value.dtype:
                raise ValueError(
                    f"buffer '{name}' has shape {tuple(own.shape)} ({own.dtype}) but the "
                    f"checkpoint holds {tuple(value.shape)} ({value.dtype})"
                )


def _unconstrained() -> dict[str, torch.Tensor]:
    """Pyro's param store as ``{name: unconstrained leaf tensor}`` (what optimizers update)."""
    return dict(pyro.get_param_store().named_parameters())


@contextlib.contextmanager
def buffers_kept(
    modules: Sequence[nn.Module] = (), discover: bool = True
) -> Iterator[list[nn.Module]]:
    """Runs inside leave the modules' buffers as they were; yields the modules that ran.

    For runs of the programs that are not training steps (a set-up trace, a recording, a
    check's second run): a program that updates a buffer in place (BatchNorm's running
    statistics in train mode) would otherwise update it once more per run, and the training
    would see other statistics than stock Pyro's, where each step updates them once. The
    buffers of ``modules`` and, with ``discover``, of every module whose ``forward`` runs
    inside (found by a global forward pre-hook, so modules used by plain-function programs
    count too) are restored on exit; the yielded list fills with the modules whose
    ``forward`` ran. Without ``discover`` no hook is set (``torch.compile`` warns about
    global hooks, and a recording run would record the hook's copies).
    """
    saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    called: list[nn.Module] = []

    def save(module: nn.Module) -> None:
        for b in module.buffers():
            if id(b) not in saved:
                saved[id(b)] = (b, b.detach().clone())

    def seen(module, args) -> None:
        if all(module is not m for m in called):
            called.append(module)
            save(module)

    for m in modules:
        save(m)
    hook = register_module_forward_pre_hook(seen) if discover else None
    try:
        yield called
    finally:
        if hook is not None:
            hook.remove()
        restore_buffers(list(saved.values()))


def buffer_values(modules: Sequence[nn.Module]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(buffer, copy of its value)`` for the buffers of ``modules``, for
    :func:`restore_buffers`."""
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for m in modules:
        for b in m.buffers():
            if id(b) not in seen:
                seen[id(b)] = (b, b.detach().clone())
    return list(seen.values())


def restore_buffers(saved: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Copy the values of :func:`buffer_values` back (in place: an autograd graph that saved
    a buffer must have been differentiated already)."""
    with torch.no_grad():
        for b, value in saved:
            b.copy_(value)


@contextlib.contextmanager
def modules_run() -> Iterator[list[nn.Module]]:
    """Yields a list that fills with the modules whose ``forward`` runs inside (a global
    forward pre-hook, so modules used by plain-function programs count too)."""
    called: list[nn.Module] = []

    def seen(module, args) -> None:
        if all(module is not m for m in called):
            called.append(module)

    hook = register_module_forward_pre_hook(seen)
    try:
        yield called
    finally:
        hook.remove()


@contextlib.contextmanager
def eval_mode(modules: Sequence[nn.Module]) -> Iterator[None]:
    """``modules`` (and their submodules) in eval mode inside, each back in its own mode
    after: BatchNorm on its running statistics, no dropout, as a validation pass runs."""
    modes = [(m, m.training) for top in modules for m in top.modules()]
    for top in modules:
        top.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


# Layers whose training mode makes a row's output depend on the other rows (batch statistics)
# or on chance (dropout).
_ROW_COUPLING = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


def row_coupling_modules(modules: Sequence[nn.Module]) -> list[str]:
    """``"Type"`` names of the modules among ``modules`` (and submodules) in training mode
    that couple the rows of a batch or draw at random: BatchNorm, dropout."""
    found = []
    for top in modules:
        for m in top.modules():
            if m.training and isinstance(m, _ROW_COUPLING) and type(m).__name__ not in found:
                found.append(type(m).__name__)
    return found


def _param_names(programs, args, kwargs) -> tuple[list[str], list[nn.Module]]:
    """Names of the param-store entries the programs read, in first-use order, and the
    modules they run, in first-run order."""
    names: list[str] = []
    # A throw-away run: fork the RNG so the caller's draws are not shifted, and keep buffers.
    with fork_rng(), torch.no_grad(), buffers_kept() as called:
        with poutine.trace(param_only=True) as capture:
            for fn in programs:
                fn(*args, **kwargs)
    for name, site in capture.trace.nodes.items():
        if site["type"] == "param" and name not in names:
            names.append(name)
    return names, called


def _point_store_at_modules(modules: Sequence[nn.Module], names: Sequence[str]) -> None:
    """Replace stale ``pyro.module`` entries by the module tensors the programs compute with."""
    current = _unconstrained()
    for name in names:
        if _DIVIDER not in name:
            continue
        _, pname = name.split(_DIVIDER, 1)
        for m in modules:
            own = dict(m.named_parameters()).get(pname)
            if own is not None and own is not current[name]:
                # the constraint of a pyro.module entry is real: the store keeps `own` itself
                pyro.get_param_store()[name] = own
                break


def collect_params(
    programs: Sequence[Callable], *args, modules: Sequence[nn.Module] = (), **kwargs
) -> ProgramParams:
    """Everything trainable that ``programs`` (run as ``fn(*args, **kwargs)``) touch.

    ``modules`` (and the modules owning the programs, see :func:`owner_modules`) contribute
    all their parameters; the param store contributes the entries the programs read.
    """
    modules = list(modules)
    for m in owner_modules(*programs):
        if all(m is not k for k in modules):
            modules.append(m)
    names, called = _param_names(programs, args, kwargs)
    _point_store_at_modules(modules, names)
    store = _unconstrained()
    module_ids = {id(p) for m in modules for p in m.parameters()}
    store_names = sorted(n for n in names if id(store[n]) not in module_ids)
    # modules the programs run outside the state's modules (pyro.module in a plain function):
    # their buffers belong to the state too
    owned = {id(sub) for m in modules for sub in m.modules()}
    others = [m for m in called if id(m) not in owned and any(True for _ in m.buffers(False))]
    return ProgramParams(modules, store_names, others)
