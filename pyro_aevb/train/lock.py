"""One training job per run directory: an advisory lock held while a run writes there.

:class:`RunLock` takes an exclusive, non-blocking ``flock`` on ``<out_dir>/.pyro-aevb.lock``
(``msvcrt.locking`` on Windows). The operating system releases the lock when the holding
process ends, however it ends, so a lock left by a killed process (``kill -9``, a crash, a
power cut) is never mistaken for a live one: the next run simply takes it, and reports whose
it was. The file records the holder (process id, host, start time) for the message a second
run gets while the first is alive. It is never deleted: deleting a lock file while another
process waits on it would let two runs hold "the" lock at once.

``flock`` works on local file systems and on NFSv4; on a network file system without working
locks, two runs on different machines are not kept apart.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
    import msvcrt

__all__ = ["LOCK_NAME", "RunLock", "RunLockedError"]

LOCK_NAME = ".pyro-aevb.lock"

logger = logging.getLogger("pyro_aevb")


class RunLockedError(FileExistsError):
    """Another live process is training in this run directory (the message names it)."""


def _try_lock(fd: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:  # pragma: no cover - Windows
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:  # BlockingIOError (EWOULDBLOCK) or EACCES: held by another process
        return False
    return True


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:  # pragma: no cover - Windows
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _read_holder(fd: int) -> dict:
    """The holder recorded in the lock file (``{}`` if none or unreadable)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode("utf-8", "replace")
        holder = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    started = holder.get("started")
    when = (
        time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started))
        if isinstance(started, int | float)
        else ""
    )
    return f"process {holder.get('pid', '?')} on {holder.get('host', '?')}{when}"


class RunLock:
    """An exclusive lock on a run directory, held from :meth:`acquire` to :meth:`release`.

    Parameters
    ----------
    directory : path
        The run directory (created if missing).
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None
        #: The holder a stale lock named when it was taken over (``None`` if it was free).
        self.took_over: dict | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock; raise :class:`RunLockedError` naming the holder if a live process
        holds it. A no-op if this object already holds it."""
        if self._fd is not None:
            return self
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise type(err)(
                f"Cannot lock the run directory {self.directory}: {err.strerror or err}. Check "
                f"that it is a writable folder."
            ) from err
        if not _try_lock(fd):
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"{self.directory} is in use by another training run ({_describe(holder)}): "
                f"wait for it to finish (or stop it: Ctrl-C saves a checkpoint), or choose "
                f"another output directory"
            )
        previous = _read_holder(fd)
        if previous:
            # The kernel released the lock when its holder ended: a run that was killed.
            self.took_over = previous
            logger.warning(
                "%s: taking over the lock left by %s, which is no longer running",
                self.directory,
                _describe(previous),
            )
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(me).encode())
        except OSError:  # the record is informative only; the lock itself is held
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        """Release the lock (idempotent). The holder record is cleared: an empty lock file
        means the last run ended normally."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        try:
            _unlock(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:  # a Trainer dropped without run(): the lock goes with it
        try:
            self.release()
        except Exception:
            pass
