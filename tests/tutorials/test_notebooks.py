"""Every tutorial notebook executes from top to bottom (in quick mode)."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

TUTORIALS = sorted((Path(__file__).parents[2] / "tutorials").glob("*.ipynb"))


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_AEVB_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    data = os.environ.get("PYRO_AEVB_DATA")
    if data:
        # the kernel runs in tmp_path: a data directory relative to here must stay valid there
        monkeypatch.setenv("PYRO_AEVB_DATA", str(Path(data).resolve()))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.output_type == "error"
    ]
    assert not errors


def test_notebooks_are_stored_without_outputs():
    for path in TUTORIALS:
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), path
