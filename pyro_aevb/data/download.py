"""Where the data files live, how they are verified, and how they are downloaded.

Directory resolution (first match wins):

1. an explicit ``data_dir`` argument,
2. the environment variable ``PYRO_AEVB_DATA``,
3. the user cache directory ``$XDG_CACHE_HOME/pyro-aevb`` (or ``~/.cache/pyro-aevb``).

Inside that directory the layout is::

    mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    frey-face/frey_rawface.mat

IDX files may be stored gzipped or decompressed. Their SHA-256 is checked on the decompressed
bytes, because the bytes of a ``.gz`` file depend on the compressor; the Frey Face ``.mat`` file is
checked as is. Every read is verified (hashing 47 MB takes ~40 ms, far less than decompressing),
so a file that changes on disk is never trusted from an earlier check.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DATA_ENV_VAR",
    "FILES",
    "MIRRORS",
    "RemoteFile",
    "data_dir_from_env",
    "default_cache_dir",
    "download_file",
    "fetch_verified",
    "resolve_data_dir",
    "sha256_hex",
]

DATA_ENV_VAR = "PYRO_AEVB_DATA"

_CHUNK = 1 << 20
_USER_AGENT = "pyro-aevb (python urllib)"  # some mirrors answer 403 to urllib's default agent
_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RemoteFile:
    """One data file of the layout.

    Attributes
    ----------
    relpath : str
        Path inside the data directory of the verified content, e.g.
        ``"mnist/train-images-idx3-ubyte"`` (without ``.gz``).
    sha256 : str
        SHA-256 of the decompressed content (IDX) or of the file itself (``.mat``).
    gzipped : bool
        Whether the mirrors serve the file as ``relpath + ".gz"`` (it may then be stored
        either way locally).
    """

    relpath: str
    sha256: str
    gzipped: bool

    @property
    def folder(self) -> str:
        return self.relpath.split("/", 1)[0]

    @property
    def remote_name(self) -> str:
        """File name on the mirrors and name under which a download is stored."""
        name = self.relpath.rsplit("/", 1)[-1]
        return name + ".gz" if self.gzipped else name


def _idx(relpath: str, sha256: str) -> tuple[str, RemoteFile]:
    return relpath, RemoteFile(relpath, sha256, gzipped=True)


FILES: dict[str, RemoteFile] = dict(
    [
        _idx(
            "mnist/train-images-idx3-ubyte",
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        ),
        _idx(
            "mnist/train-labels-idx1-ubyte",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        ),
        _idx(
            "mnist/t10k-images-idx3-ubyte",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        ),
        _idx(
            "mnist/t10k-labels-idx1-ubyte",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
        _idx(
            "fashion-mnist/train-images-idx3-ubyte",
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        ),
        _idx(
            "fashion-mnist/train-labels-idx1-ubyte",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        ),
        _idx(
            "fashion-mnist/t10k-images-idx3-ubyte",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        ),
        _idx(
            "fashion-mnist/t10k-labels-idx1-ubyte",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
        (
            "frey-face/frey_rawface.mat",
            RemoteFile(
                "frey-face/frey_rawface.mat",
                "265a83a23adb081755cd3de375509828e690324d1d60f076b8ecebc840d59c64",
                gzipped=False,
            ),
        ),
    ]
)

# Base URLs per folder, tried in order. Module-level so that tests (and users behind a proxy
# mirror) can replace them.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "frey-face": ("https://cs.nyu.edu/~roweis/data/",),
}


# --------------------------------------------------------------------------- directories


def data_dir_from_env() -> Path | None:
    """The directory named by ``$PYRO_AEVB_DATA``, or None when unset or empty."""
    value = os.environ.get(DATA_ENV_VAR, "").strip()
    return Path(value).expanduser() if value else None


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pyro-aevb``, or ``~/.cache/pyro-aevb`` when that is unset or relative."""
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    # The XDG spec says relative values must be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "pyro-aevb"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Explicit ``data_dir`` > ``$PYRO_AEVB_DATA`` > :func:`default_cache_dir`, made absolute.

    Relative paths are taken from the current directory now, so that messages and
    ``Dataset.source`` name the real location.
    """
    if data_dir is not None:
        path = Path(data_dir).expanduser()
    else:
        path = data_dir_from_env() or default_cache_dir()
    return path.absolute()


# --------------------------------------------------------------------------- verification


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _layout_help(folder: str) -> str:
    return "\n".join(
        f"  <data_dir>/{spec.relpath}{'[.gz]' if spec.gzipped else ''}"
        for spec in FILES.values()
        if spec.folder == folder
    )


def _urls(spec: RemoteFile) -> list[str]:
    return [base + spec.remote_name for base in MIRRORS[spec.folder]]


def _checksum_error(path: Path, spec: RemoteFile, actual: str) -> ValueError:
    what = "decompressed content" if spec.gzipped else "file"
    return ValueError(
        f"Checksum mismatch for {path}: SHA-256 of the {what} is\n  {actual}\nbut expected\n"
        f"  {spec.sha256}\nThe file is corrupt, truncated or not the expected file. Delete it and "
        f"run load_dataset(..., download=True) to download it again from {_urls(spec)[0]} "
        f"(or copy a good copy back into place)."
    )


def _local_candidates(root: Path, spec: RemoteFile) -> list[Path]:
    plain = root / spec.relpath
    # Decompressed first: it is faster to read when a user has both.
    return [plain, plain.with_name(plain.name + ".gz")] if spec.gzipped else [plain]


def _read_content(path: Path, spec: RemoteFile) -> bytes:
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(
            f"{path} is not a valid gzip file ({exc}). Delete it and run "
            f"load_dataset(..., download=True) to download it again from {_urls(spec)[0]}."
        ) from exc


def _read_verified(path: Path, spec: RemoteFile) -> bytes:
    content = _read_content(path, spec)
    actual = sha256_hex(content)
    if actual != spec.sha256:
        raise _checksum_error(path, spec, actual)
    return content


# --------------------------------------------------------------------------- download


def _stream_sha256(path: Path, gzipped: bool) -> str:
    digest = hashlib.sha256()
    opener = gzip.open if gzipped else open
    with opener(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(
    urls: Sequence[str],
    dest: str | os.PathLike[str],
    sha256: str,
    *,
    gzipped: bool = False,
    timeout: float = _TIMEOUT_S,
) -> Path:
    """Download ``dest`` from the first mirror that serves the right content.

    Each attempt streams into a temporary file next to ``dest``, checks its SHA-256 (of the
    gunzipped stream when ``gzipped``) and only then renames it atomically onto ``dest``, so
    ``dest`` never holds a partial or unverified file. A temporary file that fails the check is
    deleted and the next mirror is tried.

    Parameters
    ----------
    urls : sequence of str
        Mirrors, tried in order (any scheme ``urllib.request`` handles, including ``file://``).
    dest : path-like
        Final location; its parent directory is created if needed.
    sha256 : str
        Expected hex digest.
    gzipped : bool
        Whether the checksum applies to the decompressed content.
    timeout : float
        Socket timeout per request, in seconds.

    Returns
    -------
    pathlib.Path
        ``dest``.

    Raises
    ------
    ValueError
        When no mirror worked and at least one served content with the wrong checksum.
    FileNotFoundError
        When no mirror could be reached (or ``dest`` cannot be written).
    """
    dest = Path(dest)
    failures: list[str] = []
    bad_checksum = False
    for url in urls:
        try:
            tmp = _fetch_to_temp(url, dest, timeout)
        # URLError, HTTPError, timeouts and disk errors are OSError; a connection cut mid-body
        # raises http.client.IncompleteRead, which is not.
        except (OSError, http.client.HTTPException) as exc:
            failures.append(f"{url}: {exc}")
            continue
        try:
            actual = _stream_sha256(tmp, gzipped)
        except (OSError, EOFError, zlib.error) as exc:
            actual = f"<unreadable: {exc}>"
        if actual != sha256:
            tmp.unlink(missing_ok=True)
            bad_checksum = True
            failures.append(f"{url}: SHA-256 {actual}, expected {sha256}")
            continue
        os.replace(tmp, dest)
        return dest
    details = "\n  ".join(failures) or "no mirror URLs given"
    if bad_checksum:
        raise ValueError(
            f"Downloaded data for {dest} failed its integrity check; nothing was saved.\n  "
            f"{details}\nA mirror may be serving a different or damaged file: retry later, or "
            f"download the file yourself, check its SHA-256 and place it at {dest}."
        )
    raise FileNotFoundError(f"Could not download {dest}:\n  {details}")


def _fetch_to_temp(url: str, dest: Path, timeout: float) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        print(f"pyro-aevb: downloading {url} -> {dest}", file=sys.stderr)
        request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


# --------------------------------------------------------------------------- entry point


def fetch_verified(
    relpath: str, root: str | os.PathLike[str], *, download: bool = True
) -> tuple[bytes, Path]:
    """Return the verified (decompressed) content of one layout file, downloading it if allowed.

    Parameters
    ----------
    relpath : str
        A key of :data:`FILES`, e.g. ``"mnist/t10k-labels-idx1-ubyte"``.
    root : path-like
        The data directory (see :func:`resolve_data_dir`).
    download : bool
        Download into ``root`` when no local copy exists.

    Returns
    -------
    (bytes, pathlib.Path)
        The content (gunzipped for IDX files) and the file it was read from.

    Raises
    ------
    FileNotFoundError
        The file is missing and ``download`` is False or every mirror failed.
    ValueError
        A local or downloaded copy does not match the expected SHA-256.
    """
    spec = FILES[relpath]
    root = Path(root)
    candidates = _local_candidates(root, spec)
    for path in candidates:
        if path.is_file():
            return _read_verified(path, spec), path
    if not download:
        raise _missing_error(candidates, spec, root, reason="download=False")
    dest = root / spec.folder / spec.remote_name
    try:
        download_file(_urls(spec), dest, spec.sha256, gzipped=spec.gzipped)
    except FileNotFoundError as exc:
        raise _missing_error(candidates, spec, root, reason=f"download failed: {exc}") from exc
    return _read_verified(dest, spec), dest


def _missing_error(
    candidates: list[Path], spec: RemoteFile, root: Path, *, reason: str
) -> FileNotFoundError:
    looked = " or ".join(str(p) for p in candidates)
    return FileNotFoundError(
        f"Data file not found: {looked} ({reason}).\n"
        f"The data directory is {root}: set the environment variable {DATA_ENV_VAR} (or pass "
        f"data_dir=...) to a directory with this layout:\n{_layout_help(spec.folder)}\n"
        f"or call load_dataset(..., download=True) to download it from "
        f"{' or '.join(_urls(spec))} (SHA-256 of the "
        f"{'decompressed content' if spec.gzipped else 'file'}: {spec.sha256})."
    )
