"""Fixtures and hooks of the fault-injection suite (helpers: ``tests/reliability_helpers.py``).

Fast cases run in the default suite. Long randomized ones carry ``@pytest.mark.reliability``
and run only when selected (``make reliability``: ``pytest -m reliability tests/reliability``);
they count their trials per fault class with the ``tally`` fixture, and the session writes
the counts to ``benchmarks/results/reliability.json`` (the README's figures).
``PYRO_AEVB_RELIABILITY_SCALE`` (default 1) scales every trial count.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections import Counter, defaultdict

import pyro
import pytest
import torch
from reliability_helpers import ROOT, SCALE_ENV, scale

RESULTS = ROOT / "benchmarks" / "results" / "reliability.json"


# --------------------------------------------------------------------------- results


class Tally:
    """Trials and outcomes per fault class, for the results file."""

    def __init__(self) -> None:
        self.classes: dict[str, Counter] = defaultdict(Counter)
        self.notes: dict[str, str] = {}

    def add(self, fault_class: str, outcome: str, note: str | None = None) -> None:
        self.classes[fault_class][outcome] += 1
        if note:
            self.notes[fault_class] = note


_TALLY = Tally()


@pytest.fixture(scope="session")
def tally() -> Tally:
    return _TALLY


def pytest_collection_modifyitems(config, items):
    # Long randomized cases only when selected with -m reliability (make reliability).
    if "reliability" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="long fault injection: run with make reliability")
    for item in items:
        if item.get_closest_marker("reliability") is not None:
            item.add_marker(skip)


def pytest_sessionfinish(session, exitstatus):
    if not _TALLY.classes:
        return
    result = {
        "command": f"{SCALE_ENV}={scale():g} make reliability",
        "scale": scale(),
        "exit_status": int(exitstatus),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, torch {torch.__version__}, pyro {pyro.__version__}",
        "classes": {
            name: {
                "trials": sum(counts.values()),
                "outcomes": dict(sorted(counts.items())),
                **({"note": _TALLY.notes[name]} if name in _TALLY.notes else {}),
            }
            for name, counts in sorted(_TALLY.classes.items())
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
