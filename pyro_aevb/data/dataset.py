"""The :class:`Dataset` container and the preprocessing every loader shares.

This module imports nothing else from :mod:`pyro_aevb.data`, so the file-backed loaders
(:mod:`~pyro_aevb.data.datasets`) and the embedded slice (:mod:`~pyro_aevb.data.embedded`) can both
build datasets without importing each other.

Preprocessing is the AEVB paper's: uint8 pixels become float32 ``pixel / 256.`` (not 255, so 255
maps to 0.99609375 and the values stay strictly below 1).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..validation import check_positive_int

__all__ = [
    "FASHION_MNIST_LICENSE",
    "FREY_FACE_LICENSE",
    "MNIST_LICENSE",
    "Dataset",
    "to_float",
    "to_labels",
]

MNIST_LICENSE = "MNIST by Yann LeCun, Corinna Cortes and Christopher J.C. Burges; CC BY-SA 3.0"
FASHION_MNIST_LICENSE = "Fashion-MNIST by Zalando Research (Xiao, Rasul, Vollgraf 2017); MIT"
FREY_FACE_LICENSE = (
    "Brendan Frey's face images, from Sam Roweis's data page (cs.nyu.edu/~roweis/data.html); "
    "no licence stated by the source, cite Frey"
)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A preprocessed image data set with a train/test split, flat or image-shaped.

    Every split holds float32 ``pixel / 256.`` values in one of two layouts, the same for all
    splits:

    - flat (the default of the loaders, for MLPs): ``(N, H * W)``, images flattened row-major,
      ``event_shape == (H * W,)``;
    - image-shaped (for convolutional models): ``(N, 1, H, W)``, one channel,
      ``event_shape == (1, H, W)``.

    :meth:`flattened` and :meth:`as_images` convert between them without copying.

    ``eq=False``: comparing tensor fields element-wise is not a meaningful ``==`` for a data
    set, so instances compare (and hash) by identity.

    Attributes
    ----------
    name : str
        One of :data:`~pyro_aevb.data.DATASET_NAMES`.
    train : torch.Tensor
        ``(N, *event_shape)`` float32 in [0, 255/256].
    test : torch.Tensor
        ``(N_test, *event_shape)`` float32, same preprocessing.
    train_labels, test_labels : torch.Tensor or None
        (N,) and (N_test,) int64 class labels, None for unlabelled data (Frey Face).
    image_shape : tuple of int
        (H, W): (28, 28) for MNIST-like data, (28, 20) for Frey Face, whatever the layout.
    likelihood : str
        The paper's decoder for this data: ``"bernoulli"`` or ``"gaussian"``.
    source : str
        The files the data was read from.
    license : str
        Short attribution.
    validation, validation_labels : torch.Tensor or None
        A held-out split where the data set has one (MNIST: training images 50000-59999),
        ``(N_val, *event_shape)`` float32 and (N_val,) int64; None otherwise.
    """

    name: str
    train: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor | None
    test_labels: torch.Tensor | None
    image_shape: tuple[int, int]
    likelihood: str
    source: str
    license: str
    validation: torch.Tensor | None = None
    validation_labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        height, width = self.image_shape
        layouts = ((height * width,), (1, height, width))
        # The train split fixes the layout; the others must follow it.
        event_shape = tuple(self.train.shape[1:])
        if event_shape not in layouts:
            event_shape = layouts[0]  # only to word the error below
        for split in ("train", "test"):
            if not isinstance(getattr(self, split), torch.Tensor):
                raise TypeError(
                    f"{self.name}: {split} must be a tensor (every Dataset has a train and a "
                    f"test split), got {type(getattr(self, split)).__name__}"
                )
        for split in ("train", "test", "validation"):
            x = getattr(self, split)
            labels = getattr(self, f"{split}_labels")
            if x is None:
                if labels is not None:
                    raise ValueError(f"{self.name}: {split}_labels given without {split} data")
                continue
            if tuple(x.shape[1:]) != event_shape or x.dtype != torch.float32:
                raise ValueError(
                    f"{self.name}: {split} must be float32 of shape (N, {_dims(event_shape)}) "
                    f"like train, for images of shape {self.image_shape} (flat (N, "
                    f"{_dims(layouts[0])}) or image-shaped (N, {_dims(layouts[1])})), got "
                    f"{x.dtype} {tuple(x.shape)}"
                )
            if labels is not None and (
                labels.shape != (x.shape[0],) or labels.dtype != torch.int64
            ):
                raise ValueError(
                    f"{self.name}: {split}_labels must be int64 of shape ({x.shape[0]},), "
                    f"got {labels.dtype} {tuple(labels.shape)}"
                )
        if self.likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(
                f"likelihood must be 'bernoulli' or 'gaussian', got {self.likelihood!r}"
            )

    @property
    def event_shape(self) -> tuple[int, ...]:
        """The shape of one datapoint: ``(H * W,)`` when flat, ``(1, H, W)`` when image-shaped."""
        return tuple(self.train.shape[1:])

    @property
    def is_flat(self) -> bool:
        """Whether the splits are ``(N, H * W)`` rather than ``(N, 1, H, W)``."""
        return self.train.dim() == 2

    @property
    def data_dim(self) -> int:
        """D = H * W, the number of values per datapoint (``prod(event_shape)``), in any layout."""
        return math.prod(self.event_shape)

    @property
    def num_train(self) -> int:
        return self.train.shape[0]

    @property
    def num_test(self) -> int:
        return self.test.shape[0]

    def flattened(self) -> Dataset:
        """This data set with splits of shape ``(N, H * W)``; ``self`` if already flat.

        The new tensors are views of this one's (no copy) when they are contiguous, as the
        loaders' are.
        """
        return self._reshaped((self.data_dim,))

    def as_images(self) -> Dataset:
        """This data set with splits of shape ``(N, 1, H, W)``; ``self`` if already so.

        The new tensors are views of this one's (no copy) when they are contiguous, as the
        loaders' are.
        """
        return self._reshaped((1, *self.image_shape))

    def reshaped(self, flatten: bool) -> Dataset:
        """:meth:`flattened` if ``flatten`` else :meth:`as_images`."""
        return self.flattened() if flatten else self.as_images()

    def _reshaped(self, event_shape: tuple[int, ...]) -> Dataset:
        if self.event_shape == event_shape:
            return self

        def reshape(x: torch.Tensor | None) -> torch.Tensor | None:
            # x.shape[0], not -1: a split may be empty, and -1 is ambiguous for 0 elements.
            return None if x is None else x.reshape(x.shape[0], *event_shape)

        return dataclasses.replace(
            self,
            train=reshape(self.train),
            test=reshape(self.test),
            validation=reshape(self.validation),
        )

    def subset(self, num_train: int | None = None, num_test: int | None = None) -> Dataset:
        """The same data set restricted to the first ``num_train`` / ``num_test`` datapoints.

        Parameters
        ----------
        num_train, num_test : int, optional
            Number of leading datapoints to keep; None keeps the split whole. The validation
            split is kept as is, and so is the layout (flat or image-shaped).

        Returns
        -------
        Dataset
            A new instance whose tensors are views of this one's (no copy).

        Raises
        ------
        ValueError
            If a requested size is negative or larger than the split.
        """
        train, train_labels = _head(self.train, self.train_labels, num_train, "num_train")
        test, test_labels = _head(self.test, self.test_labels, num_test, "num_test")
        return dataclasses.replace(
            self, train=train, train_labels=train_labels, test=test, test_labels=test_labels
        )

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={tuple(self.train.shape)}, "
            f"test={tuple(self.test.shape)}, image_shape={self.image_shape}, "
            f"likelihood={self.likelihood!r})"
        )


def _dims(shape: tuple[int, ...]) -> str:
    return ", ".join(str(d) for d in shape)


def _head(
    x: torch.Tensor, labels: torch.Tensor | None, n: int | None, what: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if n is None:
        return x, labels
    n = check_positive_int(n, what, minimum=0)  # not a bool, a float or a string
    if not 0 <= n <= x.shape[0]:
        raise ValueError(f"{what}={n} is outside [0, {x.shape[0]}]")
    return x[:n], None if labels is None else labels[:n]


def to_float(images: np.ndarray, flatten: bool = True) -> torch.Tensor:
    """uint8 images (N, H, W) -> float32 ``pixel / 256.`` (exact in float32).

    Returns shape (N, H * W), flattened row-major, when ``flatten``, else (N, 1, H, W).
    """
    if images.dtype != np.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    if images.ndim != 3:
        raise ValueError(f"expected images of shape (N, H, W), got {images.shape}")
    n, height, width = images.shape
    shape = (n, height * width) if flatten else (n, 1, height, width)
    pixels = np.ascontiguousarray(images).reshape(shape)
    return torch.from_numpy(pixels.astype(np.float32) * np.float32(1 / 256))


def to_labels(labels: np.ndarray) -> torch.Tensor:
    """uint8 labels (N,) -> int64 tensor (N,)."""
    return torch.from_numpy(labels.astype(np.int64))
