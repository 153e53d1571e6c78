"""Encoder trunks of the amortized guides: ``x`` rows -> a feature vector per row.

An amortized guide is a trunk shared by all its outputs plus small linear heads on the
trunk's features (one per local latent site, or one joint head). The trunk is one of

* ``"mlp"`` (default): :class:`~pyro_aevb.nn.MLPTrunk`, each row flattened, then
  ``hidden_dims`` layers with ``activation`` (the paper's encoder without its output layer:
  one tanh layer of 500 units for MNIST); ``hidden_dims=()`` makes the heads linear in ``x``;
* ``"conv"``: :class:`~pyro_aevb.nn.ConvEncoder` without an output layer (the course
  example: padded to 32x32, convolutions of 32/64/128 channels) for image-shaped rows
  ``(batch, C, H, W)``;
* any ``nn.Module`` of the user's, mapping ``(batch, *event_shape)`` to ``(batch, ...)``
  (flattened to ``(batch, F)``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..nn.conv import ConvEncoder
from ..nn.mlp import ACTIVATIONS, MLPTrunk, as_hidden_dims

__all__ = ["TRUNKS", "DEFAULT_ACTIVATION", "check_encoder", "make_trunk", "trunk_features"]

#: The named trunks.
TRUNKS = ("mlp", "conv")

#: The activation of a named trunk when none is given: the paper's tanh for MLPs, ReLU for
#: the convolutional example.
DEFAULT_ACTIVATION = {"mlp": "tanh", "conv": "relu"}
#: The MLP trunk's default hidden layer (the autoguides' ``hidden_dims`` default).
DEFAULT_HIDDEN = 500
#: The conv trunk's channels (stride-2 convolutions).
CONV_CHANNELS = (32, 64, 128)


def check_encoder(encoder, hidden_dims, activation) -> tuple:
    """Validate the trunk options; returns ``(encoder, hidden_dims, activation)`` normalised
    (``activation`` resolved for a named trunk, ``None`` for a module)."""
    if isinstance(encoder, nn.Module):
        if activation is not None or not _is_default_hidden(hidden_dims):
            raise ValueError(
                f"hidden_dims and activation shape the named trunks ('mlp', 'conv'); with "
                f"encoder={type(encoder).__name__}(...), your own trunk, they would be ignored "
                f"(got hidden_dims={hidden_dims!r}, activation={activation!r}): leave them out"
            )
        return encoder, None, None
    if encoder not in TRUNKS:
        raise ValueError(
            f"encoder must be one of {list(TRUNKS)} or an nn.Module mapping x rows to features, "
            f"got {encoder!r}"
        )
    activation = DEFAULT_ACTIVATION[encoder] if activation is None else activation
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    hidden_dims = as_hidden_dims(hidden_dims)
    if encoder == "conv" and hidden_dims != as_hidden_dims(DEFAULT_HIDDEN):
        raise ValueError(
            f"hidden_dims={list(hidden_dims)} applies to encoder='mlp'; the 'conv' trunk's "
            f"layers are fixed (stride-2 convolutions of 32, 64, 128 channels): leave "
            f"hidden_dims out, or pass your own trunk as encoder=nn.Module"
        )
    return encoder, hidden_dims, activation


def _is_default_hidden(hidden_dims) -> bool:
    try:
        return as_hidden_dims(hidden_dims) == as_hidden_dims(DEFAULT_HIDDEN)
    except (TypeError, ValueError):
        return False


def make_trunk(encoder, row_shape: tuple[int, ...], hidden_dims, activation) -> nn.Module:
    """The trunk for rows of shape ``row_shape`` (one datapoint)."""
    if isinstance(encoder, nn.Module):
        return encoder
    if encoder == "mlp":
        return MLPTrunk(math.prod(row_shape), hidden_dims, activation)
    if len(row_shape) not in (2, 3):
        raise ValueError(
            f"encoder='conv' needs image-shaped rows (batch, C, H, W), but the data rows have "
            f"shape {row_shape}; load images with load_dataset(name, flatten=False)"
        )
    # the smallest square of a multiple of 2 ** (number of stride-2 layers) that holds the
    # image, and at least the 32 of the 28-pixel example
    levels = 2 ** len(CONV_CHANNELS)
    side = max(32, -(-max(row_shape[-2:]) // levels) * levels)
    return ConvEncoder(row_shape, channels=CONV_CHANNELS, padded_size=side, activation=activation)


def trunk_features(trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``trunk(x)`` flattened to ``(batch, F)``; a clear error if the rows are lost."""
    h = trunk(x)
    if not isinstance(h, torch.Tensor) or h.dim() < 1 or h.shape[0] != x.shape[0]:
        shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
        raise ValueError(
            f"the encoder trunk must map x of shape {tuple(x.shape)} to features with one row "
            f"per datapoint, (batch, ...), got {shape}"
        )
    return h.reshape(h.shape[0], -1)
