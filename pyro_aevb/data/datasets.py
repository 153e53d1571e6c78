"""The loaders of the data sets by name: MNIST, Fashion-MNIST, Frey Face and the embedded slice.

Every file-backed loader goes through the same path: resolve the data directory
(:func:`~pyro_aevb.data.data_dir.resolve_data_dir`), fetch and verify each file against its size
and SHA-256 (:func:`~pyro_aevb.data.download.fetch_verified`, downloading it if allowed), parse
it, and turn uint8 pixels into float32 ``pixel / 256.`` (:func:`~pyro_aevb.data.dataset.to_float`:
the paper's convention) of shape ``(N, H * W)``, or ``(N, 1, H, W)`` with ``flatten=False``.

:func:`load_dataset` is the registry: it maps each name of :data:`DATASET_NAMES` to its loader,
including the embedded slice of :mod:`~pyro_aevb.data.embedded`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..validation import check_bool
from .data_dir import resolve_data_dir
from .dataset import (
    FASHION_MNIST_LICENSE,
    FREY_FACE_LICENSE,
    MNIST_LICENSE,
    Dataset,
    to_float,
    to_labels,
)
from .download import fetch_verified
from .embedded import load_embedded
from .idx import read_idx_images, read_idx_labels

__all__ = [
    "DATASET_NAMES",
    "Dataset",
    "canonical_name",
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

PathLike = str | os.PathLike[str]


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
    name: str,
    folder: str,
    license: str,
    data_dir: PathLike | None,
    download: bool,
    flatten: bool,
    num_train: int,
) -> Dataset:
    root = resolve_data_dir(data_dir)
    train_images, train_labels, train_paths = read_idx_split(
        folder, "train", root, download=download
    )
    test_images, test_labels, test_paths = read_idx_split(folder, "t10k", root, download=download)
    has_validation = num_train < train_images.shape[0]
    return Dataset(
        name=name,
        train=to_float(train_images[:num_train], flatten),
        test=to_float(test_images, flatten),
        train_labels=to_labels(train_labels[:num_train]),
        test_labels=to_labels(test_labels),
        image_shape=(28, 28),
        likelihood="bernoulli",
        source=_describe(train_paths + test_paths),
        license=license,
        validation=to_float(train_images[num_train:], flatten) if has_validation else None,
        validation_labels=to_labels(train_labels[num_train:]) if has_validation else None,
    )


def load_mnist(
    data_dir: PathLike | None = None, download: bool = True, flatten: bool = True
) -> Dataset:
    """MNIST with the AEVB paper's split.

    train: the first 50000 images of ``train-images-idx3-ubyte``, (50000, 784);
    validation: the last 10000, (10000, 784); test: the 10000 ``t10k`` images, (10000, 784).
    With ``flatten=False`` each image is (1, 28, 28) instead of (784,), e.g. (50000, 1, 28, 28).
    Pixels are ``uint8 / 256.``; likelihood ``"bernoulli"`` (the paper uses these grey levels as
    Bernoulli targets, without binarization).
    """
    return _load_mnist_like(
        "mnist", "mnist", MNIST_LICENSE, data_dir, download, flatten, MNIST_NUM_TRAIN
    )


def load_fashion_mnist(
    data_dir: PathLike | None = None, download: bool = True, flatten: bool = True
) -> Dataset:
    """Fashion-MNIST: train (60000, 784), test (10000, 784), ``uint8 / 256.``, ``"bernoulli"``.

    With ``flatten=False``: train (60000, 1, 28, 28), test (10000, 1, 28, 28).
    """
    return _load_mnist_like(
        "fashion-mnist", "fashion-mnist", FASHION_MNIST_LICENSE, data_dir, download, flatten, 60_000
    )


def frey_split(num_images: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed Frey Face split: indices (train, test) into the 1965 images of the file.

    A permutation drawn by ``numpy.random.default_rng(0)``; its last 200 entries are the test
    set and the other entries, in permuted order, the training set.
    """
    order = np.random.default_rng(FREY_SPLIT_SEED).permutation(num_images)
    return order[:-FREY_NUM_TEST], order[-FREY_NUM_TEST:]


def load_frey_face(
    data_dir: PathLike | None = None, download: bool = True, flatten: bool = True
) -> Dataset:
    """Frey Face: 1965 unlabelled 28x20 face images, likelihood ``"gaussian"``.

    The file holds no split, so a deterministic one is used (:func:`frey_split`): the images of
    ``frey_rawface.mat`` are permuted with ``numpy.random.default_rng(0).permutation(1965)``;
    the last 200 of that order are the test set (200, 560) and the first 1765, in that
    (shuffled) order, the training set (1765, 560). With ``flatten=False`` the splits are
    (1765, 1, 28, 20) and (200, 1, 28, 20). Pixels are ``uint8 / 256.``.
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
        train=to_float(images[train_idx], flatten),
        test=to_float(images[test_idx], flatten),
        train_labels=None,
        test_labels=None,
        image_shape=FREY_IMAGE_SHAPE,
        likelihood="gaussian",
        source=_describe([path]),
        license=FREY_FACE_LICENSE,
    )


def _load_embedded(
    data_dir: PathLike | None = None, download: bool = True, flatten: bool = True
) -> Dataset:
    # The embedded slice ships with the package: there is no directory to read or download into.
    return load_embedded(flatten=flatten)


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "frey-face": load_frey_face,
    "embedded-mnist": _load_embedded,
}


def canonical_name(name: str) -> str:
    """A data set's name as :data:`DATASET_NAMES` spells it (case and ``_`` for ``-`` do not
    matter); an unknown name is a ``ValueError`` listing the valid ones."""
    canonical = str(name).strip().lower().replace("_", "-")
    if canonical not in _LOADERS:
        raise ValueError(f"Unknown dataset {name!r}; valid names are {', '.join(DATASET_NAMES)}")
    return canonical


def load_dataset(
    name: str, data_dir: PathLike | None = None, download: bool = True, flatten: bool = True
) -> Dataset:
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
        Download missing files into the data directory (verified by size and SHA-256).
    flatten : bool
        True (default): splits of shape ``(N, H * W)``, for MLPs. False: ``(N, 1, H, W)``, one
        channel, for convolutional models (see :attr:`Dataset.event_shape`).

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
    loader = _LOADERS[canonical_name(name)]
    download, flatten = check_bool(download, "download"), check_bool(flatten, "flatten")
    return loader(data_dir=data_dir, download=download, flatten=flatten)
