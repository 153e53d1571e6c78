"""Getting a verified data file: use the local copy, or download it from the mirrors.

:func:`fetch_verified` is the entry point of the loaders: it reads a local copy of a layout file
(:mod:`~pyro_aevb.data.layout`) through the verifying reader (:mod:`~pyro_aevb.data.verify`), and
only when there is none, and ``download`` allows it, downloads it with :func:`download_file`.

Downloads stream into a temporary file ``.<name>.<random>.part`` next to the destination, are
bounded in size, verified (size and SHA-256 of the decompressed content) and only then renamed
onto the destination, so a data file never holds a partial or unverified download. Folders are
created only once a mirror has answered, and removed again if the download fails, so a wrong
data directory does not fill up with empty ``mnist/`` folders. Temporary files that an
interrupted earlier run left behind are deleted when the same file is fetched again.

Why not pooch (the hash-verified download cache of SciPy and scikit-image)? It was evaluated
(pooch 1.9) and does not fit what this module must guarantee:

- it verifies the hash of the downloaded file, but ours are of the decompressed bytes (``.gz``
  bytes differ by compressor, and files may be stored either way), so its check would be
  switched off (``known_hash=None``) and ours done anyway, with its bounded decompression;
- it creates the destination folder before downloading (``stream_download`` calls
  ``os.makedirs`` first), the very fault fixed here;
- its temporary files are plain ``tmpXXXXXXXX`` names, which a later run cannot tell from
  other files to clean them up after a killed download;
- it has one URL per file (no fallback mirrors), no ``file://`` mirrors (which users behind a
  proxy mirror and the tests use), no size bound on what a server sends, and its ``Decompress``
  processor inflates a ``.gz`` without bound;
- it would add requests, urllib3, idna, certifi, charset-normalizer and platformdirs to the
  dependencies. What it would bring, retries and a progress bar, the mirror list covers (each
  mirror is one more attempt) or a line on stderr does.
"""

from __future__ import annotations

import http.client
import os
import re
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from ..files import match_new_file_mode
from .data_dir import DATA_ENV_VAR, data_dir_from_env, default_cache_dir, resolve_data_dir
from .layout import FILES, MIRRORS, RemoteFile, layout_help, local_candidates
from .verify import (
    CHUNK,
    ContentError,
    access_error,
    max_stored_size,
    read_verified,
    sha256_hex,
    stream_digest,
)

__all__ = [
    "DATA_ENV_VAR",
    "FILES",
    "MIRRORS",
    "RemoteFile",
    "data_dir_from_env",
    "default_cache_dir",
    "download_file",
    "fetch_verified",
    "remove_stale_temps",
    "resolve_data_dir",
    "sha256_hex",
]

_USER_AGENT = "pyro-aevb (python urllib)"  # some mirrors answer 403 to urllib's default agent
_TIMEOUT_S = 60.0

# Temporary files of a run that started earlier than this one are stale: a download in progress
# writes to its file all the time, so its modification time stays recent.
_RUN_STARTED = time.time()


def _temp_pattern(name: str) -> re.Pattern[str]:
    # The names tempfile.mkstemp(prefix=f".{name}.", suffix=".part") gives, and only those.
    return re.compile(re.escape(f".{name}.") + r"[A-Za-z0-9_]+" + re.escape(".part"))


def remove_stale_temps(dest: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that interrupted downloads of ``dest`` left next to it.

    Only files named like this module's temporaries for ``dest`` and last modified before this
    run started are deleted, so a download in progress in another process is left alone. Best
    effort: a file that cannot be deleted (e.g. a read-only folder) is left.

    Returns
    -------
    list of pathlib.Path
        The files deleted.
    """
    dest = Path(dest)
    pattern = _temp_pattern(dest.name)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(dest.parent))
    except OSError:  # no folder (nothing to clean) or an unreadable one (not ours to fix here)
        return removed
    for entry in entries:
        if not pattern.fullmatch(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < _RUN_STARTED:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


# --------------------------------------------------------------------------- download


def download_file(
    urls: Sequence[str],
    dest: str | os.PathLike[str],
    sha256: str,
    *,
    gzipped: bool = False,
    size: int | None = None,
    timeout: float = _TIMEOUT_S,
) -> Path:
    """Download ``dest`` from the first mirror that serves the right content.

    Each attempt streams into a temporary file next to ``dest``, checks its size and SHA-256 (of
    the gunzipped stream when ``gzipped``) and only then renames it atomically onto ``dest``, so
    ``dest`` never holds a partial or unverified file. A temporary file that fails the check is
    deleted and the next mirror is tried. Missing folders of ``dest`` are created only once a
    mirror answers, and removed again when every mirror fails.

    Parameters
    ----------
    urls : sequence of str
        Mirrors, tried in order (any scheme ``urllib.request`` handles, including ``file://``).
    dest : path-like
        Final location.
    sha256 : str
        Expected hex digest.
    gzipped : bool
        Whether the checksum and size apply to the decompressed content.
    size : int, optional
        Expected size of that content. A mirror that sends more than a file of that content can
        be, or content of another size, is rejected as soon as that shows. None: no size check
        (only the checksum protects, and nothing bounds what a mirror sends).
    timeout : float
        Socket timeout per request, in seconds.

    Returns
    -------
    pathlib.Path
        ``dest``.

    Raises
    ------
    ValueError
        When no mirror worked and at least one served content of the wrong size or checksum.
    FileNotFoundError
        When no mirror could be reached (or ``dest`` cannot be written).
    """
    dest = Path(dest)
    remove_stale_temps(dest)
    max_bytes = None if size is None else max_stored_size(size, gzipped)
    created: list[Path] = []
    failures: list[str] = []
    bad_content = False
    for url in urls:
        try:
            tmp = _fetch_to_temp(url, dest, timeout, max_bytes, created)
        except ContentError as exc:
            bad_content = True
            failures.append(f"{url}: {exc}")
            continue
        # URLError, HTTPError, timeouts and disk errors are OSError; a connection cut mid-body
        # raises http.client.IncompleteRead, which is not.
        except (OSError, http.client.HTTPException) as exc:
            failures.append(f"{url}: {exc}")
            continue
        problem = _check_download(tmp, sha256, size, gzipped)
        if problem is None:
            try:
                os.replace(tmp, dest)
            except OSError:
                tmp.unlink(missing_ok=True)
                raise
            return dest
        tmp.unlink(missing_ok=True)
        bad_content = True
        failures.append(f"{url}: {problem}")
    _remove_empty(created)
    details = "\n  ".join(failures) or "no mirror URLs given"
    if bad_content:
        raise ValueError(
            f"Downloaded data for {dest} failed its integrity check; nothing was saved.\n  "
            f"{details}\nA mirror may be serving a different or damaged file: retry later, or "
            f"download the file yourself, check its SHA-256 and place it at {dest}."
        )
    raise FileNotFoundError(f"Could not download {dest}:\n  {details}")


def _check_download(tmp: Path, sha256: str, size: int | None, gzipped: bool) -> str | None:
    """None if ``tmp`` holds the expected content, else what is wrong with it."""
    try:
        with open(tmp, "rb") as raw:
            actual, _ = stream_digest(raw, size=size, gzipped=gzipped)
    except (ContentError, OSError) as exc:
        return f"<unreadable: the download {exc}>"
    return None if actual == sha256 else f"SHA-256 {actual}, expected {sha256}"


def _fetch_to_temp(
    url: str, dest: Path, timeout: float, max_bytes: int | None, created: list[Path]
) -> Path:
    print(f"pyro-aevb: downloading {url} -> {dest}", file=sys.stderr)
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    # Connect before creating anything: a dead mirror leaves the data directory as it was.
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        created.extend(_make_dirs(dest.parent))
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            match_new_file_mode(fd)
            with os.fdopen(fd, "wb") as out:
                received = 0
                while chunk := resp.read(CHUNK):
                    received += len(chunk)
                    if max_bytes is not None and received > max_bytes:
                        raise ContentError(
                            f"sent more than {max_bytes:,} bytes, more than the expected file "
                            "can be (download stopped there)"
                        )
                    out.write(chunk)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return tmp


def _make_dirs(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created, outermost first."""
    missing: list[Path] = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    missing.reverse()
    created = []
    for path in missing:
        try:
            path.mkdir()
        except FileExistsError:  # another process was faster: not ours to remove
            continue
        created.append(path)
    return created


def _remove_empty(created: list[Path]) -> None:
    for path in reversed(created):  # innermost first
        try:
            path.rmdir()
        except OSError:  # not empty (another download used it) or gone: leave it
            return


# --------------------------------------------------------------------------- entry point


def fetch_verified(
    relpath: str, root: str | os.PathLike[str], *, download: bool = True
) -> tuple[memoryview, Path]:
    """Return the verified (decompressed) content of one layout file, downloading it if allowed.

    Parameters
    ----------
    relpath : str
        A key of :data:`FILES`, e.g. ``"mnist/t10k-labels-idx1-ubyte"``.
    root : path-like
        The data directory (see :func:`resolve_data_dir`). Nothing is created in it unless a
        download happens.
    download : bool
        Download into ``root`` when no local copy exists.

    Returns
    -------
    (memoryview, pathlib.Path)
        The content (gunzipped for IDX files; read-only, bytes-like, ``FILES[relpath].size``
        bytes) and the file it was read from.

    Raises
    ------
    FileNotFoundError
        The file is missing and ``download`` is False or every mirror failed.
    ValueError
        A local or downloaded copy does not have the expected size and SHA-256.
    OSError
        A local copy exists but cannot be read (e.g. ``PermissionError``); the message names it.
    """
    spec = FILES[relpath]
    root = Path(root)
    dest = root / spec.folder / spec.remote_name
    remove_stale_temps(dest)
    candidates = local_candidates(root, spec)
    for path in candidates:
        if _is_present(path, spec):
            return read_verified(path, spec), path
    inside = [root / p.name for p in candidates if _is_present(root / p.name, spec)]
    if root.name == spec.folder and inside:
        # the data directory is the data set's own folder: not a download into root/folder/
        raise FileNotFoundError(
            f"Data file not found: {' or '.join(str(p) for p in candidates)}, but "
            f"{inside[0]} exists: the data directory {root} seems to be the "
            f"{spec.folder}/ folder itself; point {DATA_ENV_VAR} (or data_dir=...) at its "
            f"parent {root.parent}, whose layout is:\n{layout_help(spec.folder)}"
        )
    if not download:
        raise _missing_error(candidates, spec, root, reason="download=False")
    try:
        download_file(spec.urls(), dest, spec.sha256, gzipped=spec.gzipped, size=spec.size)
    except FileNotFoundError as exc:
        raise _missing_error(candidates, spec, root, reason=f"download failed: {exc}") from exc
    return read_verified(dest, spec), dest


def _is_present(path: Path, spec: RemoteFile) -> bool:
    # Anything at the path counts (a directory too): reading it then says what is wrong,
    # rather than downloading over it.
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:  # e.g. a folder on the way that this user may not enter
        raise access_error(path, exc, spec) from exc
    return True


def _missing_error(
    candidates: list[Path], spec: RemoteFile, root: Path, *, reason: str
) -> FileNotFoundError:
    looked = " or ".join(str(p) for p in candidates)
    return FileNotFoundError(
        f"Data file not found: {looked} ({reason}).\n"
        f"The data directory is {root}: set the environment variable {DATA_ENV_VAR} (or pass "
        f"data_dir=...) to a directory with this layout:\n{layout_help(spec.folder)}\n"
        + (
            "or call load_dataset(..., download=True) to download it from "
            if reason == "download=False"
            else "or download it by hand from "
        )
        + f"{' or '.join(spec.urls())} (SHA-256 of the {spec.content}: {spec.sha256})."
    )
