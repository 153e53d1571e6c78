"""The tutorial notebooks: each executes in quick mode, and each stored one is a full run of
its current source (``tutorials/NN_name.py``; regenerate with ``make tutorials``)."""

import importlib.util
import os
import sys
from pathlib import Path

import nbformat
import pytest

TUTORIALS_DIR = Path(__file__).resolve().parents[2] / "tutorials"


def _load(name, file):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TUTORIALS_DIR / file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # run.py imports make_notebooks by name
        spec.loader.exec_module(module)
    return sys.modules[name]


make_notebooks = _load("make_notebooks", "make_notebooks.py")
run = _load("tutorials_run", "run.py")
TUTORIALS = make_notebooks.tutorials()
IDS = [t.name for t in TUTORIALS]


def test_there_are_tutorials():
    assert len(TUTORIALS) >= 2
    assert all(t.source.read_text().strip() for t in TUTORIALS)


@pytest.mark.parametrize("tutorial", TUTORIALS, ids=IDS)
def test_notebook_executes_in_quick_mode(tutorial, tmp_path):
    if tutorial.needs_data and not os.environ.get("PYRO_AEVB_DATA"):
        pytest.skip(f"{tutorial.name} needs PYRO_AEVB_DATA (its data set is not embedded)")
    nb = make_notebooks.build_notebook(tutorial)
    run.execute(nb, quick=True, workdir=tmp_path, timeout=600)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert nb.metadata["pyro_aevb"]["mode"] == "quick"
    assert make_notebooks.missing_figures(nb) == []  # every plt.show() left its figure


@pytest.mark.parametrize("tutorial", TUTORIALS, ids=IDS)
def test_stored_notebook_is_a_full_run_of_its_source(tutorial):
    problems = make_notebooks.check_notebook(tutorial)
    assert not problems, (
        f"{tutorial.notebook.name}: {'; '.join(problems)}. "
        f"Regenerate it: python tutorials/run.py {tutorial.name}  (or make tutorials)"
    )


def test_every_notebook_has_a_source():
    assert make_notebooks.orphan_notebooks() == []


def _copy(tutorial, tmp_path):
    source = tmp_path / tutorial.source.name
    source.write_text(tutorial.source.read_text())
    (tmp_path / tutorial.notebook.name).write_text(tutorial.notebook.read_text())
    return make_notebooks.Tutorial(source)


def test_check_catches_an_edited_code_cell(tmp_path):
    tutorial = _copy(TUTORIALS[0], tmp_path)
    assert make_notebooks.check_notebook(tutorial) == []
    text = tutorial.source.read_text()
    tutorial.source.write_text(text.replace("# %%\n", "# %%\nprint('edited')\n", 1))
    problems = make_notebooks.check_notebook(tutorial)
    assert "its code cells changed since the recorded run" in problems


def test_check_catches_edited_markdown_and_quick_outputs(tmp_path):
    tutorial = _copy(TUTORIALS[0], tmp_path)
    tutorial.source.write_text(tutorial.source.read_text() + "\n# %% [markdown]\n# More.\n")
    assert make_notebooks.check_notebook(tutorial) == [
        f"its cells differ from {tutorial.source.name}"
    ]
    assert run.sync_markdown(tutorial)  # code unchanged: markdown rewritten, outputs kept
    assert make_notebooks.check_notebook(tutorial) == []
    nb = nbformat.read(tutorial.notebook, as_version=4)
    nb.metadata["pyro_aevb"]["mode"] = "quick"
    nbformat.write(nb, tutorial.notebook)
    assert make_notebooks.check_notebook(tutorial) == ["its outputs are from a 'quick' run"]
    nb.metadata["pyro_aevb"].update(mode="full", full_data=False)
    nbformat.write(nb, tutorial.notebook)
    assert make_notebooks.check_notebook(tutorial) == [
        "its outputs are from a run on the embedded slice (PYRO_AEVB_DATA unset)"
    ]


def test_a_failing_tutorial_of_any_kind_is_reported_not_raised(tmp_path, monkeypatch, capsys):
    """A cell past --timeout (not a CellExecutionError) is a failed tutorial like an error:
    the notebook is kept for inspection and the others still run."""
    from nbclient.exceptions import CellTimeoutError

    def timed_out(nb, quick, workdir, timeout=None):
        raise CellTimeoutError("A cell timed out while it was being executed, after 2 seconds.")

    monkeypatch.setattr(run, "execute", timed_out)
    monkeypatch.setattr(run, "FAILED_OUT", tmp_path / "failed")
    names = [t.name for t in TUTORIALS[:2]]
    assert run.main([*names, "--quick", "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert f"failed: {', '.join(names)}" in out
    assert (tmp_path / "failed" / TUTORIALS[1].notebook.name).is_file()


def test_a_full_run_without_the_data_into_tutorials_is_refused(monkeypatch):
    monkeypatch.delenv("PYRO_AEVB_DATA", raising=False)
    with pytest.raises(SystemExit):
        run.main([TUTORIALS[0].name])


def test_parse_source():
    text = "header\n# %% [markdown]\n# # Title\n#\n# text\n\n# %%\nx = 1\n\n\n# %%\n\n"
    assert make_notebooks.parse_source(text) == [("markdown", "# Title\n\ntext"), ("code", "x = 1")]
    with pytest.raises(ValueError, match="line 3"):
        make_notebooks.parse_source("# %% [markdown]\n# ok\nnot a comment\n")


def test_clean_outputs_keeps_the_last_state_of_a_progress_bar():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("")])
    nb.cells[0].outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="a 1%"),
        nbformat.v4.new_output("stream", name="stderr", text="\ra 50%"),
        nbformat.v4.new_output("stream", name="stderr", text="\ra 100%\nnext\r\n"),
        nbformat.v4.new_output("stream", name="stdout", text="out\n"),
    ]
    run.clean_outputs(nb)
    assert [o.text for o in nb.cells[0].outputs] == ["a 100%\nnext\n", "out\n"]
