"""Tests of pyro_aevb.data: the Dataset container, the loaders and the IDX reader.

Tests on the full data sets read them through $PYRO_AEVB_DATA and are skipped when it is unset.
"""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import pyro_aevb.data.embedded as embedded_module
from pyro_aevb import paper_vae
from pyro_aevb.data import (
    DATASET_NAMES,
    Dataset,
    data_dir_from_env,
    load_dataset,
    load_embedded,
)
from pyro_aevb.data.datasets import frey_split
from pyro_aevb.data.download import DATA_ENV_VAR, FILES, fetch_verified
from pyro_aevb.data.idx import read_idx, read_idx_images, read_idx_labels

MAX_PIXEL = 255 / 256


@pytest.fixture(scope="module")
def real_dir() -> Path:
    path = data_dir_from_env()
    if path is None:
        pytest.skip(f"{DATA_ENV_VAR} is not set: point it at the real data (e.g. ../shared/data)")
    return path.absolute()


@pytest.fixture(scope="module")
def mnist(real_dir: Path) -> Dataset:
    return load_dataset("mnist", download=False)


def raw_idx(path: Path, header: int) -> np.ndarray:
    """Independent parse of an IDX file: skip the header, keep the bytes."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return np.frombuffer(data, dtype=np.uint8, offset=header)


def check_images(x: torch.Tensor, n: int, dim: int, saturated: bool = True) -> None:
    assert x.shape == (n, dim)
    assert x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= MAX_PIXEL
    if saturated:  # digits reach pixel 255, which must map to 255/256, not 1
        assert x.max() == MAX_PIXEL
    # Every value is k / 256 for an integer k (exact in float32).
    assert torch.equal(x * 256, torch.round(x * 256))


def check_labels(y: torch.Tensor | None, n: int) -> None:
    assert y is not None and y.shape == (n,) and y.dtype == torch.int64
    assert set(y.unique().tolist()) == set(range(10))


# --------------------------------------------------------------------------- names


def test_dataset_names() -> None:
    assert DATASET_NAMES == ("mnist", "fashion-mnist", "frey-face", "embedded-mnist")


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="Unknown dataset 'cifar10'") as info:
        load_dataset("cifar10")
    for name in DATASET_NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize("name", ["Embedded_MNIST", " embedded-mnist ", "EMBEDDED-mnist"])
def test_name_normalization(name: str) -> None:
    assert load_dataset(name).name == "embedded-mnist"


# --------------------------------------------------------------------------- embedded


def test_embedded_loads_without_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing may be read or written there
    ds = load_embedded()
    assert ds.name == "embedded-mnist" and ds.likelihood == "bernoulli"
    assert ds.image_shape == (28, 28) and ds.data_dim == 784 and ds.num_train == 5000
    check_images(ds.train, 5000, 784)
    check_images(ds.test, 1000, 784)
    check_labels(ds.train_labels, 5000)
    check_labels(ds.test_labels, 1000)
    assert "CC BY-SA 3.0" in ds.license and "LeCun" in ds.license
    assert list(tmp_path.iterdir()) == []
    assert load_dataset("embedded-mnist", data_dir=tmp_path / "ignored").num_train == 5000


def test_embedded_checksum_is_verified(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded_module, "EMBEDDED_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="expected 0000") as info:
        load_embedded()
    assert "mnist_slice.npz" in str(info.value) and "reinstall" in str(info.value)


def test_embedded_readme_states_checksum_source_and_licence() -> None:
    readme = (Path(embedded_module.__file__).parent / "embedded" / "README.md").read_text()
    assert embedded_module.EMBEDDED_SHA256 in readme
    assert "CC BY-SA 3.0" in readme and "LeCun" in readme and "49990" in readme


def test_embedded_matches_real_mnist_rows(mnist: Dataset) -> None:
    emb = load_embedded()
    with np.load(Path(embedded_module.embedded_path())) as npz:
        train_idx, test_idx = npz["train_indices"], npz["test_indices"]
    np.testing.assert_array_equal(train_idx, np.arange(0, 50_000, 10))
    np.testing.assert_array_equal(test_idx, np.arange(0, 10_000, 10))
    assert torch.equal(emb.train, mnist.train[train_idx])
    assert torch.equal(emb.train_labels, mnist.train_labels[train_idx])
    assert torch.equal(emb.test, mnist.test[test_idx])
    assert torch.equal(emb.test_labels, mnist.test_labels[test_idx])


# --------------------------------------------------------------------------- Dataset


def test_subset() -> None:
    ds = load_embedded()
    small = ds.subset(num_train=100, num_test=10)
    assert small.num_train == 100 and small.num_test == 10 and small.data_dim == 784
    assert torch.equal(small.train, ds.train[:100]) and torch.equal(small.test, ds.test[:10])
    assert torch.equal(small.train_labels, ds.train_labels[:100])
    assert torch.equal(small.test_labels, ds.test_labels[:10])
    assert small.name == ds.name and small.image_shape == ds.image_shape
    assert ds.num_train == 5000  # the original is untouched
    assert ds.subset(num_test=0).num_train == 5000 and ds.subset(num_test=0).num_test == 0
    with pytest.raises(ValueError, match="num_train=5001"):
        ds.subset(num_train=5001)
    with pytest.raises(ValueError, match="num_test must be an int >= 0, got -1"):
        ds.subset(num_test=-1)


def test_dataset_rejects_inconsistent_fields() -> None:
    x = torch.zeros(3, 784)
    ok = dict(
        name="t", train=x, test=x, train_labels=None, test_labels=None, image_shape=(28, 28),
        likelihood="bernoulli", source="s", license="l",
    )  # fmt: skip
    Dataset(**ok)
    with pytest.raises(ValueError, match="shape"):
        Dataset(**{**ok, "image_shape": (28, 20)})
    with pytest.raises(ValueError, match="float32"):
        Dataset(**{**ok, "train": x.double()})
    with pytest.raises(ValueError, match="train_labels"):
        Dataset(**{**ok, "train_labels": torch.zeros(2, dtype=torch.int64)})
    with pytest.raises(ValueError, match="likelihood"):
        Dataset(**{**ok, "likelihood": "poisson"})


# --------------------------------------------------------------------------- IDX reader


def idx_bytes(array: np.ndarray, type_code: int = 0x08, dtype: str = "u1") -> bytes:
    header = struct.pack(">I", (type_code << 8) | array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def test_idx_roundtrip() -> None:
    images = np.arange(2 * 28 * 28, dtype=np.uint64).reshape(2, 28, 28).astype(np.uint8)
    np.testing.assert_array_equal(read_idx_images(idx_bytes(images)), images)
    labels = np.array([3, 1, 4], dtype=np.uint8)
    np.testing.assert_array_equal(read_idx_labels(idx_bytes(labels)), labels)
    ints = np.array([[1, -2], [70000, 5]], dtype=np.int32)
    parsed = read_idx(idx_bytes(ints, 0x0C, ">i4"))
    assert parsed.dtype.isnative
    np.testing.assert_array_equal(parsed, ints)


def test_idx_rejects_bad_files() -> None:
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    good = idx_bytes(images)
    with pytest.raises(ValueError, match="magic number 2049, expected 2051"):
        read_idx_images(idx_bytes(np.zeros(3, dtype=np.uint8)), name="f")
    with pytest.raises(ValueError, match=r"f: .*needs 1584 bytes, the file has 1583"):
        read_idx_images(good[:-1], name="f")
    with pytest.raises(ValueError, match="needs 1584 bytes"):
        read_idx_images(good + b"\0")
    with pytest.raises(ValueError, match="image shape"):
        read_idx_images(idx_bytes(np.zeros((2, 28, 20), dtype=np.uint8)))
    with pytest.raises(ValueError, match="element type"):
        read_idx(b"\0\0\x07\x01" + struct.pack(">I", 0))
    with pytest.raises(ValueError, match="no header"):
        read_idx(b"\0\0")


# --------------------------------------------------------------------------- real data


def test_mnist_is_the_papers_split(mnist: Dataset, real_dir: Path) -> None:
    assert mnist.name == "mnist" and mnist.likelihood == "bernoulli"
    assert mnist.image_shape == (28, 28) and mnist.data_dim == 784
    check_images(mnist.train, 50_000, 784)
    check_images(mnist.test, 10_000, 784)
    check_images(mnist.validation, 10_000, 784)
    check_labels(mnist.train_labels, 50_000)
    check_labels(mnist.test_labels, 10_000)
    check_labels(mnist.validation_labels, 10_000)
    assert str(real_dir / "mnist") in mnist.source and "LeCun" in mnist.license

    raw = raw_idx(real_dir / "mnist" / "train-images-idx3-ubyte.gz", 16).reshape(60_000, 784)
    raw_labels = raw_idx(real_dir / "mnist" / "train-labels-idx1-ubyte.gz", 8)
    expected = torch.from_numpy(raw.astype(np.float32) / 256)
    assert torch.equal(mnist.train, expected[:50_000])
    assert torch.equal(mnist.validation, expected[50_000:])
    np.testing.assert_array_equal(mnist.train_labels.numpy(), raw_labels[:50_000])
    np.testing.assert_array_equal(mnist.validation_labels.numpy(), raw_labels[50_000:])
    raw_test = raw_idx(real_dir / "mnist" / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 784)
    assert torch.equal(mnist.test, torch.from_numpy(raw_test / np.float32(256)))


def test_fashion_mnist(real_dir: Path) -> None:
    ds = load_dataset("fashion_mnist", download=False)
    assert ds.name == "fashion-mnist" and ds.likelihood == "bernoulli"
    assert ds.validation is None
    check_images(ds.train, 60_000, 784)
    check_images(ds.test, 10_000, 784)
    check_labels(ds.train_labels, 60_000)
    check_labels(ds.test_labels, 10_000)
    assert "Zalando" in ds.license


def test_frey_face(real_dir: Path) -> None:
    from scipy.io import loadmat

    ds = load_dataset("frey-face", download=False)
    assert ds.name == "frey-face" and ds.likelihood == "gaussian"
    assert ds.image_shape == (28, 20) and ds.data_dim == 560
    assert ds.train_labels is None and ds.test_labels is None
    check_images(ds.train, 1765, 560, saturated=False)  # the brightest Frey pixel is 238
    check_images(ds.test, 200, 560, saturated=False)

    images = loadmat(real_dir / "frey-face" / "frey_rawface.mat")["ff"].T.reshape(-1, 28, 20)
    flat = torch.from_numpy(images.reshape(1965, 560) / np.float32(256))
    order = np.random.default_rng(0).permutation(1965)
    train_idx, test_idx = frey_split(1965)
    np.testing.assert_array_equal(np.concatenate([train_idx, test_idx]), order)
    assert torch.equal(ds.train, flat[order[:1765]])
    assert torch.equal(ds.test, flat[order[1765:]])


def test_explicit_dir_beats_env(
    real_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))  # empty: would fail if used
    assert load_dataset("frey-face", data_dir=real_dir, download=False).num_train == 1765
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_dataset("frey-face", download=False)


def test_decompressed_idx_files_are_accepted(real_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "mnist").mkdir()
    for split in ("train", "t10k"):
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{split}-{kind}-ubyte"
            src = real_dir / "mnist" / f"{name}.gz"
            if split == "t10k":
                (tmp_path / "mnist" / name).write_bytes(gzip.decompress(src.read_bytes()))
            else:
                (tmp_path / "mnist" / f"{name}.gz").symlink_to(src)
    ds = load_dataset("MNIST", data_dir=tmp_path, download=False)
    assert ds.num_test == 10_000 and "t10k-images-idx3-ubyte," in ds.source


def test_tampered_mat_file_is_rejected(real_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "frey-face").mkdir()
    data = bytearray((real_dir / "frey-face" / "frey_rawface.mat").read_bytes())
    data[5000] ^= 0xFF
    bad = tmp_path / "frey-face" / "frey_rawface.mat"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError) as info:
        load_dataset("frey-face", data_dir=tmp_path, download=True)  # must not re-download
    message = str(info.value)
    assert str(bad) in message and FILES["frey-face/frey_rawface.mat"].sha256 in message
    assert "Delete it" in message and "download=True" in message
    assert bad.read_bytes() == bytes(data)  # left for the user to inspect


def test_tampered_idx_file_is_rejected(real_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "mnist").mkdir()
    src = real_dir / "mnist" / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(gzip.decompress(src.read_bytes()))
    data[100] = (data[100] + 1) % 10  # a wrong label: valid IDX, wrong content
    bad = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(ValueError, match="decompressed content") as info:
        fetch_verified("mnist/t10k-labels-idx1-ubyte", tmp_path, download=False)
    assert str(bad) in str(info.value)
    assert FILES["mnist/t10k-labels-idx1-ubyte"].sha256 in str(info.value)

    bad.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="not a valid gzip file"):
        fetch_verified("mnist/t10k-labels-idx1-ubyte", tmp_path, download=False)


def test_missing_file_error_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("mnist", data_dir=tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path / "mnist" / "train-images-idx3-ubyte") in message
    assert DATA_ENV_VAR in message and "download=True" in message
    assert "mnist/t10k-labels-idx1-ubyte[.gz]" in message  # the expected layout
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz" in message


def test_partial_copy_keeps_other_files(real_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(real_dir / "frey-face", tmp_path / "frey-face")
    assert load_dataset("frey-face", data_dir=tmp_path, download=False).num_test == 200
    with pytest.raises(FileNotFoundError, match="fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=tmp_path, download=False)


def test_loader_and_subset_arguments_are_checked_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty data_dir would be this folder: nothing lands here
    with pytest.raises(ValueError, match="data_dir='' is an empty path"):
        load_dataset("mnist", data_dir="")
    with pytest.raises(TypeError, match="flatten must be True or False, got 'False'"):
        load_dataset("embedded-mnist", flatten="False")
    with pytest.raises(TypeError, match="download must be True or False, got 'no'"):
        load_dataset("embedded-mnist", download="no")
    data = load_dataset("embedded-mnist")
    for bad in (True, 2.5, "10"):
        with pytest.raises(TypeError, match="num_train must be an int >= 0"):
            data.subset(num_train=bad)
    assert data.subset(num_train=3, num_test=0).train.shape[0] == 3
    assert list(tmp_path.iterdir()) == []


def test_a_dataset_without_a_test_split_is_refused_when_made() -> None:
    embedded = load_dataset("embedded-mnist")
    with pytest.raises(TypeError, match="test must be a tensor"):
        Dataset(
            name="mine",
            train=embedded.train,
            test=None,
            train_labels=None,
            test_labels=None,
            image_shape=(28, 28),
            likelihood="bernoulli",
            source="",
            license="",
        )


def test_paper_vae_needs_a_dataset_and_says_so() -> None:
    with pytest.raises(TypeError, match="paper_vae needs a Dataset"):
        paper_vae("mnist", 20)
    vae = paper_vae(load_dataset("embedded-mnist"), 3)
    assert vae.data_dim == 784
