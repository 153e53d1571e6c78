"""Tests of the two layouts of a Dataset: flat (N, H * W) and image-shaped (N, 1, H, W).

Tests on the full data sets read them through $PYRO_AEVB_DATA and are skipped when it is unset.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pyro_aevb.data import Dataset, data_dir_from_env, load_dataset, load_embedded
from pyro_aevb.data.download import DATA_ENV_VAR


@pytest.fixture(scope="module")
def real_dir() -> Path:
    path = data_dir_from_env()
    if path is None:
        pytest.skip(f"{DATA_ENV_VAR} is not set: point it at the real data (e.g. ../shared/data)")
    return path.absolute()


def same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def assert_same_values(images: Dataset, flat: Dataset) -> None:
    """``images`` is ``flat`` with every datapoint reshaped to (1, H, W), nothing else changed."""
    assert images.is_flat is False and flat.is_flat is True
    assert images.image_shape == flat.image_shape and images.data_dim == flat.data_dim
    for split in ("train", "test", "validation"):
        x, y = getattr(images, split), getattr(flat, split)
        if y is None:
            assert x is None
            continue
        assert x.shape == (y.shape[0], 1, *flat.image_shape) and x.dtype == torch.float32
        assert torch.equal(x.reshape(y.shape), y)
        labels, flat_labels = getattr(images, f"{split}_labels"), getattr(flat, f"{split}_labels")
        assert (labels is None and flat_labels is None) or torch.equal(labels, flat_labels)


# --------------------------------------------------------------------------- embedded


def test_embedded_image_shape() -> None:
    flat = load_embedded()
    images = load_embedded(flatten=False)
    assert images.train.shape == (5000, 1, 28, 28) and images.test.shape == (1000, 1, 28, 28)
    assert images.event_shape == (1, 28, 28) and flat.event_shape == (784,)
    assert images.data_dim == 784 and images.image_shape == (28, 28)
    assert_same_values(images, flat)
    # Row-major flattening: pixel (r, c) of an image is entry r * 28 + c of its flat row.
    assert images.train[7, 0, 13, 5] == flat.train[7, 13 * 28 + 5]
    assert load_dataset("embedded_mnist", flatten=False).train.shape == (5000, 1, 28, 28)


def test_conversions_are_views() -> None:
    flat = load_embedded()
    images = flat.as_images()
    assert_same_values(images, flat)
    assert same_storage(images.train, flat.train) and same_storage(images.test, flat.test)
    back = images.flattened()
    assert torch.equal(back.train, flat.train) and same_storage(back.train, flat.train)
    # Already in the requested layout: the same object.
    assert flat.flattened() is flat and images.as_images() is images
    assert flat.reshaped(flatten=True) is flat
    assert flat.reshaped(flatten=False).event_shape == (1, 28, 28)


def test_subset_keeps_the_layout() -> None:
    images = load_embedded(flatten=False)
    small = images.subset(num_train=10, num_test=0)
    assert small.train.shape == (10, 1, 28, 28) and small.test.shape == (0, 1, 28, 28)
    assert torch.equal(small.train, images.train[:10])
    assert small.flattened().test.shape == (0, 784)  # an empty split converts too


def test_dataset_validates_both_layouts() -> None:
    def make(train: torch.Tensor, test: torch.Tensor, image_shape=(28, 20)) -> Dataset:
        return Dataset(
            name="t", train=train, test=test, train_labels=None, test_labels=None,
            image_shape=image_shape, likelihood="gaussian", source="s", license="l",
        )  # fmt: skip

    flat, images = torch.zeros(3, 560), torch.zeros(3, 1, 28, 20)
    assert make(flat, flat).event_shape == (560,)
    assert make(images, images).event_shape == (1, 28, 20)
    assert make(images, images).data_dim == 560
    with pytest.raises(ValueError, match=r"test must be float32 of shape \(N, 1, 28, 20\)"):
        make(images, flat)  # mixed layouts
    with pytest.raises(ValueError, match=r"flat \(N, 560\) or image-shaped \(N, 1, 28, 20\)"):
        make(torch.zeros(3, 28, 20), torch.zeros(3, 28, 20))  # no channel dimension
    with pytest.raises(ValueError, match="shape"):
        make(images, images, image_shape=(20, 28))  # transposed images
    with pytest.raises(ValueError, match="float32"):
        make(images, images.double())


# --------------------------------------------------------------------------- real data


def test_mnist_image_shape(real_dir: Path) -> None:
    images = load_dataset("mnist", download=False, flatten=False)
    assert images.train.shape == (50_000, 1, 28, 28)
    assert images.validation.shape == (10_000, 1, 28, 28)
    assert images.test.shape == (10_000, 1, 28, 28)
    assert images.event_shape == (1, 28, 28) and images.data_dim == 784
    # The same values as the flat layout: the embedded slice is every 10th flat MNIST row
    # (test_datasets.py checks that), so compare with it rather than load MNIST twice.
    embedded = load_embedded()
    assert torch.equal(images.train[::10].reshape(5000, 784), embedded.train)
    assert torch.equal(images.test[::10].reshape(1000, 784), embedded.test)
    assert torch.equal(images.train_labels[::10], embedded.train_labels)


def test_frey_face_image_shape(real_dir: Path) -> None:
    flat = load_dataset("frey-face", download=False)
    images = load_dataset("frey-face", download=False, flatten=False)
    assert images.train.shape == (1765, 1, 28, 20) and images.test.shape == (200, 1, 28, 20)
    assert images.event_shape == (1, 28, 20) and images.data_dim == 560
    assert_same_values(images, flat)
