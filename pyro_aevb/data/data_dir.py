"""Which directory the data files are read from (and downloaded into).

Resolution, first match wins:

1. an explicit ``data_dir`` argument,
2. the environment variable ``PYRO_AEVB_DATA``,
3. the user cache directory ``$XDG_CACHE_HOME/pyro-aevb`` (or ``~/.cache/pyro-aevb``).

A directory named by 1 or 2 must exist: a typo there is reported, never silently replaced by
another directory nor created. Only the user cache is created, and only when a download into it
actually starts.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_ENV_VAR", "data_dir_from_env", "default_cache_dir", "resolve_data_dir"]

DATA_ENV_VAR = "PYRO_AEVB_DATA"

_LAYOUT = "mnist/, fashion-mnist/ or frey-face/"


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

    Raises
    ------
    FileNotFoundError
        ``data_dir`` or ``$PYRO_AEVB_DATA`` names a directory that does not exist (the default
        cache directory may be missing: it is created by the first download).
    NotADirectoryError
        ``data_dir`` or ``$PYRO_AEVB_DATA`` names something that is not a directory.
    """
    if data_dir is not None:
        if not os.fspath(data_dir).strip():
            # Path("") is the current directory: a download would land there
            raise ValueError(
                f"data_dir={os.fspath(data_dir)!r} is an empty path; pass None to use "
                f"${DATA_ENV_VAR} or the user cache"
            )
        path = Path(data_dir).expanduser().absolute()
        alternative = f"pass data_dir=None to use ${DATA_ENV_VAR} or the user cache"
        _check_exists(path, f"the argument data_dir={str(data_dir)!r}", alternative)
        return path
    from_env = data_dir_from_env()
    if from_env is not None:
        path = from_env.absolute()
        _check_exists(
            path,
            f"the environment variable {DATA_ENV_VAR}={os.environ[DATA_ENV_VAR].strip()!r}",
            f"unset {DATA_ENV_VAR} to use the user cache {default_cache_dir()}",
        )
        return path
    return default_cache_dir().absolute()


def _check_exists(path: Path, named_by: str, alternative: str) -> None:
    if path.is_dir():
        return
    if path.exists():
        raise NotADirectoryError(
            f"The data directory named by {named_by} is not a directory ({path}). Point it at "
            f"the directory that holds {_LAYOUT}, or {alternative}."
        )
    raise FileNotFoundError(
        f"The data directory named by {named_by} does not exist ({path}). Point it at the "
        f"directory that holds {_LAYOUT}, create it (to download the data into it), or "
        f"{alternative}."
    )
