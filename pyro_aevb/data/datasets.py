"""The AEVB paper's data sets (MNIST, Frey Face) and Fashion-MNIST, preprocessed as in the paper.

Every loader goes through the same path: resolve the data directory
(:func:`~pyro_aevb.data.download.resolve_data_dir`), fetch and verify each file against its SHA-256
(:func:`~pyro_aevb.data.download.fetch_verified`, downloading it if allowed), parse it, and turn
uint8 pixels into float32 ``pixel / 256.`` (the paper's convention; not 255, so 255 maps to
0.99609375 and the values stay strictly below 1) flattened row-major to ``(N, H * W)``.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .download import fetch_verified, resolve_data_dir
from .idx import read_idx_images, read_idx_labels

__all__ = [
    "DATASET_NAMES",
    "Dataset",
    "load_dataset",
    "load_fashion_mnist",
    "load_frey_face",
    "load_mnist",
    "read_idx_split",
]

DATASET_NAMES: tuple[str, ...] = ("mnist", "fashion-mnist", "frey-face", "embedded-mnist")

MNIST_NUM_TRAIN = 50_000  # the paper's split: the last 10000 training images are validation
FREY_NUM_TEST = 200
FREY_SPLIT_SEED = 0
FREY_IMAGE_SHAPE = (28, 20)

MNIST_LICENSE = "MNIST by Yann LeCun, Corinna Cortes and Christopher J.C. Burges; CC BY-SA 3.0"
FASHION_MNIST_LICENSE = "Fashion-MNIST by Zalando Research (Xiao, Rasul, Vollgraf 2017); MIT"
FREY_FACE_LICENSE = (
    "Brendan Frey's face images, from Sam Roweis's data page (cs.nyu.edu/~roweis/data.html); "
    "no licence stated by the source, cite Frey"
)

PathLike = str | os.PathLike[str]


@dataclass(frozen=True, eq=False)
class Dataset:
    """A preprocessed image data set with a train/test split.

    ``eq=False``: comparing tensor fields element-wise is not a meaningful ``==`` for a data
    set, so instances compare (and hash) by identity.

    Attributes
    ----------
    name : str
        One of :data:`DATASET_NAMES`.
    train : torch.Tensor
        (N, D) float32 in [0, 255/256], images flattened row-major (D = H * W).
    test : torch.Tensor
        (N_test, D) float32, same preprocessing.
    train_labels, test_labels : torch.Tensor or None
        (N,) and (N_test,) int64 class labels, None for unlabelled data (Frey Face).
    image_shape : tuple of int
        (H, W): (28, 28) for MNIST-like data, (28, 20) for Frey Face.
    likelihood : str
        The paper's decoder for this data: ``"bernoulli"`` or ``"gaussian"``.
    source : str
        The files the data was read from.
    license : str
        Short attribution.
    validation, validation_labels : torch.Tensor or None
        A held-out split where the data set has one (MNIST: training images 50000-59999),
        (N_val, D) float32 and (N_val,) int64; None otherwise.
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
        dim = self.image_shape[0] * self.image_shape[1]
        for split in ("train", "test", "validation"):
            x = getattr(self, split)
            labels = getattr(self, f"{split}_labels")
            if x is None:
                if labels is not None:
                    raise ValueError(f"{self.name}: {split}_labels given without {split} data")
                continue
            if x.dim() != 2 or x.shape[1] != dim or x.dtype != torch.float32:
                raise ValueError(
                    f"{self.name}: {split} must be float32 of shape (N, {dim}) for images of "
                    f"shape {self.image_shape}, got {x.dtype} {tuple(x.shape)}"
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
    def data_dim(self) -> int:
        """D, the number of pixels per image."""
        return self.train.shape[1]

    @property
    def num_train(self) -> int:
        return self.train.shape[0]

    @property
    def num_test(self) -> int:
        return self.test.shape[0]

    def subset(self, num_train: int | None = None, num_test: int | None = None) -> Dataset:
        """The same data set restricted to the first ``num_train`` / ``num_test`` rows.

        Parameters
        ----------
        num_train, num_test : int, optional
            Number of leading rows to keep; None keeps the split whole. The validation split is
            kept as is.

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


def _head(
    x: torch.Tensor, labels: torch.Tensor | None, n: int | None, what: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if n is None:
        return x, labels
    if not 0 <= n <= x.shape[0]:
        raise ValueError(f"{what}={n} is outside [0, {x.shape[0]}]")
    return x[:n], None if labels is None else labels[:n]


# --------------------------------------------------------------------------- preprocessing


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 images (N, H, W) -> float32 (N, H * W) holding ``pixel / 256.`` (exact in float32)."""
    if images.dtype != np.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    flat = np.ascontiguousarray(images).reshape(images.shape[0], -1)
    return torch.from_numpy(flat.astype(np.float32) * np.float32(1 / 256))


def to_labels(labels: np.ndarray) -> torch.Tensor:
    """uint8 labels (N,) -> int64 tensor (N,)."""
    return torch.from_numpy(labels.astype(np.int64))


def _describe(paths: list[Path]) -> str:
    folders = sorted({str(p.parent) for p in paths})
    names = ", ".join(p.name for p in paths)
    return f"{', '.join(folders)} ({names})"


# --------------------------------------------------------------------------- loaders


def read_idx_split(
    folder: str, split: str, root: PathLike, *, download: bool = True
) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """Read and verify one split of an MNIST-like data set.

    Parameters
    ----------
    folder : str
        ``"mnist"`` or ``"fashion-mnist"``.
    split : str
        ``"train"`` or ``"t10k"``.
    root : path-like
        The data directory.
    download : bool
        Download missing files into ``root``.

    Returns
    -------
    images : numpy.ndarray
        (N, 28, 28) uint8, read-only.
    labels : numpy.ndarray
        (N,) uint8.
    paths : list of pathlib.Path
        The files read.
    """
    image_bytes, image_path = fetch_verified(
        f"{folder}/{split}-images-idx3-ubyte", root, download=download
    )
    label_bytes, label_path = fetch_verified(
        f"{folder}/{split}-labels-idx1-ubyte", root, download=download
    )
    images = read_idx_images(image_bytes, name=str(image_path))
    labels = read_idx_labels(label_bytes, name=str(label_path))
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{label_path} has {labels.shape[0]} labels but {image_path} has {images.shape[0]} "
            "images; delete both and download them again."
        )
    return images, labels, [image_path, label_path]


def _load_mnist_like(
    name: str, folder: str, license: str, data_dir: PathLike | None, download: bool, num_train: int
) -> Dataset:
    root = resolve_data_dir(data_dir)
    train_images, train_labels, train_paths = read_idx_split(
        folder, "train", root, download=download
    )
    test_images, test_labels, test_paths = read_idx_split(folder, "t10k", root, download=download)
    has_validation = num_train < train_images.shape[0]
    return Dataset(
        name=name,
        train=to_float(train_images[:num_train]),
        test=to_float(test_images),
        train_labels=to_labels(train_labels[:num_train]),
        test_labels=to_labels(test_labels),
        image_shape=(28, 28),
        likelihood="bernoulli",
        source=_describe(train_paths + test_paths),
        license=license,
        validation=to_float(train_images[num_train:]) if has_validation else None,
        validation_labels=to_labels(train_labels[num_train:]) if has_validation else None,
    )


def load_mnist(data_dir: PathLike | None = None, download: bool = True) -> Dataset:
    """MNIST with the AEVB paper's split.

    train: the first 50000 images of ``train-images-idx3-ubyte`` (50000, 784);
    validation: the last 10000 (10000, 784); test: the 10000 ``t10k`` images (10000, 784).
    Pixels are ``uint8 / 256.``; likelihood ``"bernoulli"`` (the paper uses these grey levels as
    Bernoulli targets, without binarization).
    """
    return _load_mnist_like("mnist", "mnist", MNIST_LICENSE, data_dir, download, MNIST_NUM_TRAIN)


def load_fashion_mnist(data_dir: PathLike | None = None, download: bool = True) -> Dataset:
    """Fashion-MNIST: train (60000, 784), test (10000, 784), ``uint8 / 256.``, ``"bernoulli"``."""
    return _load_mnist_like(
        "fashion-mnist", "fashion-mnist", FASHION_MNIST_LICENSE, data_dir, download, 60_000
    )


def frey_split(num_images: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed Frey Face split: indices (train, test) into the 1965 images of the file.

    A permutation drawn by ``numpy.random.default_rng(0)``; its last 200 entries are the test
    set and the other entries, in permuted order, the training set.
    """
    order = np.random.default_rng(FREY_SPLIT_SEED).permutation(num_images)
    return order[:-FREY_NUM_TEST], order[-FREY_NUM_TEST:]


def load_frey_face(data_dir: PathLike | None = None, download: bool = True) -> Dataset:
    """Frey Face: 1965 unlabelled 28x20 face images, likelihood ``"gaussian"``.

    The file holds no split, so a deterministic one is used (:func:`frey_split`): the images of
    ``frey_rawface.mat`` are permuted with ``numpy.random.default_rng(0).permutation(1965)``;
    the last 200 of that order are the test set (200, 560) and the first 1765, in that
    (shuffled) order, the training set (1765, 560). Pixels are ``uint8 / 256.``.
    """
    from scipy.io import loadmat  # scipy is slow to import; only this loader needs it

    root = resolve_data_dir(data_dir)
    content, path = fetch_verified("frey-face/frey_rawface.mat", root, download=download)
    ff = loadmat(io.BytesIO(content)).get("ff")
    expected = (FREY_IMAGE_SHAPE[0] * FREY_IMAGE_SHAPE[1], 1965)
    if ff is None or ff.dtype != np.uint8 or ff.shape != expected:
        found = "no variable 'ff'" if ff is None else f"'ff' is {ff.dtype} {ff.shape}"
        raise ValueError(
            f"{path}: expected a variable 'ff' of uint8 shape {expected}, found {found}; "
            "delete the file and download it again."
        )
    # One image per column, each stored row-major as 28 rows of 20 pixels.
    images = ff.T.reshape(-1, *FREY_IMAGE_SHAPE)
    train_idx, test_idx = frey_split(images.shape[0])
    return Dataset(
        name="frey-face",
        train=to_float(images[train_idx]),
        test=to_float(images[test_idx]),
        train_labels=None,
        test_labels=None,
        image_shape=FREY_IMAGE_SHAPE,
        likelihood="gaussian",
        source=_describe([path]),
        license=FREY_FACE_LICENSE,
    )


def _load_embedded(data_dir: PathLike | None = None, download: bool = True) -> Dataset:
    # Imported here because embedded.py imports Dataset from this module.
    from .embedded import load_embedded

    return load_embedded()


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "frey-face": load_frey_face,
    "embedded-mnist": _load_embedded,
}


def _canonical_name(name: str) -> str:
    canonical = str(name).strip().lower().replace("_", "-")
    if canonical not in _LOADERS:
        raise ValueError(f"Unknown dataset {name!r}; valid names are {', '.join(DATASET_NAMES)}")
    return canonical


def load_dataset(name: str, data_dir: PathLike | None = None, download: bool = True) -> Dataset:
    """Load a data set by name.

    Parameters
    ----------
    name : str
        One of :data:`DATASET_NAMES` (case-insensitive, ``_`` accepted for ``-``):
        ``"mnist"`` (train 50000, validation 10000, test 10000; see :func:`load_mnist`),
        ``"fashion-mnist"`` (60000 / 10000), ``"frey-face"`` (1765 / 200, see
        :func:`load_frey_face`) or ``"embedded-mnist"`` (5000 / 1000 real MNIST digits shipped
        with the package, see :func:`~pyro_aevb.data.embedded.load_embedded`).
    data_dir : path-like, optional
        The data directory; defaults to ``$PYRO_AEVB_DATA``, then to the user cache directory
        (``$XDG_CACHE_HOME/pyro-aevb`` or ``~/.cache/pyro-aevb``). Its layout is
        ``mnist/``, ``fashion-mnist/`` and ``frey-face/`` with the original file names.
        Ignored for ``"embedded-mnist"``.
    download : bool
        Download missing files into the data directory (verified by SHA-256).

    Returns
    -------
    Dataset

    Raises
    ------
    ValueError
        Unknown name, or a file whose checksum or format is wrong.
    FileNotFoundError
        A file is missing and could not (or may not) be downloaded.
    """
    return _LOADERS[_canonical_name(name)](data_dir=data_dir, download=download)
