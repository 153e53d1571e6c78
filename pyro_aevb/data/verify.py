"""Reading a data file safely: bounded streaming decompression, hashing, clear errors.

A data file is trusted only if its (decompressed) content has exactly the expected size and
SHA-256 (:data:`~pyro_aevb.data.layout.FILES`). Every read is verified, so a file that changes
on disk is never trusted from an earlier check; hashing while streaming adds little to the
decompression itself.

The reader never holds or produces more than the expected size plus one byte: a ``.gz`` is
decompressed chunk by chunk and reading stops as soon as the output passes the expected size,
so a decompression bomb under a data file's name costs milliseconds and no memory, instead of
being inflated in full before the checksum can reject it. A stored file larger than any
compression of the expected content can be is rejected before it is read at all.

Errors name the file and say what to do:

- ``ValueError`` for content that is wrong (size, gzip stream, checksum);
- an ``OSError`` of the same class as the underlying one (``PermissionError``,
  ``IsADirectoryError``, ...) for a file that cannot be read at all.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path
from typing import BinaryIO

from .layout import RemoteFile

__all__ = [
    "ContentError",
    "access_error",
    "max_stored_size",
    "read_verified",
    "sha256_hex",
    "stream_digest",
]

# Output is produced and hashed in chunks of this size; a reader stops within one chunk of the
# expected size.
CHUNK = 1 << 20


class ContentError(ValueError):
    """A stream does not hold the expected content: wrong size, or not a valid gzip stream.

    The message is a predicate on the file ("is not a valid gzip file (...)"), to be prefixed
    with the file's name.
    """


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def max_stored_size(size: int, gzipped: bool) -> int:
    """The largest a stored (or downloaded) file of ``size`` bytes of content can be.

    Deflate stores incompressible data with 5 bytes of overhead per 64 KiB block, and a gzip
    member adds a header (with an optional file name) and an 8-byte trailer; 0.1 % plus 64 KiB
    covers this with ample room, also for multi-member files (bgzip, pigz --independent).
    """
    return size + size // 1000 + (1 << 16) if gzipped else size


def _hash_stream(
    stream: BinaryIO, size: int | None, keep: bool, gzipped: bool
) -> tuple[str, memoryview | None]:
    """SHA-256 of ``stream``, which must hold exactly ``size`` bytes (any number when None).

    Reads at most ``size + 1`` bytes: one byte past the expected size proves the excess.
    With ``keep`` the bytes are read into one buffer and returned as a read-only view of the
    first ``size`` (no further copy); else only a chunk-sized buffer is used.
    """
    limit = None if size is None else size + 1
    if keep and limit is None:
        raise ValueError("keep=True needs a known size")
    buffer = memoryview(bytearray(limit if keep else CHUNK))
    digest = hashlib.sha256()
    total = 0
    while limit is None or total < limit:
        want = CHUNK if limit is None else min(CHUNK, limit - total)
        target = buffer[total : total + want] if keep else buffer[:want]
        n = stream.readinto(target)
        if not n:
            break
        digest.update(target[:n])
        total += n
    holds = "decompresses to" if gzipped else "holds"
    if size is not None and total > size:
        raise ContentError(
            f"{holds} more than the expected {size:,} bytes (reading stopped there; it is not "
            "the expected file, maybe a decompression bomb)"
        )
    if size is not None and total < size:
        raise ContentError(f"{holds} only {total:,} bytes, but the expected content has {size:,}")
    return digest.hexdigest(), buffer[:total].toreadonly() if keep else None


def stream_digest(
    raw: BinaryIO, *, size: int | None, gzipped: bool, keep: bool = False
) -> tuple[str, memoryview | None]:
    """SHA-256 of the content of an open binary file, decompressed if ``gzipped``.

    Parameters
    ----------
    raw : binary file
        Opened for reading, at its start.
    size : int or None
        The exact size the content must have (None: no check, no bound).
    gzipped : bool
        Whether ``raw`` holds a gzip stream (possibly of several members).
    keep : bool
        Also return the content (needs ``size``).

    Returns
    -------
    (str, memoryview or None)
        The hex digest, and with ``keep`` the content as a read-only ``(size,)`` byte view.

    Raises
    ------
    ContentError
        Wrong size, a stored file too large for its content, or a broken gzip stream.
    OSError
        The file cannot be read (not a content problem).
    """
    if size is not None:
        stored = os.fstat(raw.fileno()).st_size
        limit = max_stored_size(size, gzipped)
        if stored > limit or (not gzipped and stored != size):
            bound = f"at most {limit:,}" if gzipped else f"{size:,}"
            raise ContentError(f"is {stored:,} bytes long, but the expected file is {bound}")
    if not gzipped:
        return _hash_stream(raw, size, keep, gzipped)
    # gzip.GzipFile decompresses at most as much as each read asks for, so the bound holds.
    # BadGzipFile is an OSError: catch it (and zlib/EOF errors) here, before callers take an
    # OSError for an unreadable file.
    try:
        with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
            return _hash_stream(stream, size, keep, gzipped)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ContentError(f"is not a valid gzip file ({exc})") from exc


def _redownload_advice(spec: RemoteFile) -> str:
    return (
        "Delete it and run load_dataset(..., download=True) to download it again from "
        f"{spec.urls()[0]} (or copy a good copy back into place)."
    )


def access_error(path: Path, exc: OSError, spec: RemoteFile) -> OSError:
    """``exc`` (an error reading ``path``) as the same class, with a message saying what to do."""
    reason = exc.strerror or str(exc)
    if isinstance(exc, PermissionError):
        fix = (
            f"Make it readable for this user (e.g. chmod u+r {path}, and u+rx on its folders), "
            "or point data_dir / $PYRO_AEVB_DATA at a readable copy."
        )
    elif isinstance(exc, IsADirectoryError):
        fix = "A directory is in the place of the data file: move it away. "
        fix += _redownload_advice(spec)
    else:
        fix = f"Check the disk and the file. {_redownload_advice(spec)}"
    message = f"Cannot read data file {path}: {reason}. {fix}"
    try:
        # The same class, so that `except PermissionError` and the like still catch it.
        return type(exc)(message)
    except TypeError:  # an OSError subclass with a different constructor
        return OSError(message)


def checksum_error(path: Path, spec: RemoteFile, actual: str) -> ValueError:
    return ValueError(
        f"Checksum mismatch for {path}: SHA-256 of the {spec.content} is\n  {actual}\nbut "
        f"expected\n  {spec.sha256}\nThe file is corrupt, truncated or not the expected file. "
        + _redownload_advice(spec)
    )


def read_verified(path: Path, spec: RemoteFile) -> memoryview:
    """The verified content of a local copy of ``spec`` (gunzipped when ``path`` ends in .gz).

    Returns
    -------
    memoryview
        Read-only, ``spec.size`` bytes whose SHA-256 is ``spec.sha256``.

    Raises
    ------
    ValueError
        Wrong size, broken gzip stream or checksum mismatch; the message names ``path``.
    OSError
        ``path`` cannot be read (e.g. ``PermissionError``); the message names it.
    """
    gzipped = path.suffix == ".gz"
    try:
        with open(path, "rb") as raw:
            actual, content = stream_digest(raw, size=spec.size, gzipped=gzipped, keep=True)
    except ContentError as exc:
        raise ValueError(f"{path} {exc}. {_redownload_advice(spec)}") from exc
    except OSError as exc:
        raise access_error(path, exc, spec) from exc
    if actual != spec.sha256:
        raise checksum_error(path, spec, actual)
    assert content is not None
    return content
