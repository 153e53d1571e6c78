"""Tests of pyro_aevb.data.download: directory resolution, verification and mirror downloads.

No network: mirrors are ``file://`` URLs or a monkeypatched ``urlopen``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import urllib.error
from pathlib import Path

import numpy as np
import pytest

import pyro_aevb.data.download as dl
from pyro_aevb.data import data_dir_from_env, load_dataset
from pyro_aevb.data.download import (
    DATA_ENV_VAR,
    RemoteFile,
    default_cache_dir,
    download_file,
    fetch_verified,
    resolve_data_dir,
)

LABELS = "mnist/t10k-labels-idx1-ubyte"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


@pytest.fixture
def labels_idx() -> bytes:
    """A small valid IDX labels file."""
    labels = np.arange(20, dtype=np.uint8) % 10
    return b"\0\0\x08\x01" + (20).to_bytes(4, "big") + labels.tobytes()


@pytest.fixture
def fake_mnist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, labels_idx: bytes) -> Path:
    """Register ``labels_idx`` as the t10k labels, served gzipped by a dead and a good mirror."""
    good = tmp_path / "good_mirror"
    good.mkdir()
    (good / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels_idx))
    spec = RemoteFile(LABELS, sha(labels_idx), gzipped=True, size=len(labels_idx))
    monkeypatch.setitem(dl.FILES, LABELS, spec)
    missing = (tmp_path / "no_such_mirror").as_uri() + "/"
    monkeypatch.setitem(dl.MIRRORS, "mnist", (missing, good.as_uri() + "/"))
    return good


# --------------------------------------------------------------------------- directories


def test_data_dir_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    assert data_dir_from_env() is None
    monkeypatch.setenv(DATA_ENV_VAR, "")
    assert data_dir_from_env() is None
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    assert data_dir_from_env() == tmp_path


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "pyro-aevb"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "pyro-aevb"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # the XDG spec says: ignore
    assert default_cache_dir() == tmp_path / ".cache" / "pyro-aevb"


def test_resolve_data_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    assert resolve_data_dir() == tmp_path / "cache" / "pyro-aevb"
    assert not (tmp_path / "cache").exists()  # the default is created by a download only
    for name in ("env", "arg", "rel"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DATA_ENV_VAR, "rel")
    assert resolve_data_dir() == tmp_path / "rel"


def test_explicit_data_dir_must_exist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A typo in data_dir or $PYRO_AEVB_DATA is reported, not replaced by another directory.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "no_such_env"))
    with pytest.raises(FileNotFoundError, match=f"{DATA_ENV_VAR}=.*no_such_env.* does not exist"):
        resolve_data_dir()
    with pytest.raises(FileNotFoundError, match="argument data_dir=.*no_such_arg.* does not exist"):
        resolve_data_dir(tmp_path / "no_such_arg")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(NotADirectoryError, match="data_dir=.*a_file.* is not a directory"):
        resolve_data_dir(tmp_path / "a_file")
    with pytest.raises(FileNotFoundError, match="no_such_env"):
        load_dataset("mnist", download=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # nothing created


# --------------------------------------------------------------------------- download_file


def test_download_file_from_file_url(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    dest = tmp_path / "out" / "sub" / "file.bin"
    assert download_file([src.as_uri()], dest, sha(b"payload")) == dest
    assert dest.read_bytes() == b"payload"
    assert leftovers(dest.parent) == []


def test_download_file_falls_back_to_next_mirror(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(b"tampered")
    urls = [(tmp_path / "missing.bin").as_uri(), wrong.as_uri(), src.as_uri()]
    dest = tmp_path / "dest.bin"
    download_file(urls, dest, sha(b"payload"))
    assert dest.read_bytes() == b"payload"
    assert leftovers(tmp_path) == []


def test_download_file_checksum_failure(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"tampered")
    dest = tmp_path / "dest.bin"
    with pytest.raises(ValueError, match="integrity check") as info:
        download_file([src.as_uri()], dest, sha(b"payload"))
    assert sha(b"tampered") in str(info.value) and sha(b"payload") in str(info.value)
    assert not dest.exists()
    assert leftovers(tmp_path) == []


def test_download_file_checks_decompressed_content(tmp_path: Path) -> None:
    src = tmp_path / "src.gz"
    src.write_bytes(gzip.compress(b"payload"))
    download_file([src.as_uri()], tmp_path / "a.gz", sha(b"payload"), gzipped=True)
    assert gzip.decompress((tmp_path / "a.gz").read_bytes()) == b"payload"
    not_gzip = tmp_path / "plain"
    not_gzip.write_bytes(b"payload")
    with pytest.raises(ValueError, match="unreadable"):
        download_file([not_gzip.as_uri()], tmp_path / "b.gz", sha(b"payload"), gzipped=True)
    assert not (tmp_path / "b.gz").exists()


def test_download_file_all_mirrors_unreachable(tmp_path: Path) -> None:
    urls = [(tmp_path / "a").as_uri(), (tmp_path / "b").as_uri()]
    with pytest.raises(FileNotFoundError) as info:
        download_file(urls, tmp_path / "dest", sha(b""))
    assert urls[0] in str(info.value) and urls[1] in str(info.value)
    assert leftovers(tmp_path) == []


def test_download_file_http_error_falls_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[tuple[str, str]] = []

    def fake_urlopen(request, timeout):
        seen.append((request.full_url, request.get_header("User-agent")))
        if "down" in request.full_url:
            raise urllib.error.HTTPError(request.full_url, 503, "Unavailable", {}, None)
        return io.BytesIO(b"payload")

    monkeypatch.setattr(dl.urllib.request, "urlopen", fake_urlopen)
    dest = tmp_path / "dest"
    download_file(["https://down.example/x", "https://up.example/x"], dest, sha(b"payload"))
    assert dest.read_bytes() == b"payload"
    assert [url for url, _ in seen] == ["https://down.example/x", "https://up.example/x"]
    assert all(agent.startswith("pyro-aevb") for _, agent in seen)


# --------------------------------------------------------------------------- fetch_verified


def test_fetch_downloads_into_data_dir_then_reuses_it(
    fake_mnist: Path, tmp_path: Path, labels_idx: bytes
) -> None:
    root = tmp_path / "data"
    content, path = fetch_verified(LABELS, root, download=True)
    assert content == labels_idx
    assert path == root / "mnist" / "t10k-labels-idx1-ubyte.gz"
    (fake_mnist / "t10k-labels-idx1-ubyte.gz").unlink()  # a second call must not download
    assert fetch_verified(LABELS, root, download=False) == (labels_idx, path)
    assert leftovers(root / "mnist") == []


def test_fetch_without_download_names_everything(fake_mnist: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        fetch_verified(LABELS, tmp_path / "data", download=False)
    message = str(info.value)
    assert str(tmp_path / "data" / LABELS) in message and DATA_ENV_VAR in message
    assert "download=False" in message and fake_mnist.as_uri() in message
    assert not (tmp_path / "data").exists()


def test_fetch_failed_download_is_file_not_found(
    monkeypatch: pytest.MonkeyPatch, fake_mnist: Path, tmp_path: Path
) -> None:
    (fake_mnist / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as info:
        fetch_verified(LABELS, tmp_path / "data", download=True)
    message = str(info.value)
    assert "download failed" in message and DATA_ENV_VAR in message
    assert "no_such_mirror" in message


def test_a_failed_download_does_not_advise_downloading(fake_mnist: Path, tmp_path: Path) -> None:
    (fake_mnist / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as info:
        fetch_verified(LABELS, tmp_path / "data", download=True)
    assert "download=True" not in str(info.value) and "by hand" in str(info.value)


def test_a_data_dir_that_is_the_data_sets_own_folder_is_named_not_downloaded_into(
    fake_mnist: Path, tmp_path: Path, labels_idx: bytes
) -> None:
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels_idx))
    with pytest.raises(FileNotFoundError, match="seems to be the mnist/ folder itself") as info:
        fetch_verified(LABELS, folder, download=True)
    assert str(tmp_path / "data") in str(info.value)
    assert f"{folder / 't10k-labels-idx1-ubyte.gz'} exists" in str(info.value)
    assert not (folder / "mnist").exists()  # nothing downloaded into mnist/mnist/


def test_fetch_refuses_bad_download(fake_mnist: Path, tmp_path: Path) -> None:
    (fake_mnist / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x01garbage"))
    with pytest.raises(ValueError, match="integrity check"):
        fetch_verified(LABELS, tmp_path / "data", download=True)
    assert not (tmp_path / "data").exists()  # the folders made for the download are removed


# --------------------------------------------------------------------------- real files


@pytest.fixture
def real_dir() -> Path:
    path = data_dir_from_env()
    if path is None:
        pytest.skip(f"{DATA_ENV_VAR} is not set: point it at the real data (e.g. ../shared/data)")
    return path.absolute()


def test_load_dataset_downloads_into_user_cache(
    real_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The real file, "downloaded" from a file:// mirror into the default cache directory.
    monkeypatch.delenv(DATA_ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setitem(dl.MIRRORS, "frey-face", ((real_dir / "frey-face").as_uri() + "/",))
    ds = load_dataset("frey-face")
    cached = tmp_path / "pyro-aevb" / "frey-face" / "frey_rawface.mat"
    assert cached.read_bytes() == (real_dir / "frey-face" / "frey_rawface.mat").read_bytes()
    assert str(cached.parent) in ds.source and ds.num_train == 1765


def test_load_mnist_via_mirror_fallback(
    real_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    mirrors = ((tmp_path / "dead").as_uri() + "/", (real_dir / "mnist").as_uri() + "/")
    monkeypatch.setitem(dl.MIRRORS, "mnist", mirrors)
    (tmp_path / "data").mkdir()  # an explicit data_dir must exist; mnist/ in it is created
    ds = load_dataset("mnist", data_dir=tmp_path / "data")
    assert ds.num_train == 50_000 and ds.num_test == 10_000
    assert len(list((tmp_path / "data" / "mnist").glob("*.gz"))) == 4
