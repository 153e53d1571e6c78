"""A small real slice of MNIST shipped inside the package, for tests, tutorials and quick runs.

``embedded/mnist_slice.npz`` holds uint8 arrays ``train_images`` (5000, 28, 28),
``train_labels`` (5000,), ``test_images`` (1000, 28, 28), ``test_labels`` (1000,) and the
indices they were taken at, ``train_indices`` (every 10th of the first 50000 MNIST training
images: 0, 10, ..., 49990) and ``test_indices`` (every 10th t10k image: 0, 10, ..., 9990).
Every 10th rather than the first rows because the t10k file is ordered (its first 5000 digits
are the easier ones). Regenerate it with ``python -m pyro_aevb.data.make_embedded``.
"""

from __future__ import annotations

import hashlib
import io
from importlib import resources

import numpy as np

from .dataset import MNIST_LICENSE, Dataset, to_float, to_labels

__all__ = ["EMBEDDED_FILE", "EMBEDDED_SHA256", "embedded_path", "load_embedded"]

EMBEDDED_FILE = "mnist_slice.npz"
EMBEDDED_SHA256 = "51783f32f65875723730862b68d7f93994b8111231c6591bd6918ef14dee354b"
EMBEDDED_KEYS = (
    "train_images",
    "train_labels",
    "train_indices",
    "test_images",
    "test_labels",
    "test_indices",
)


def embedded_path() -> str:
    """Location of the shipped ``.npz`` (for messages; read it with :func:`load_embedded`)."""
    return str(resources.files(__package__).joinpath("embedded").joinpath(EMBEDDED_FILE))


def load_embedded(flatten: bool = True) -> Dataset:
    """5000 training and 1000 test MNIST digits shipped with the package (no file access needed).

    Preprocessed like :func:`~pyro_aevb.data.datasets.load_mnist`: train (5000, 784) and test
    (1000, 784) float32 ``uint8 / 256.``, or (5000, 1, 28, 28) and (1000, 1, 28, 28) with
    ``flatten=False``; int64 labels, likelihood ``"bernoulli"``. The datapoints are the MNIST
    training images 0, 10, ..., 49990 (all inside the paper's 50000-image training split) and
    the t10k images 0, 10, ..., 9990.

    Raises
    ------
    ValueError
        If the shipped file does not match :data:`EMBEDDED_SHA256` (a damaged installation).
    """
    content = resources.files(__package__).joinpath("embedded").joinpath(EMBEDDED_FILE).read_bytes()
    actual = hashlib.sha256(content).hexdigest()
    if actual != EMBEDDED_SHA256:
        raise ValueError(
            f"{embedded_path()}: SHA-256 is {actual}, expected {EMBEDDED_SHA256}. The package's "
            "embedded data is damaged; reinstall pyro-aevb (or, in a source checkout, restore the "
            "file with git or regenerate it with python -m pyro_aevb.data.make_embedded)."
        )
    with np.load(io.BytesIO(content), allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in EMBEDDED_KEYS}
    return Dataset(
        name="embedded-mnist",
        train=to_float(arrays["train_images"], flatten),
        test=to_float(arrays["test_images"], flatten),
        train_labels=to_labels(arrays["train_labels"]),
        test_labels=to_labels(arrays["test_labels"]),
        image_shape=(28, 28),
        likelihood="bernoulli",
        source=f"{embedded_path()} (MNIST training images 0:50000:10, t10k images 0:10000:10)",
        license=MNIST_LICENSE,
    )
