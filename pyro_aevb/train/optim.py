"""Optimizers for training: the paper's Adagrad and Adam, over one parameter list.

Plain ``torch.optim`` optimizers (their ``state_dict`` holds only tensors and numbers, so a
checkpoint loads with ``torch.load(weights_only=True)``, and a state saved from one
implementation loads into another).

On CPU both use PyTorch's *fused* implementation (``fused=True``): one kernel updates every
parameter in a single pass over parameter, gradient and state, where the default for-loop and
``foreach`` implementations make several passes (measured on one core for the paper's
784-500-20 model: ~0.6 ms per Adagrad step fused against ~1.6 ms for-loop and ~3 ms
``foreach``). The update rule is the same (``sum += g^2``, ``p -= lr g / (sqrt(sum) + eps)``);
results agree with the other implementations to rounding.

Adagrad additionally gets a leaner :meth:`FusedAdagrad.step` (see there): with small models the
Python bookkeeping of ``torch.optim`` costs as much as the update itself. It calls private
torch entry points (``torch._fused_adagrad_`` and torch.optim's global hook registries) because
a measurement showed it pays: the optimizer call about 2x cheaper than
``torch.optim.Adagrad(fused=True).step()``, a few per cent of a 784-100-3 step. Without them
:func:`make_optimizer` falls back to the public implementation, and
``tests/train/test_optim.py`` fails loudly, so that a torch release that removes them is
noticed.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim import optimizer as _torch_optimizer

from ..validation import check_choice, check_positive_float

__all__ = ["OPTIMIZERS", "FusedAdagrad", "make_optimizer"]

OPTIMIZERS = ("adagrad", "adam")

# FusedAdagrad's lean step calls these private torch entry points; on a torch without them
# make_optimizer uses the public implementations instead.
_HAS_FUSED_ADAGRAD_KERNEL = hasattr(torch, "_fused_adagrad_") and hasattr(
    _torch_optimizer, "_global_optimizer_pre_hooks"
)


def _hooked(func):
    """``func`` wrapped like ``torch.optim`` wraps ``step`` (profiler record and hooks)."""
    if getattr(func, "hooked", False):
        return func
    return torch.optim.Optimizer.profile_hook_step(func)


class FusedAdagrad(torch.optim.Adagrad):
    """``torch.optim.Adagrad(fused=True)`` whose :meth:`step` skips the generic bookkeeping.

    Same state, same ``state_dict`` and same update as ``torch.optim.Adagrad``; only
    :meth:`step` differs: in the common case (one parameter group, state already
    initialised, no closure, no step hooks; parameters without a gradient, e.g. frozen ones,
    are left alone) it gathers the state
    lists and calls the fused kernel directly, and increments every parameter's ``step``
    counter with one operation (the ``step`` tensors are kept as views of one small
    buffer; a ``load_state_dict`` replaces them and they are re-linked on the next step).
    Anything else takes ``torch.optim.Adagrad.step`` unchanged.
    """

    def __init__(self, params, lr: float = 1e-2, **kwargs):
        kwargs.setdefault("fused", True)
        super().__init__(params, lr=lr, **kwargs)
        self._linked_steps: list[torch.Tensor] | None = None
        self._step_buffer: torch.Tensor | None = None

    def _generic_step(self, closure=None):
        return _hooked(torch.optim.Adagrad.step)(self, closure)

    def _fast_ok(self, closure) -> bool:
        return (
            closure is None
            and len(self.param_groups) == 1
            and self.param_groups[0]["fused"]
            and not self.param_groups[0]["differentiable"]
            and not isinstance(self.param_groups[0]["lr"], torch.Tensor)
            and not self._optimizer_step_pre_hooks
            and not self._optimizer_step_post_hooks
            and not _torch_optimizer._global_optimizer_pre_hooks
            and not _torch_optimizer._global_optimizer_post_hooks
            and not torch.autograd._profiler_enabled()
        )

    def _link_steps(self, steps: list[torch.Tensor], params) -> list[torch.Tensor]:
        """Replace the per-parameter ``step`` tensors by views of one buffer (same values)."""
        buffer = torch.stack([s.detach().reshape(()) for s in steps]).to(torch.float32)
        views = list(buffer.unbind(0))
        for p, view in zip(params, views, strict=True):
            self.state[p]["step"] = view
        self._step_buffer = buffer
        self._linked_steps = views
        return views

    @torch.no_grad()
    def step(self, closure=None):
        """One Adagrad update of every parameter with a gradient; returns ``closure()``."""
        if not self._fast_ok(closure):
            return self._generic_step(closure)
        group = self.param_groups[0]
        state = self.state
        params = []
        grads = []
        sums = []
        steps = []
        for p in group["params"]:
            g = p.grad
            if g is None:  # a frozen parameter: not updated, as torch.optim.Adagrad does
                continue
            st = state.get(p)
            if not st or g.is_sparse:
                return self._generic_step(closure)
            params.append(p)
            grads.append(g)
            sums.append(st["sum"])
            steps.append(st["step"])
        if not params:
            return None
        linked = self._linked_steps
        if (
            linked is None
            or len(linked) != len(steps)
            or any(a is not b for a, b in zip(linked, steps, strict=False))
        ):
            if any(s.device.type != "cpu" or s.dtype != torch.float32 for s in steps):
                return self._generic_step(closure)
            steps = self._link_steps(steps, params)
        self._step_buffer.add_(1)
        torch._fused_adagrad_(
            params,
            grads,
            sums,
            steps,
            lr=group["lr"],
            lr_decay=group["lr_decay"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
        )
        return None

    # Handled above (hooks run through the generic path); stops torch.optim from wrapping
    # this step in its profiler/hook wrapper, which costs a few microseconds per call.
    step.hooked = True


def _fused_ok(params: list[torch.Tensor]) -> bool:
    """The fused CPU kernels take dense floating parameters on the CPU."""
    return bool(params) and all(p.device.type == "cpu" and p.is_floating_point() for p in params)


def make_optimizer(
    name: str, params: Iterable[torch.Tensor], lr: float, **kwargs
) -> torch.optim.Optimizer:
    """Build ``"adagrad"`` (the paper's) or ``"adam"`` over ``params`` with step size ``lr``.

    Extra keyword arguments go to the ``torch.optim`` constructor (e.g. ``eps``, ``betas``);
    passing ``foreach`` or ``fused`` selects that implementation explicitly. Weight decay is
    not set here: the MAP prior is part of the model (see :class:`pyro_aevb.models.VAE`).
    """
    check_choice(name, "optimizer", OPTIMIZERS)
    lr = check_positive_float(lr, "lr")
    params = list(params)
    explicit = "foreach" in kwargs or "fused" in kwargs
    fused = not explicit and _fused_ok(params)
    if name == "adagrad":
        if fused and _HAS_FUSED_ADAGRAD_KERNEL:
            try:
                return FusedAdagrad(params, lr=lr, **kwargs)
            except RuntimeError:  # a torch without fused CPU Adagrad
                pass
        if not explicit:
            kwargs["foreach"] = True
        return torch.optim.Adagrad(params, lr=lr, **kwargs)
    if not explicit:
        kwargs["fused" if fused else "foreach"] = True
    return torch.optim.Adam(params, lr=lr, **kwargs)
