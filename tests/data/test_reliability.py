"""Fault injection on the data files: bombs, short files, unreadable files, bogus directories,
stale temporaries and random corruption must never load silently nor leave debris behind.

No network: mirrors are dead or ``file://`` URLs. The random corruption test reads a real IDX
file through $PYRO_AEVB_DATA and is skipped when it is unset.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pytest

import pyro_aevb.data.download as dl
import pyro_aevb.data.verify as verify
from pyro_aevb.data import data_dir_from_env, load_dataset
from pyro_aevb.data.data_dir import DATA_ENV_VAR
from pyro_aevb.data.download import download_file, fetch_verified, remove_stale_temps
from pyro_aevb.data.layout import FILES, MIRRORS, RemoteFile

LABELS = "mnist/t10k-labels-idx1-ubyte"
MEMBER = gzip.compress(bytes(1 << 20), compresslevel=9)  # 1 MiB of zeros in ~1 KiB


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def labels_idx() -> bytes:
    """A small valid IDX labels file."""
    labels = np.arange(20, dtype=np.uint8) % 10
    return b"\0\0\x08\x01" + (20).to_bytes(4, "big") + labels.tobytes()


@pytest.fixture
def fake_labels(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, labels_idx: bytes) -> Path:
    """Register ``labels_idx`` as the t10k labels, with a dead mirror; return the data dir."""
    spec = RemoteFile(LABELS, sha(labels_idx), gzipped=True, size=len(labels_idx))
    monkeypatch.setitem(FILES, LABELS, spec)
    monkeypatch.setitem(MIRRORS, "mnist", ((tmp_path / "dead_mirror").as_uri() + "/",))
    root = tmp_path / "data"
    (root / "mnist").mkdir(parents=True)
    return root


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the bytes the verifying reader pulls out of a file (all of them are hashed)."""
    counts: list[int] = []

    class CountingSha256:
        def __init__(self) -> None:
            self._sha = hashlib.sha256()
            counts.append(0)

        def update(self, data) -> None:
            counts[-1] += len(data)
            self._sha.update(data)

        def hexdigest(self) -> str:
            return self._sha.hexdigest()

    class FakeHashlib:
        sha256 = CountingSha256

    monkeypatch.setattr(verify, "hashlib", FakeHashlib)
    return counts


def assert_says_what_to_do(message: str, path: Path) -> None:
    assert str(path) in message
    assert "Delete it" in message and "download=True" in message


# --------------------------------------------------------------------------- sizes


def test_gzip_bomb_is_stopped_at_the_expected_size(
    fake_labels: Path, labels_idx: bytes, hashed: list[int]
) -> None:
    size = len(labels_idx)
    bomb = fake_labels / "mnist" / "t10k-labels-idx1-ubyte.gz"
    bomb.write_bytes(MEMBER * 32)  # 32 MiB of content in 33 KiB, small enough to be read
    start = time.perf_counter()
    with pytest.raises(ValueError, match=f"decompresses to more than the expected {size} bytes"):
        fetch_verified(LABELS, fake_labels, download=False)
    assert time.perf_counter() - start < 1.0  # inflating it all would take ~0.1 s per 32 MiB
    assert hashed == [size + 1]  # one byte past the expected size, not 32 MiB
    with pytest.raises(ValueError) as info:
        fetch_verified(LABELS, fake_labels, download=True)  # a bad local copy is never replaced
    assert_says_what_to_do(str(info.value), bomb)
    assert "decompression bomb" in str(info.value) and bomb.stat().st_size == len(MEMBER) * 32


def test_gzip_bomb_of_real_file_size(tmp_path: Path, hashed: list[int]) -> None:
    # The real t10k labels spec (10008 bytes) and a 64 MiB bomb in its place.
    (tmp_path / "mnist").mkdir()
    bomb = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    bomb.write_bytes(MEMBER * 64)
    with pytest.raises(ValueError, match="more than the expected 10,008 bytes") as info:
        fetch_verified(LABELS, tmp_path, download=False)
    assert_says_what_to_do(str(info.value), bomb)
    assert sum(hashed) <= 10_009


def test_oversized_files_are_rejected_unread(fake_labels: Path, hashed: list[int]) -> None:
    # Larger than any gzip of the content can be: rejected before decompressing anything.
    big = fake_labels / "mnist" / "t10k-labels-idx1-ubyte.gz"
    big.write_bytes(MEMBER * 100)
    with pytest.raises(ValueError, match=r"is 105,100 bytes long, .* at most 65,564") as info:
        fetch_verified(LABELS, fake_labels, download=False)
    assert_says_what_to_do(str(info.value), big)
    big.unlink()
    plain = fake_labels / "mnist" / "t10k-labels-idx1-ubyte"
    plain.write_bytes(bytes(10_000))
    with pytest.raises(ValueError, match="is 10,000 bytes long, but the expected file is 28"):
        fetch_verified(LABELS, fake_labels, download=False)
    assert hashed == []


def test_too_short_content_is_rejected(fake_labels: Path, labels_idx: bytes) -> None:
    short = fake_labels / "mnist" / "t10k-labels-idx1-ubyte.gz"
    short.write_bytes(gzip.compress(labels_idx[:-3]))
    with pytest.raises(ValueError, match="decompresses to only 25 bytes, .* has 28") as info:
        fetch_verified(LABELS, fake_labels, download=False)
    assert_says_what_to_do(str(info.value), short)
    short.unlink()
    plain = fake_labels / "mnist" / "t10k-labels-idx1-ubyte"
    plain.write_bytes(labels_idx[:-3])
    with pytest.raises(ValueError, match="is 25 bytes long, but the expected file is 28"):
        fetch_verified(LABELS, fake_labels, download=False)


def test_download_is_bounded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, labels_idx: bytes
) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "huge").write_bytes(bytes(200_000))
    (mirror / "bomb.gz").write_bytes(MEMBER * 8)
    dest = tmp_path / "data" / "labels.gz"
    with pytest.raises(ValueError, match="integrity check") as info:
        download_file(
            [(mirror / "huge").as_uri(), (mirror / "bomb.gz").as_uri()],
            dest,
            sha(labels_idx),
            gzipped=True,
            size=len(labels_idx),
        )
    message = str(info.value)
    assert "sent more than 65,564 bytes" in message and "decompresses to more than" in message
    assert not (tmp_path / "data").exists()  # made for the download, removed with it


# --------------------------------------------------------------------------- directories


def test_bogus_data_dir_gets_nothing_created(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dead = (tmp_path / "dead_mirror").as_uri() + "/"
    for folder in ("mnist", "fashion-mnist", "frey-face"):
        monkeypatch.setitem(MIRRORS, folder, (dead,))
    bogus = tmp_path / "bogus"
    bogus.mkdir()
    monkeypatch.setenv(DATA_ENV_VAR, str(bogus))
    for name in ("mnist", "fashion-mnist", "frey-face"):
        for download in (False, True):
            with pytest.raises(FileNotFoundError, match=str(bogus)):
                load_dataset(name, download=download)
    assert list(bogus.iterdir()) == []
    # Nor in the default cache, when no mirror answers.
    monkeypatch.delenv(DATA_ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="download failed"):
        load_dataset("frey-face")
    assert not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------- unreadable files


def test_unreadable_file_is_named(
    monkeypatch: pytest.MonkeyPatch, fake_labels: Path, labels_idx: bytes
) -> None:
    # Simulated, so that it also runs as root (who can read a chmod 000 file).
    path = fake_labels / "mnist" / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(labels_idx))

    def denied(file, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(verify, "open", denied, raising=False)
    with pytest.raises(PermissionError) as info:
        fetch_verified(LABELS, fake_labels, download=True)
    message = str(info.value)
    assert message.startswith(f"Cannot read data file {path}: Permission denied.")
    assert "chmod u+r" in message and DATA_ENV_VAR in message
    assert isinstance(info.value.__cause__, PermissionError)


def test_chmod_000_file_is_named(fake_labels: Path, labels_idx: bytes) -> None:
    path = fake_labels / "mnist" / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(labels_idx))
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("this user (root?) can read a chmod 000 file")
        with pytest.raises(PermissionError, match=f"Cannot read data file {path}"):
            fetch_verified(LABELS, fake_labels, download=False)
    finally:
        path.chmod(0o644)


def test_chmod_000_folder_is_named(fake_labels: Path, labels_idx: bytes) -> None:
    folder = fake_labels / "mnist"
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels_idx))
    folder.chmod(0)
    try:
        if os.access(folder, os.X_OK):
            pytest.skip("this user (root?) can enter a chmod 000 folder")
        with pytest.raises(PermissionError, match=f"Cannot read data file {folder}"):
            fetch_verified(LABELS, fake_labels, download=True)
    finally:
        folder.chmod(0o755)


def test_directory_in_place_of_file(fake_labels: Path) -> None:
    path = fake_labels / "mnist" / "t10k-labels-idx1-ubyte"
    path.mkdir()
    with pytest.raises(IsADirectoryError, match=f"Cannot read data file {path}.*move it away"):
        fetch_verified(LABELS, fake_labels, download=True)


# --------------------------------------------------------------------------- temporaries


def test_stale_temporaries_are_removed(fake_labels: Path, labels_idx: bytes) -> None:
    folder = fake_labels / "mnist"
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels_idx))
    stale = folder / ".t10k-labels-idx1-ubyte.gz.k2j_9x0a.part"
    fresh = folder / ".t10k-labels-idx1-ubyte.gz.a8d7f6e5.part"  # another process's, in progress
    others = [
        folder / ".train-labels-idx1-ubyte.gz.k2j_9x0a.part",  # another file's: its own fetch
        folder / "t10k-labels-idx1-ubyte.gz.part",  # not a name of ours
        folder / ".t10k-labels-idx1-ubyte.gz.k2j_9x0a.part.keep",
    ]
    an_hour_ago = time.time() - 3600
    for path in [stale, fresh, *others]:
        path.write_bytes(b"partial")
        if path is not fresh:
            os.utime(path, (an_hour_ago, an_hour_ago))
    content, _ = fetch_verified(LABELS, fake_labels, download=False)
    assert content == labels_idx
    assert not stale.exists() and fresh.exists() and all(p.exists() for p in others)
    # A download of the same target cleans up too.
    os.utime(fresh, (an_hour_ago, an_hour_ago))
    assert remove_stale_temps(folder / "t10k-labels-idx1-ubyte.gz") == [fresh]


def test_download_removes_stale_temporaries(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    (tmp_path / "out").mkdir()
    stale = tmp_path / "out" / ".file.bin.abcdefgh.part"
    stale.write_bytes(b"pay")
    os.utime(stale, (0, 0))
    download_file([src.as_uri()], tmp_path / "out" / "file.bin", sha(b"payload"), size=7)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["file.bin"]


def test_interrupted_download_leaves_no_temporary(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    class Interrupted:
        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            return None

        def read(self, n: int) -> bytes:
            raise KeyboardInterrupt

    monkeypatch.setattr(dl.urllib.request, "urlopen", lambda request, timeout: Interrupted())
    with pytest.raises(KeyboardInterrupt):
        download_file(["https://example.invalid/x"], tmp_path / "dest", sha(b""), size=0)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- random corruption


@pytest.fixture(scope="module")
def real_labels() -> tuple[bytes, bytes]:
    """The real t10k labels: (decompressed content, the shared .gz bytes)."""
    root = data_dir_from_env()
    if root is None:
        pytest.skip(f"{DATA_ENV_VAR} is not set: point it at the real data (e.g. ../shared/data)")
    gz = (root / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()
    return gzip.decompress(gz), gz


def corrupt(data: bytes, rng: np.random.Generator) -> bytes:
    """One random fault: flipped bytes, a truncation, appended bytes, or a cut-out block."""
    out = bytearray(data)
    kind = rng.integers(4)
    if kind == 0:
        for pos in rng.choice(len(out), size=rng.integers(1, 4), replace=False):
            out[pos] ^= int(rng.integers(1, 256))
        return bytes(out)
    if kind == 1:
        return bytes(out[: rng.integers(len(out))])
    if kind == 2:
        return bytes(out) + rng.bytes(int(rng.integers(1, 64)))
    start = int(rng.integers(len(out) - 1))
    return bytes(out[:start] + out[start + int(rng.integers(1, 16)) :])


def test_random_corruption_never_loads(real_labels: tuple[bytes, bytes], tmp_path: Path) -> None:
    content, gz = real_labels
    (tmp_path / "mnist").mkdir()
    plain = tmp_path / "mnist" / "t10k-labels-idx1-ubyte"
    packed = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    rng = np.random.default_rng(20240601)
    rejected = 0
    for trial in range(48):
        stored_gzipped = trial % 2 == 1
        path, original = (packed, gz) if stored_gzipped else (plain, content)
        path.write_bytes(corrupt(original, rng))
        try:
            loaded, _ = fetch_verified(LABELS, tmp_path, download=False)
        except ValueError as exc:
            assert str(path) in str(exc) and "download=True" in str(exc)
            rejected += 1
        else:
            # Only a fault in bytes that do not encode the content (the gzip header's time
            # stamp, flags or OS byte) may load, and then it loads the right content.
            assert stored_gzipped and loaded == content, f"trial {trial} loaded corrupt data"
        path.unlink()
    assert rejected >= 40
