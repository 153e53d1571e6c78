r"""Convolutional encoder and decoder trunks for image data (the course material's example).

The example network for 28x28 images (MNIST, Fashion-MNIST): the input is zero-padded to
32x32, three stride-2 convolutions with 32, 64 and 128 channels halve it to 16, 8 and 4
pixels, and the ``128 x 4 x 4`` feature map is flattened; the decoder mirrors it with a
linear layer to ``128 x 4 x 4`` and three stride-2 transposed convolutions back to 32x32,
cropped to the image size::

    encoder  (C, 28, 28) -pad-> (C, 32, 32) -conv-> (32, 16, 16) -conv-> (64, 8, 8)
             -conv-> (128, 4, 4) -flatten-> 2048 [-linear-> out_dim]
    decoder  J -linear-> (128, 4, 4) -convT-> (64, 8, 8) -convT-> (32, 16, 16)
             -convT-> (k C, 32, 32) -crop-> (k C, 28, 28)

Kernels are 4x4 with padding 1, so every stride-2 layer halves (or doubles) the size exactly.
Every layer but the last is followed by the activation. Any image size that fits the padded
square works (Frey Face's 28x20 is padded to 32x32 as well); the padded side must be
divisible by ``2 ** len(channels)``.

* :class:`ConvEncoder` maps ``(batch, C, H, W)`` (or flat ``(batch, C H W)``) rows to
  features, or through an output layer to ``out_dim`` numbers (a VAE encoder's
  ``[mu, log sigma^2]``).
* :class:`ConvDecoder` maps ``z`` of shape ``(..., J)`` to ``(..., k C, H, W)``: the ``k``
  parameters per pixel that a likelihood head (:mod:`pyro_aevb.nn.likelihoods`) expects, in
  ``k`` consecutive blocks of ``C`` channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .mlp import ACTIVATIONS

__all__ = ["ConvEncoder", "ConvDecoder", "image_shape_of"]

_KERNEL, _STRIDE, _PADDING = 4, 2, 1


def image_shape_of(image_shape) -> tuple[int, int, int]:
    """``(C, H, W)`` from ``(C, H, W)`` or ``(H, W)`` (one channel); a clear error otherwise."""
    shape = tuple(image_shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(
            f"image_shape must be (C, H, W) or (H, W) of positive ints, got {image_shape!r}"
        )
    return shape


def _channels(channels: Sequence[int]) -> tuple[int, ...]:
    out = tuple(channels)
    if not out or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in out):
        raise ValueError(
            f"channels must be a non-empty sequence of positive ints, got {channels!r}"
        )
    return out


def _geometry(image_shape, channels, padded_size: int) -> tuple[tuple[int, int, int], int]:
    """``((C, H, W), side of the smallest feature map)``, checking that the image fits."""
    shape = image_shape_of(image_shape)
    _, height, width = shape
    levels = 2 ** len(channels)
    if not isinstance(padded_size, int) or padded_size < max(height, width):
        raise ValueError(
            f"padded_size must be an int >= the image's height and width {(height, width)}, "
            f"got {padded_size!r}"
        )
    if padded_size % levels:
        raise ValueError(
            f"padded_size {padded_size} must be divisible by 2 ** len(channels) = {levels} "
            f"(each of the {len(channels)} stride-2 layers halves it)"
        )
    return shape, padded_size // levels


def _pads(size: int, padded_size: int) -> tuple[int, int]:
    before = (padded_size - size) // 2
    return before, padded_size - size - before


class ConvEncoder(nn.Module):
    """Pad to ``padded_size``, stride-2 convolutions with ``channels``, flatten.

    Parameters
    ----------
    image_shape : tuple of int
        ``(C, H, W)`` (or ``(H, W)`` for one channel) of one input image.
    channels : sequence of int
        Output channels of the convolutions (the course example: 32, 64, 128).
    out_dim : int, optional
        Add a linear output layer to ``out_dim`` numbers (no activation); without it the
        output is the flattened last feature map.
    padded_size : int
        Side of the square the image is zero-padded to (centred).
    activation : str
        After every convolution (one of :data:`~pyro_aevb.nn.mlp.ACTIVATIONS`).

    Attributes
    ----------
    out_dim : int
        Numbers per row of the output: ``out_dim`` if given, else
        ``channels[-1] * (padded_size / 2 ** len(channels)) ** 2`` (2048 for the example).
    """

    def __init__(
        self,
        image_shape=(1, 28, 28),
        channels: Sequence[int] = (32, 64, 128),
        out_dim: int | None = None,
        padded_size: int = 32,
        activation: str = "relu",
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.channels = _channels(channels)
        self.image_shape, side = _geometry(image_shape, self.channels, padded_size)
        self.padded_size = padded_size
        self.activation = activation
        self._act = ACTIVATIONS[activation]
        c, h, w = self.image_shape
        # F.pad order: (left, right, top, bottom)
        self._pad = (*_pads(w, padded_size), *_pads(h, padded_size))
        dims = (c, *self.channels)
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, _KERNEL, _STRIDE, _PADDING) for a, b in zip(dims[:-1], dims[1:])
        )
        self.feature_dim = self.channels[-1] * side * side
        if out_dim is not None and (not isinstance(out_dim, int) or out_dim <= 0):
            raise ValueError(f"out_dim must be a positive int or None, got {out_dim!r}")
        self.out = None if out_dim is None else nn.Linear(self.feature_dim, out_dim)
        self.out_dim = self.feature_dim if out_dim is None else out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, C, H, W)`` or ``(batch, C H W)`` -> ``(batch, out_dim)``."""
        if x.dim() < 2 or math.prod(x.shape[1:]) != math.prod(self.image_shape):
            raise ValueError(
                f"the convolutional encoder takes images of shape {self.image_shape} (or rows "
                f"of {math.prod(self.image_shape)} values), got input of shape {tuple(x.shape)}"
            )
        h = F.pad(x.reshape(x.shape[0], *self.image_shape), self._pad)
        for conv in self.convs:
            h = self._act(conv(h))
        h = h.reshape(h.shape[0], -1)
        return h if self.out is None else self.out(h)

    def extra_repr(self) -> str:
        return f"image_shape={self.image_shape}, padded_size={self.padded_size}"


class ConvDecoder(nn.Module):
    """Linear layer to the smallest feature map, stride-2 transposed convolutions, crop.

    Parameters
    ----------
    latent_dim : int
        J, the size of ``z``.
    image_shape : tuple of int
        ``(C, H, W)`` (or ``(H, W)``) of one output image.
    channels : sequence of int
        The *encoder's* channels (the course example: 32, 64, 128); the decoder runs them
        in reverse.
    params_per_pixel : int
        ``k``: parameters per pixel of the likelihood head (1 for Bernoulli logits, 2 for a
        Gaussian's mean and log variance); the output has ``k C`` channels.
    padded_size : int
        Side of the square the last layer produces before cropping to ``(H, W)``.
    activation : str
        After the linear layer and every transposed convolution but the last.
    """

    def __init__(
        self,
        latent_dim: int,
        image_shape=(1, 28, 28),
        channels: Sequence[int] = (32, 64, 128),
        params_per_pixel: int = 1,
        padded_size: int = 32,
        activation: str = "relu",
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if not isinstance(latent_dim, int) or latent_dim <= 0:
            raise ValueError(f"latent_dim must be a positive int, got {latent_dim!r}")
        if not isinstance(params_per_pixel, int) or params_per_pixel <= 0:
            raise ValueError(f"params_per_pixel must be a positive int, got {params_per_pixel!r}")
        self.channels = _channels(channels)
        self.image_shape, self._side = _geometry(image_shape, self.channels, padded_size)
        self.latent_dim = latent_dim
        self.padded_size = padded_size
        self.activation = activation
        self._act = ACTIVATIONS[activation]
        c, h, w = self.image_shape
        self._crop = (_pads(h, padded_size), _pads(w, padded_size))
        self.out_channels = params_per_pixel * c
        rev = self.channels[::-1]
        self.linear = nn.Linear(latent_dim, rev[0] * self._side * self._side)
        dims = (*rev, self.out_channels)
        self.deconvs = nn.ModuleList(
            nn.ConvTranspose2d(a, b, _KERNEL, _STRIDE, _PADDING)
            for a, b in zip(dims[:-1], dims[1:])
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(..., J)`` -> ``(..., k C, H, W)``."""
        if z.shape[-1] != self.latent_dim:
            raise ValueError(
                f"the convolutional decoder takes z of shape (..., {self.latent_dim}), got "
                f"{tuple(z.shape)}"
            )
        lead = z.shape[:-1]
        h = self._act(self.linear(z.reshape(-1, self.latent_dim)))
        h = h.reshape(-1, self.channels[-1], self._side, self._side)
        for k, deconv in enumerate(self.deconvs):
            h = deconv(h)
            if k < len(self.deconvs) - 1:
                h = self._act(h)
        (top, bottom), (left, right) = self._crop
        h = h[..., top : self.padded_size - bottom, left : self.padded_size - right]
        return h.reshape(*lead, *h.shape[1:])

    def extra_repr(self) -> str:
        return f"image_shape={self.image_shape}, padded_size={self.padded_size}"
