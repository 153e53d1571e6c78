"""Optimizers for training: the paper's Adagrad and Adam, over one parameter list.

Plain ``torch.optim`` optimizers (their ``state_dict`` holds only tensors and numbers, so a
checkpoint loads with ``torch.load(weights_only=True)``). The multi-tensor (``foreach``)
implementation updates all parameter tensors in a few fused kernels instead of a Python loop
per tensor, which matters for the small models where per-step overhead dominates.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..validation import check_choice, check_positive_float

__all__ = ["OPTIMIZERS", "make_optimizer"]

OPTIMIZERS = ("adagrad", "adam")


def make_optimizer(
    name: str, params: Iterable[torch.Tensor], lr: float, **kwargs
) -> torch.optim.Optimizer:
    """Build ``"adagrad"`` (the paper's) or ``"adam"`` over ``params`` with step size ``lr``.

    Extra keyword arguments go to the ``torch.optim`` constructor (e.g. ``eps``, ``betas``).
    Weight decay is not set here: the MAP prior is part of the model (see
    :class:`pyro_aevb.models.VAE`).
    """
    check_choice(name, "optimizer", OPTIMIZERS)
    lr = check_positive_float(lr, "lr")
    params = list(params)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, foreach=True, **kwargs)
    return torch.optim.Adam(params, lr=lr, foreach=True, **kwargs)
