r"""A SHA-256 seal on checkpoint files: any change to a file after it was written is detected.

A sealed file is the ``torch.save`` bytes followed by one line holding their digest::

    <torch.save zip bytes> b"\nPYRO-AEVB-SHA256:" <64 hex digits> b"\n"

:func:`unseal` recomputes the digest over everything before that line and compares: a flipped
bit anywhere (content, digest or the marker), a truncated or extended file, or a file without
the line is refused before anything is unpickled. The zip reader of ``torch.load`` ignores
bytes after the archive, so a sealed file still opens with plain
``torch.load(path, weights_only=True)``; pyro-aevb itself only loads what :func:`unseal`
returned.

The seal protects against damage (disk, copy, editing), not against an attacker who can write
the file (they can recompute the digest): that is what ``weights_only=True`` loading is for.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch

__all__ = [
    "SEAL_MARKER",
    "SEAL_LENGTH",
    "CorruptCheckpointError",
    "seal",
    "unseal",
    "digest",
    "tensor_digest",
]

SEAL_MARKER = b"\nPYRO-AEVB-SHA256:"
#: Bytes the seal adds to a file: marker, 64 hex digits, newline.
SEAL_LENGTH = len(SEAL_MARKER) + 64 + 1
_HEX = re.compile(rb"[0-9a-f]{64}")


class CorruptCheckpointError(ValueError):
    """A checkpoint file whose contents do not match its SHA-256 seal (or that has none).

    ``path`` is the file, ``reason`` what is wrong with it; the message says what to do.
    """

    def __init__(self, message: str, path: Path | None = None, reason: str = ""):
        super().__init__(message)
        self.path = path
        self.reason = reason


def digest(data: bytes) -> str:
    """SHA-256 of ``data`` as 64 lowercase hex digits."""
    return hashlib.sha256(data).hexdigest()


def tensor_digest(tensors) -> str:
    """SHA-256 of the tensors' dtypes, shapes and values, in order, as 64 hex digits."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def seal(data: bytes) -> bytes:
    """``data`` followed by the line that carries its SHA-256 digest."""
    return data + SEAL_MARKER + digest(data).encode("ascii") + b"\n"


def unseal(blob: bytes) -> tuple[bytes | None, str]:
    """``(data, "")`` if ``blob`` is intact, else ``(None, what is wrong)``.

    ``data`` is ``blob`` without its seal line; the reason is a phrase such as ``"its SHA-256
    digest does not match its contents"``.
    """
    if len(blob) < SEAL_LENGTH:
        return None, f"it is only {len(blob)} bytes long (truncated or empty)"
    data, line = blob[:-SEAL_LENGTH], blob[-SEAL_LENGTH:]
    hexdigest = line[len(SEAL_MARKER) : -1]
    well_formed = line.startswith(SEAL_MARKER) and line.endswith(b"\n")
    if not well_formed or not _HEX.fullmatch(hexdigest):
        return None, (
            "it does not end with a pyro-aevb SHA-256 seal (the file is truncated or damaged at "
            "its end, or was not written by this version of pyro-aevb)"
        )
    if digest(data) != hexdigest.decode("ascii"):
        return None, "its SHA-256 digest does not match its contents (the file was altered)"
    return data, ""
