"""The mode of files the library creates (data downloads, a run's files).

Both are written to a temporary file from :func:`tempfile.mkstemp` and moved into place, so
that a crash never leaves half a file; ``mkstemp`` creates its files with mode ``0o600``,
which would make every checkpoint and JSON file private to its owner, unlike any other file
the user writes. :func:`match_new_file_mode` gives such a file the mode ``open(path, "w")``
would have given it.
"""

from __future__ import annotations

import os

__all__ = ["match_new_file_mode", "new_file_mode"]


def _umask() -> int:
    # /proc/self/status reads it without changing it (Linux >= 4.7); os.umask can only read
    # it by setting it, which another thread creating a file at that moment would see.
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """``0o666`` less the process umask: the mode of a file created by ``open(path, "w")``."""
    return 0o666 & ~_umask()


def match_new_file_mode(fd: int) -> None:
    """Give the open file ``fd`` (from ``mkstemp``) the mode of a newly created file; best
    effort (a platform or file system without ``fchmod`` keeps ``mkstemp``'s mode)."""
    try:
        os.fchmod(fd, new_file_mode())
    except (AttributeError, OSError):
        pass
