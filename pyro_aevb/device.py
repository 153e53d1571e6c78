r"""Where the arithmetic runs: devices, dtypes, random generators and RNG forks.

Every public entry point that computes (``fit``, ``log_marginal`` and its estimators, the
batched HMC sampler, AIS, the CLI) takes ``device=`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``,
``"mps"`` or a :class:`torch.device`) and, where it owns the model, ``dtype=``
(``torch.float32``/``torch.float64`` or their names). This module resolves them once, at the
boundary, with errors that name the argument:

* :func:`resolve_device` / :func:`resolve_dtype` check what was asked for against what this
  torch build and machine have (``device="cuda"`` without a GPU is an error, not a silent CPU
  run);
* :func:`place` moves the modules that own the programs (a ``VAE``'s ``model``/``guide`` are
  bound methods: the ``VAE`` moves) and the data, as :meth:`torch.nn.Module.to` does in place;
* :func:`make_generator` / :func:`check_generator`: an explicit ``torch.Generator`` must live
  on the device it draws for (torch refuses a CPU generator for CUDA tensors; we say so
  first, naming the argument);
* :func:`fork_rng` forks torch's global RNG on the CPU *and* every CUDA device, so that a
  throw-away trace never shifts the draws of training or evaluation on a GPU either
  (``torch.random.fork_rng(devices=[])`` forks the CPU generator only);
* :func:`device_rng_state` / :func:`set_device_rng_state` hold the accelerator's RNG state in
  checkpoints.

Random streams are device-specific: the same seed gives different draws on a CPU and on a GPU
(different generators), so a run resumed on another device continues correctly but not bit
for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from .validation import data_to_dtype

__all__ = [
    "DTYPES",
    "resolve_device",
    "resolve_dtype",
    "module_device",
    "place",
    "place_modules",
    "make_generator",
    "check_generator",
    "fork_rng",
    "device_rng_state",
    "set_device_rng_state",
]

#: The floating dtypes the models and estimators run in, by name.
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(device, name: str = "device") -> torch.device | None:
    """``None`` (keep where things are) or the :class:`torch.device` asked for, checked.

    ``"cuda"`` without an index means the current CUDA device (under ``torchrun`` each rank
    has set its own, see :mod:`pyro_aevb.train.distributed`). Raises ``ValueError`` naming
    ``name`` for a device this machine does not have.
    """
    if device is None:
        return None
    if isinstance(device, str):
        try:
            device = torch.device(device)
        except RuntimeError as err:
            raise ValueError(
                f"{name} must be 'cpu', 'cuda', 'cuda:N', 'mps' or a torch.device, got {device!r}"
            ) from err
    if not isinstance(device, torch.device):
        raise TypeError(
            f"{name} must be a str such as 'cuda:0' or a torch.device, got {type(device).__name__}"
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{name}={str(device)!r} but CUDA is not available (torch {torch.__version__}, "
                f"built with CUDA {torch.version.cuda}); use device='cpu' or install a CUDA "
                f"build of torch"
            )
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"{name}={str(device)!r} but this machine has {torch.cuda.device_count()} CUDA "
                f"device(s)"
            )
        return torch.device("cuda", index)
    if device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"{name}='mps' but the MPS backend is not available here")
        return torch.device("mps")
    if device.type != "cpu":
        raise ValueError(f"{name} must be a cpu, cuda or mps device, got {str(device)!r}")
    return torch.device("cpu")


def resolve_dtype(dtype, name: str = "dtype") -> torch.dtype | None:
    """``None`` (keep) or ``torch.float32`` / ``torch.float64`` (also by name)."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"{name} must be one of {sorted(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype]
    if dtype not in DTYPES.values():
        raise ValueError(f"{name} must be torch.float32 or torch.float64, got {dtype!r}")
    return dtype


def _owners(programs: Iterable) -> list[nn.Module]:
    """The modules behind programs: a module itself, or a bound method's owner."""
    out: list[nn.Module] = []
    for fn in programs:
        if fn is None:
            continue
        owner = fn if isinstance(fn, nn.Module) else getattr(fn, "__self__", None)
        if isinstance(owner, nn.Module) and all(owner is not m for m in out):
            out.append(owner)
    return out


def module_device(modules: Iterable[nn.Module]) -> torch.device | None:
    """The device of the first parameter (or buffer) of ``modules``, ``None`` if they have
    none."""
    for m in modules:
        for t in (*m.parameters(), *m.buffers()):
            return t.device
    return None


def place_modules(
    programs: Iterable, device: torch.device | None, dtype: torch.dtype | None
) -> list[nn.Module]:
    """Move the modules owning ``programs`` (and any module among them) to ``device`` /
    ``dtype`` in place; returns them."""
    modules = _owners(programs)
    if device is not None or dtype is not None:
        for m in modules:
            m.to(device=device, dtype=dtype)
    return modules


def place(
    x: torch.Tensor, programs: Iterable = (), *, device=None, dtype=None
) -> tuple[torch.Tensor, torch.device]:
    """``(x on the device, the device)`` after moving the programs' modules there.

    ``device=None`` keeps the modules where they are and moves ``x`` to them (to ``x``'s own
    device if no module is involved); ``dtype=None`` keeps the modules' dtype and converts a
    floating ``x`` to it (float64 data for a float32 model), or keeps ``x``'s without modules.
    Programs that are plain functions cannot be moved: they must create their tensors on the
    device of the data they are given (``x.new_zeros(...)``), as the package's models do.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    modules = place_modules(programs, device, dtype)
    if device is None:
        device = module_device(modules) or (x.device if isinstance(x, torch.Tensor) else None)
    if dtype is None and isinstance(x, torch.Tensor) and x.is_floating_point():
        dtype = module_dtype(modules)  # float64 data for float32 modules: the modules' dtype
    if isinstance(x, torch.Tensor):
        x = data_to_dtype(x, dtype).to(device=device)
    return x, device


def module_dtype(modules: Iterable[nn.Module]) -> torch.dtype | None:
    """The dtype of the first floating parameter (or buffer) of ``modules``, ``None`` if they
    have none."""
    for m in modules:
        for t in (*m.parameters(), *m.buffers()):
            if t.is_floating_point():
                return t.dtype
    return None


def make_generator(seed: int, device: torch.device | None = None) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` (default the CPU) seeded with ``seed``."""
    device = torch.device("cpu") if device is None else device
    if device.type == "mps":
        # MPS draws come from the global generator; a CPU generator cannot feed MPS tensors
        return torch.Generator().manual_seed(seed)
    return torch.Generator(device=device).manual_seed(seed)


def check_generator(
    generator: torch.Generator | None, device: torch.device, name: str = "generator"
) -> None:
    """Raise ``ValueError`` naming ``name`` if ``generator`` cannot draw on ``device``."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != device.type:
        raise ValueError(
            f"{name} lives on {generator.device} but the computation runs on {device}: pass "
            f"torch.Generator(device={str(device)!r}).manual_seed(...) (or no generator)"
        )


@contextlib.contextmanager
def fork_rng() -> Iterator[None]:
    """Fork torch's global RNG on the CPU and on every CUDA device (restored on exit).

    The drop-in replacement for ``torch.random.fork_rng(devices=[])``, which forks only the
    CPU generator: on a GPU, draws inside that fork (a guide traced to check a program) would
    advance the CUDA generator and shift every later draw.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        yield


def device_rng_state(device: torch.device | None) -> dict:
    """The accelerator's RNG state for a checkpoint (``{}`` on the CPU, whose state the
    trainer saves anyway)."""
    if device is not None and device.type == "cuda":
        return {"cuda": torch.cuda.get_rng_state(device)}
    return {}


def set_device_rng_state(state: dict, device: torch.device | None) -> bool:
    """Restore what :func:`device_rng_state` saved, if it is for this kind of device.

    Returns whether it was restored: a checkpoint written on a GPU resumes on a CPU (and the
    other way round) with the CPU state only, so the accelerator's draws after the resume
    differ from an uninterrupted run (they are still draws of the same distributions).
    """
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
        return True
    return False
