"""Checkpoints and run files: atomic, sealed writes, and loading without unpickling arbitrary
objects.

A checkpoint is a ``torch.save`` file of a plain dictionary holding only tensors, numbers,
strings, lists and dicts (model ``state_dict``, ``torch.optim`` state, RNG states, progress,
history), so :func:`load_checkpoint` reads it with ``torch.load(weights_only=True)``: a
checkpoint from an untrusted source cannot execute code. Every checkpoint carries a SHA-256
seal (:mod:`~pyro_aevb.train.integrity`) that :func:`load_checkpoint` verifies before
unpickling anything: a damaged file is an error naming it, never a silent load of altered
weights. :func:`save_checkpoint` keeps the checkpoint it replaces as ``<name>.prev.pt``, so
there is always an earlier one to go back to.

Every file is written to a temporary name in the same directory, flushed to disk and moved
into place with :func:`os.replace`, so a crash (or a full disk) while saving never leaves a
truncated file where the last good one was; :func:`remove_stale_temps` deletes the temporary
files a killed process left behind. JSON files are standard JSON: a non-finite number is
written as ``null``.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..files import match_new_file_mode
from .integrity import CorruptCheckpointError, seal, unseal

__all__ = [
    "missing_checkpoint_hint",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CorruptCheckpointError",
    "previous_checkpoint_path",
    "save_checkpoint",
    "load_checkpoint",
    "seal_checkpoint_file",
    "write_json_atomic",
    "write_bytes_atomic",
    "read_json",
    "json_safe",
    "remove_stale_temps",
]

CHECKPOINT_FORMAT = "pyro-aevb-checkpoint"
CHECKPOINT_VERSION = 1

# Temporary files of a process that started before this one are stale: a write in progress is
# seconds old at most.
_PROCESS_STARTED = time.time()


def previous_checkpoint_path(path: str | os.PathLike) -> Path:
    """Where :func:`save_checkpoint` keeps the checkpoint it replaced: ``name.prev.pt`` beside
    ``name.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix or '.pt'}")


def missing_checkpoint_hint(path: str | os.PathLike, default: str) -> str:
    """What to do when ``path`` is not a checkpoint file: it is something else (a folder, a
    broken link), or the previous checkpoint survived it; ``default`` otherwise."""
    path = Path(path)
    previous = previous_checkpoint_path(path)
    if previous.is_file():
        return (
            f"the run's previous checkpoint {previous.name} is there: rename it to {path.name} "
            f"to continue from it (it is one checkpoint older)"
        )
    if path.is_symlink() and not path.exists():
        return f"{path} is a broken symbolic link"
    if path.exists():
        return f"{path} is not a file (a directory?)"
    return default


def _io_error(path: Path, err: OSError, doing: str, fix: str) -> OSError:
    """``err`` as the same class, with a message that names ``path`` and says what to do."""
    reason = err.strerror or str(err)
    message = f"Cannot {doing} {path}: {reason}. {fix}"
    try:
        # The same class, so that `except PermissionError` and the like still catch it.
        return type(err)(message)
    except TypeError:  # an OSError subclass with a different constructor
        return OSError(message)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform (best effort).
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes, before_replace=None, exclusive: bool = False) -> Path:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, call
    ``before_replace()`` (if given) and move it into place; on any failure the temporary file
    is removed and ``path`` is unchanged. With ``exclusive``, a file that is at ``path`` by
    then (another process wrote it meanwhile) is kept: ``FileExistsError``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _io_error(path, err, "write", "Check the folder's permissions.") from err
    try:
        try:
            match_new_file_mode(fd)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if before_replace is not None:
            before_replace()
        if exclusive:
            _link_new(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, FileExistsError):
            raise _io_error(
                path,
                err,
                "write",
                "The file already in its place (if any) is unchanged; free disk space or fix "
                "the permissions, then try again (a training run: resume it).",
            ) from err
        raise
    _fsync_dir(path.parent)
    return path


def _link_new(tmp: str, path: Path) -> None:
    """Move ``tmp`` to ``path`` unless a file is there (atomically, by a hard link where the
    file system has them); raises ``FileExistsError`` then."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path} was written by someone else meanwhile") from None
    except OSError:  # no hard links here: check, then move (a narrow race)
        if path.exists():
            raise FileExistsError(f"{path} was written by someone else meanwhile") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, exclusive: bool = False) -> Path:
    """Atomically write ``data`` to ``path`` (a crash or Ctrl-C leaves the file that was
    there, never half a file). With ``exclusive``, raise ``FileExistsError`` rather than
    replace a file that is at ``path`` when the write completes."""
    return _atomic_write(Path(path), data, exclusive=exclusive)


def _keep_previous(path: Path, previous: Path) -> None:
    """Atomically make ``previous`` a copy of ``path`` (a hard link where possible)."""
    if not path.is_file():
        return
    tmp = path.parent / f".{previous.name}.{secrets.token_hex(6)}.tmp"
    try:
        try:
            os.link(path, tmp)
        except OSError:  # no hard links on this file system: copy
            shutil.copyfile(path, tmp)
        os.replace(tmp, previous)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _io_error(
            previous,
            err,
            "write",
            f"{path} is unchanged; free disk space or fix the permissions and try again.",
        ) from err


def save_checkpoint(
    path: str | os.PathLike, payload: dict[str, Any], keep_previous: bool = True
) -> Path:
    """Atomically write ``payload`` (plain data and tensors only) as a sealed checkpoint.

    With ``keep_previous`` the file it replaces is kept as :func:`previous_checkpoint_path`
    (the last two checkpoints survive). Raises an ``OSError`` naming the file when it cannot
    be written (full disk, permissions); the files in place are then unchanged.
    """
    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = seal(buffer.getvalue())
    # the current file becomes the previous one only once the new one is safely on disk
    keep = (lambda: _keep_previous(path, previous_checkpoint_path(path))) if keep_previous else None
    return _atomic_write(path, data, before_replace=keep)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist") from None
    except PermissionError as err:
        raise _io_error(
            path, err, "read checkpoint", f"Make it readable for this user (chmod u+r {path})."
        ) from err
    except IsADirectoryError as err:
        raise _io_error(
            path, err, "read checkpoint", "A directory is in the place of the file: move it away."
        ) from err
    except OSError as err:
        raise _io_error(path, err, "read checkpoint", "Check the disk and the file.") from err


def _describe_previous(path: Path) -> str:
    """What to do about a damaged checkpoint: the state of the previous one."""
    previous = previous_checkpoint_path(path)
    if previous == path or not previous.is_file():
        return (
            "There is no previous checkpoint beside it: restore the file from a copy, or start "
            "the run again in a new directory."
        )
    try:
        payload = _load_verified(previous)
        samples = payload.get("progress", {}).get("samples")
    except (ValueError, OSError) as err:
        return f"The previous checkpoint {previous} is damaged too ({err.__class__.__name__})."
    at = f" (at {samples:,} samples)" if isinstance(samples, int) else ""
    return (
        f"The previous checkpoint {previous}{at} is intact: to continue from it, move it into "
        f"place (mv {previous} {path}) and resume."
    )


def _load_verified(path: Path) -> dict[str, Any]:
    blob = _read_bytes(path)
    data, problem = unseal(blob)
    if data is None:
        raise CorruptCheckpointError(f"checkpoint {path} is damaged: {problem}", path, problem)
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # a file holding arbitrary pickled objects, or not torch.save's
        raise ValueError(
            f"checkpoint {str(path)!r} could not be read safely (weights_only=True): {err}"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r} is not a pyro-aevb checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"checkpoint {str(path)!r} has version {payload.get('version')!r}; this "
            f"pyro-aevb reads version {CHECKPOINT_VERSION}"
        )
    return payload


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, refusing anything else.

    Raises
    ------
    CorruptCheckpointError
        (a ``ValueError``) The file does not match its SHA-256 seal, or has none; nothing in
        it was unpickled. The message names the file and says whether the previous checkpoint
        beside it is intact and how to continue from it.
    ValueError
        The file is sealed but is not a pyro-aevb checkpoint, or holds objects other than
        tensors and plain data.
    FileNotFoundError, PermissionError, OSError
        The file is missing or cannot be read; the message names it.
    """
    path = Path(path)
    try:
        return _load_verified(path)
    except CorruptCheckpointError as err:
        raise CorruptCheckpointError(
            f"{err}, so it was not loaded. {_describe_previous(path)}", path, err.reason
        ) from None


def seal_checkpoint_file(path: str | os.PathLike) -> Path:
    """Add the SHA-256 seal to a checkpoint written before checkpoints were sealed.

    Only for a file you trust (the seal says "unchanged since sealed", so sealing a damaged
    file hides the damage). The file must load with ``torch.load(weights_only=True)`` as a
    pyro-aevb checkpoint; it is rewritten in place, atomically.
    """
    path = Path(path)
    blob = _read_bytes(path)
    if unseal(blob)[0] is not None:
        return path
    try:
        payload = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable checkpoint: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r} is not a pyro-aevb checkpoint")
    return _atomic_write(path, seal(blob))


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (JSON has no NaN/Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any, exclusive: bool = False) -> Path:
    """Atomically write ``obj`` as indented, standard JSON (non-finite numbers as ``null``);
    ``exclusive`` as for :func:`write_bytes_atomic`."""
    data = (json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False) + "\n").encode()
    return write_bytes_atomic(path, data, exclusive)


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def _temp_pattern(name: str) -> re.Pattern[str]:
    # The names tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp") gives, and only those.
    return re.compile(re.escape(f".{name}.") + r"[A-Za-z0-9_]+" + re.escape(".tmp"))


def remove_stale_temps(
    directory: str | os.PathLike, names: Sequence[str], exclusive: bool = False
) -> list[Path]:
    """Delete the temporary files that interrupted writes of ``names`` left in ``directory``.

    Only files named like this module's temporaries for one of ``names`` are deleted, and,
    unless ``exclusive`` (the caller holds the run's lock, so no one else writes these
    names), only those last modified before this process started, so that a write in
    progress elsewhere is left alone. Best effort: a file that cannot be deleted is left.
    Returns the files deleted.
    """
    patterns = [_temp_pattern(n) for n in names]
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if not any(p.fullmatch(entry.name) for p in patterns):
            continue
        try:
            old = exclusive or entry.stat().st_mtime < _PROCESS_STARTED
            if entry.is_file(follow_symlinks=False) and old:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed
