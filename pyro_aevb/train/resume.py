"""What may change when a run is resumed, and what may not.

A resumed run must be the same run: the same model (class, every option of its config), the
same training settings (objective, optimizer, batch size, seed, ...), the same data (compared
by fingerprint, :mod:`~pyro_aevb.train.fingerprint`). :func:`config_differences` lists every
setting that differs, by dotted name, so the refusal can name them all at once.

Two things may differ: the model's initialisation (the checkpoint overwrites it) and the step
size, which may be *lowered* (:func:`resumed_lr`): that is the advice after a divergence, and
the new value is recorded with every later history record.
"""

from __future__ import annotations

from typing import Any

from .fingerprint import describe_fingerprint

__all__ = ["COMPARED", "config_differences", "resumed_lr"]

#: Top-level config entries compared on resume.
COMPARED = ("model_class", "model", "guide", "event_shape", "training", "data")
# May differ: the initialisation is overwritten by the checkpoint; lr is checked by resumed_lr.
_MAY_DIFFER = {"model.init_std", "guide.init_std", "training.lr"}
_FINGERPRINTS = {"data.train", "data.test"}
_MISSING = object()


def _normal(value):
    if isinstance(value, tuple | list):
        return [_normal(v) for v in value]
    return value


def _show(value, name: str) -> str:
    if value is _MISSING:
        return "not set"
    if name in _FINGERPRINTS:
        return describe_fingerprint(value)
    return repr(value)


def _diff(saved, current, name: str, out: list[str]) -> None:
    if name in _MAY_DIFFER:
        return
    if name not in _FINGERPRINTS and isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(set(saved) | set(current), key=str):
            _diff(saved.get(key, _MISSING), current.get(key, _MISSING), f"{name}.{key}", out)
        return
    if _normal(saved) != _normal(current):
        out.append(f"{name} (checkpoint: {_show(saved, name)}; now: {_show(current, name)})")


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Every compared setting whose value in ``current`` differs from ``saved``, as
    ``"model.latent_dim (checkpoint: 3; now: 5)"``. A checkpoint without data fingerprints
    (written before they were recorded) is not compared on data."""
    out: list[str] = []
    for key in COMPARED:
        if key == "data" and key not in saved:
            continue
        _diff(saved.get(key, _MISSING), current.get(key, _MISSING), key, out)
    return out


def resumed_lr(saved: float, given: float | None) -> float:
    """The step size of a resumed run: ``saved`` unless a smaller one is ``given``.

    Raises ``ValueError`` for a larger one: resuming may lower the step size (the advice after
    a divergence), not raise it; a larger step size is a new run.
    """
    if given is None or given == saved:
        return saved
    if given < saved:
        return given
    raise ValueError(
        f"cannot resume with lr {given}: the run trained with lr {saved}, and a resumed run may "
        f"lower its step size (e.g. after a divergence), not raise it. Resume with lr <= "
        f"{saved} (or leave lr unset), or start a new run in another out_dir"
    )
