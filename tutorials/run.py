"""Generate and execute the tutorial notebooks: ``python tutorials/run.py [options] [NAME ...]``.

Without names, every tutorial (``tutorials/NN_name.py``) is generated and executed; a name is
a source stem, its number (``01``) or a path. ``make tutorials`` runs this in full mode.

* full mode (default): the notebooks run with their real budgets; each is written to
  ``tutorials/NAME.ipynb`` with its outputs and ``metadata["pyro_aevb"]`` recording the code
  cells' SHA-256, the mode, the run time and the versions used. This is what is committed.
* ``--quick``: ``PYRO_AEVB_QUICK=1`` shrinks the budgets (as in the test suite); the executed
  notebooks go to ``build/tutorials-quick/`` unless ``--out`` says otherwise.
* ``--stale``: execute only the notebooks whose code cells changed since their stored run;
  for the others, rewrite the markdown cells from the source and keep the stored outputs.
* ``--check``: execute nothing; report the stored notebooks that are out of date.

Every notebook runs in a fresh kernel whose working directory is a new temporary directory
(files the notebook writes are discarded), which imports ``pyro_aevb`` from this checkout,
with matplotlib's inline backend (``plt.show()`` stores the figure in the notebook) and
``PYRO_AEVB_DATA`` (made absolute) passed through: set it to run
the tutorials on the full data sets rather than the embedded MNIST slice.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_notebooks import (  # noqa: E402
    METADATA_KEY,
    Tutorial,
    build_notebook,
    check_notebook,
    code_hash,
    orphan_notebooks,
    select,
)

REPO = Path(__file__).resolve().parents[1]
QUICK_OUT = REPO / "build" / "tutorials-quick"
FAILED_OUT = REPO / "build" / "tutorials-failed"
_NO_IPYW = "ignore:IProgress not found"
_CARRIAGE_RETURN = re.compile(r"[^\n]*\r(?!\n)")


def kernel_env(quick: bool) -> dict[str, str]:
    """The environment of the notebook kernel."""
    env = dict(os.environ)
    env.pop("PYRO_AEVB_QUICK", None)
    if quick:
        env["PYRO_AEVB_QUICK"] = "1"
    # the inline backend (ipykernel's own): plt.show() puts the figure into the cell's outputs
    # (with "Agg" it would silently draw nothing, and the stored notebook would lack it)
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    # tqdm.auto falls back to a text bar without ipywidgets; its warning says so in every notebook
    env["PYTHONWARNINGS"] = ",".join(filter(None, [env.get("PYTHONWARNINGS"), _NO_IPYW]))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if env.get("PYRO_AEVB_DATA"):
        env["PYRO_AEVB_DATA"] = str(Path(env["PYRO_AEVB_DATA"]).resolve())
    return env


def clean_outputs(nb: nbformat.NotebookNode) -> None:
    """Merge consecutive outputs of one stream and keep only what a terminal would show of a
    progress bar (the text after the last carriage return of a line)."""
    for cell in nb.cells:
        merged = []
        for output in cell.get("outputs", []):
            if output.output_type == "stream" and merged and merged[-1].get("name") == output.name:
                merged[-1].text += output.text
            else:
                merged.append(output)
        for output in merged:
            if output.output_type == "stream":
                output.text = _CARRIAGE_RETURN.sub("", output.text.replace("\r\n", "\n"))
        if "outputs" in cell:
            cell.outputs = merged


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for dist in ("pyro-ppl", "torch"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


#: A tutorial that fails: an error in a cell, a cell past --timeout, a kernel that died.
NOTEBOOK_FAILURES = (CellExecutionError, CellTimeoutError, DeadKernelError)


def execute(
    nb: nbformat.NotebookNode, quick: bool, workdir: str | os.PathLike, timeout: int | None = None
) -> nbformat.NotebookNode:
    """Execute ``nb`` in place in a fresh kernel running in ``workdir``; record the run."""
    start = time.perf_counter()
    NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(workdir)}},
    ).execute(env=kernel_env(quick))
    clean_outputs(nb)
    nb.metadata[METADATA_KEY] = {
        "code_sha256": code_hash(nb),
        "mode": "quick" if quick else "full",
        "executed": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seconds": round(time.perf_counter() - start, 1),
        "full_data": bool(os.environ.get("PYRO_AEVB_DATA")),
        "versions": versions(),
    }
    return nb


def run(tutorial: Tutorial, quick: bool, out: Path, timeout: int | None) -> Path:
    """Generate and execute one tutorial, write the notebook with its outputs to ``out``.

    A notebook that raises is written to ``build/tutorials-failed/`` instead (its outputs up to
    the error, for inspection) and the error re-raised.
    """
    nb = build_notebook(tutorial)
    try:
        with tempfile.TemporaryDirectory(prefix=f"{tutorial.name}-") as workdir:
            execute(nb, quick, workdir, timeout)
    except NOTEBOOK_FAILURES:
        FAILED_OUT.mkdir(parents=True, exist_ok=True)
        clean_outputs(nb)
        nbformat.write(nb, FAILED_OUT / tutorial.notebook.name)
        raise
    out.mkdir(parents=True, exist_ok=True)
    path = out / tutorial.notebook.name
    nbformat.write(nb, path)
    return path


def sync_markdown(tutorial: Tutorial) -> bool:
    """Rewrite a stored notebook's cells from its source when its code cells are unchanged.

    Returns False (and writes nothing) when the code cells changed, so it must be executed.
    """
    stored = nbformat.read(tutorial.notebook, as_version=4)
    fresh = build_notebook(tutorial)
    if stored.metadata.get(METADATA_KEY, {}).get("code_sha256") != code_hash(fresh):
        return False
    outputs = [c for c in stored.cells if c.cell_type == "code"]
    for cell in fresh.cells:
        if cell.cell_type == "code":
            old = outputs.pop(0)
            cell.outputs = copy.deepcopy(old.outputs)
            cell.execution_count = old.execution_count
    fresh.metadata[METADATA_KEY] = stored.metadata[METADATA_KEY]
    nbformat.write(fresh, tutorial.notebook)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="tutorials to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="PYRO_AEVB_QUICK=1 budgets")
    parser.add_argument("--out", type=Path, help="output folder (default: tutorials/ if full)")
    parser.add_argument("--stale", action="store_true", help="only tutorials whose code changed")
    parser.add_argument("--check", action="store_true", help="report out-of-date notebooks")
    parser.add_argument("--timeout", type=int, default=None, help="seconds per cell")
    args = parser.parse_args(argv)
    chosen = select(args.names)
    if args.check:
        if args.quick or args.out or args.stale or args.timeout is not None:
            parser.error("--check reports on the stored notebooks; it takes no other option")
        from make_notebooks import main as check_main

        return check_main([t.name for t in chosen])
    if args.stale and (args.quick or args.out):
        parser.error("--stale updates the stored notebooks (a full run into tutorials/); "
                     "leave out --quick and --out")  # fmt: skip
    out = args.out or (QUICK_OUT if args.quick else None)
    if not args.quick and not os.environ.get("PYRO_AEVB_DATA"):
        if out is None:
            # the stored notebooks' text discusses the full data sets' numbers
            parser.error("a full run stores its notebooks in tutorials/, whose text is about "
                         "the full data sets: set PYRO_AEVB_DATA to the data folder, or pass "
                         "--quick, or --out DIR for a run on the embedded slice")  # fmt: skip
        print("note: PYRO_AEVB_DATA is not set: the tutorials use the embedded MNIST slice")
    failed = []
    for tutorial in chosen:
        if args.stale and out is None and tutorial.notebook.exists() and sync_markdown(tutorial):
            print(f"{tutorial.name}: code unchanged, cells rewritten, outputs kept")
            continue
        start = time.perf_counter()
        mode = "quick" if args.quick else "full"
        print(f"{tutorial.name}: executing ({mode}) ...", flush=True)
        try:
            path = run(tutorial, args.quick, out or tutorial.notebook.parent, args.timeout)
        except NOTEBOOK_FAILURES as exc:
            failed.append(tutorial.name)
            where = os.path.relpath(FAILED_OUT / tutorial.notebook.name)
            print(f"{tutorial.name}: FAILED (notebook with the error: {where})\n{exc}")
            continue
        rel = os.path.relpath(path)
        print(f"{tutorial.name}: {rel} in {time.perf_counter() - start:.0f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    if out is None:
        problems = {t.name: check_notebook(t) for t in chosen}
        for name, issues in problems.items():
            if issues:
                print(f"{name}: still out of date: {'; '.join(issues)}")
        for path in orphan_notebooks():
            print(f"warning: {path.name} has no source file")
        return 1 if any(problems.values()) else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
