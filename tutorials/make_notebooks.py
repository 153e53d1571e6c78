"""Tutorial notebooks from plain Python sources, and the check that the stored ones are current.

Each tutorial is one source file ``tutorials/NN_name.py`` in the "percent" format that
Jupytext, VS Code and PyCharm understand: ``# %%`` starts a code cell, ``# %% [markdown]``
a markdown cell whose lines are comments (``# text``). Lines before the first marker are a
header that does not go into the notebook. The notebook ``tutorials/NN_name.ipynb`` is
generated from it by ``tutorials/run.py`` (``make tutorials``), which executes it and stores
the outputs together with, in ``metadata["pyro_aevb"]``, the SHA-256 of the code cells'
text and the mode (``full`` or ``quick``) of that run.

``python tutorials/make_notebooks.py`` reports which stored notebooks are out of date (exit
status 1 if any); the test suite runs the same check (:func:`check_notebook`).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
METADATA_KEY = "pyro_aevb"
SOURCE_PATTERN = "[0-9][0-9]_*.py"
_MARKER = re.compile(r"^# %%(?P<rest>.*)$")
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


@dataclass(frozen=True)
class Tutorial:
    """One tutorial: its source file and the notebook generated from it."""

    source: Path

    @property
    def name(self) -> str:
        return self.source.stem

    @property
    def notebook(self) -> Path:
        return self.source.with_suffix(".ipynb")

    @property
    def needs_data(self) -> bool:
        """Whether the tutorial needs ``PYRO_AEVB_DATA`` (a ``# NEEDS_DATA`` line in its
        header: its data set is not shipped inside the package)."""
        return any(line.startswith("# NEEDS_DATA") for line in self.source.read_text().splitlines())


def tutorials(directory: Path = HERE) -> list[Tutorial]:
    """Every tutorial in ``directory`` (sources named ``NN_name.py``), in order."""
    return [Tutorial(p) for p in sorted(Path(directory).glob(SOURCE_PATTERN))]


def select(names: list[str], directory: Path = HERE) -> list[Tutorial]:
    """The tutorials named by stem, number prefix (``01``) or path; all of them if none."""
    every = tutorials(directory)
    if not names:
        return every
    chosen = []
    for name in names:
        stem = Path(name).stem
        found = [t for t in every if t.name == stem or t.name.startswith(stem + "_")]
        if len(found) != 1:
            known = ", ".join(t.name for t in every)
            raise SystemExit(f"no single tutorial matches {name!r}; tutorials: {known}")
        chosen += found
    return chosen


def parse_source(text: str) -> list[tuple[str, str]]:
    """``(cell_type, source)`` pairs of a percent-format script; empty cells are dropped."""
    cells: list[tuple[str, list[str]]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        marker = _MARKER.match(line)
        if marker:
            rest = marker.group("rest").strip()
            cells.append(("markdown" if rest.startswith("[markdown]") else "code", []))
        elif not cells:
            continue  # header
        elif cells[-1][0] == "markdown" and line.strip():
            if not (line == "#" or line.startswith("# ")):
                raise ValueError(f"line {lineno}: a markdown cell's lines must start with '# '")
            cells[-1][1].append(line[2:])
        else:
            cells[-1][1].append(line)
    out = []
    for cell_type, lines in cells:
        if cell_type == "markdown":
            lines = ["" if not line.strip() else line for line in lines]
        source = "\n".join(lines).strip("\n")
        if source.strip():
            out.append((cell_type, source))
    return out


def build_notebook(tutorial: Tutorial) -> nbformat.NotebookNode:
    """The notebook of a tutorial, without outputs, with deterministic cell ids."""
    cells = []
    for i, (cell_type, source) in enumerate(parse_source(tutorial.source.read_text())):
        make = new_markdown_cell if cell_type == "markdown" else new_code_cell
        cells.append(make(source, id=f"cell-{i:02d}"))
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def code_hash(nb: nbformat.NotebookNode) -> str:
    """SHA-256 of the text of the notebook's code cells (what the stored outputs depend on)."""
    sources = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    return hashlib.sha256(json.dumps(sources).encode()).hexdigest()


def check_notebook(tutorial: Tutorial) -> list[str]:
    """Why the stored notebook of ``tutorial`` is not a full run of its current source.

    Empty when it is: its cells equal the ones generated from the source, its metadata
    records a ``full`` run whose code hash equals the source's, and every code cell was
    executed, in order, without an error.
    """
    if not tutorial.notebook.exists():
        return [f"{tutorial.notebook.name} is missing"]
    stored = nbformat.read(tutorial.notebook, as_version=4)
    expected = build_notebook(tutorial)
    problems = []
    meta = stored.metadata.get(METADATA_KEY, {})
    if meta.get("code_sha256") != code_hash(expected):
        problems.append("its code cells changed since the recorded run")
    if [(c.cell_type, c.source) for c in stored.cells] != [
        (c.cell_type, c.source) for c in expected.cells
    ]:
        problems.append(f"its cells differ from {tutorial.source.name}")
    if meta.get("mode") != "full":
        problems.append(f"its outputs are from a {meta.get('mode', 'unrecorded')!r} run")
    elif not meta.get("full_data"):
        problems.append("its outputs are from a run on the embedded slice (PYRO_AEVB_DATA unset)")
    code = [c for c in stored.cells if c.cell_type == "code"]
    counts = [c.get("execution_count") for c in code]
    if counts != list(range(1, len(code) + 1)):
        problems.append(f"its code cells were not all executed in order {counts}")
    if any(o.output_type == "error" for c in code for o in c.get("outputs", [])):
        problems.append("it stores an error output")
    if not any(c.get("outputs") for c in code):
        problems.append("it stores no outputs")
    missing = missing_figures(stored)
    if missing:
        problems.append(f"code cell(s) {missing} call plt.show() but store no figure")
    return problems


def missing_figures(nb) -> list[int]:
    """The (1-based) code cells that call ``plt.show()`` but hold no image output: a figure
    a reader would not see (e.g. drawn by a non-interactive matplotlib backend)."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    return [
        i
        for i, c in enumerate(code, 1)
        if "plt.show()" in c.source
        and not any("image/png" in o.get("data", {}) for o in c.get("outputs", []))
    ]


def orphan_notebooks(directory: Path = HERE) -> list[Path]:
    """Notebooks in ``directory`` without a source file."""
    sources = {t.notebook for t in tutorials(directory)}
    return [p for p in sorted(Path(directory).glob("*.ipynb")) if p not in sources]


def main(argv: list[str] | None = None) -> int:
    """Report each tutorial's status; exit status 1 when any stored notebook is out of date."""
    stale = 0
    for tutorial in select(list(sys.argv[1:] if argv is None else argv)):
        problems = check_notebook(tutorial)
        stale += bool(problems)
        print(f"{tutorial.name}: {'; '.join(problems) if problems else 'up to date'}")
    for path in orphan_notebooks():
        stale += 1
        print(f"{path.name}: no source file {path.with_suffix('.py').name}")
    if stale:
        print("regenerate with: make tutorials  (or python tutorials/run.py NAME ...)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
