"""Generate the API reference pages of the docs from the package itself.

``conf.py`` calls :func:`write_api` at every build, so new modules and new names flow into the
reference without editing the docs. What is public:

* every module of ``pyro_aevb`` found by walking the package, except those with a path
  component that starts with ``_``;
* in each, the names in its ``__all__``; a module without ``__all__`` (a script such as
  ``pyro_aevb.cli``) contributes the functions and classes defined in it whose names do not
  start with ``_``.

Each object is documented once (an ``auto*`` directive) at its *home*: the module that defines
it when that module exports it, else the deepest module that exports it. Every other module
that exports it lists it in its summary table with a link to the home. Every module's page
starts with a table of all its public names.

``python docs/gen_api.py --check-inventory docs/_build/html/objects.inv`` checks a built site:
every public name's home is in the Sphinx inventory (``make docs`` runs it).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import pkgutil
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "pyro_aevb"
MAX_VALUE_REPR = 80


@dataclass(frozen=True)
class Entry:
    """A public name ``name`` of module ``module``, documented at ``home`` as ``kind``."""

    module: str
    name: str
    home: str  # full dotted name of the documented object (a module for submodules)
    kind: str  # "module", "class", "exception", "function" or "data"

    @property
    def target(self) -> str:
        return self.home


def public_modules(package: str = PACKAGE) -> list[types.ModuleType]:
    """The package and all its modules whose dotted names have no ``_``-prefixed part."""
    root = importlib.import_module(package)
    modules = [root]
    for info in pkgutil.walk_packages(root.__path__, prefix=package + "."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        modules.append(importlib.import_module(info.name))
    return sorted(modules, key=lambda m: m.__name__)


def exported_names(module: types.ModuleType) -> list[str]:
    """``module.__all__``, or its public functions and classes when it has no ``__all__``."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and obj.__module__ == module.__name__
    ]


def _kind(obj) -> str:
    if isinstance(obj, types.ModuleType):
        return "module"
    if inspect.isclass(obj):
        return "exception" if issubclass(obj, BaseException) else "class"
    if inspect.isroutine(obj):
        return "function"
    return "data"


def collect(package: str = PACKAGE) -> dict[str, list[Entry]]:
    """Module name -> its public names (in ``__all__`` order), each with its home."""
    modules = public_modules(package)
    by_name = {m.__name__: m for m in modules}
    exports = {m.__name__: exported_names(m) for m in modules}
    for module, names in exports.items():
        missing = [n for n in names if not hasattr(by_name[module], n)]
        if missing:
            raise AttributeError(f"{module}.__all__ names missing attributes: {missing}")

    def home(module: str, name: str) -> tuple[str, str]:
        obj = getattr(by_name[module], name)
        kind = _kind(obj)
        if kind == "module":
            return obj.__name__, kind
        defining = getattr(obj, "__module__", None) if kind != "data" else None
        if defining in exports and getattr(obj, "__name__", None) in exports[defining]:
            return f"{defining}.{obj.__name__}", kind
        exporters = [
            m for m, names in exports.items() if name in names and getattr(by_name[m], name) is obj
        ]
        deepest = max(exporters, key=lambda m: (m.count("."), m))
        return f"{deepest}.{name}", kind

    return {m: [Entry(m, n, *home(m, n)) for n in names] for m, names in exports.items()}


def _first_sentence(text: str | None) -> str:
    """The first sentence of the first paragraph of a docstring (never inside a literal)."""
    if not text:
        return ""
    paragraph = " ".join(inspect.cleandoc(text).split("\n\n")[0].split())
    for match in re.finditer(r"\.(\s|$)", paragraph):
        before = paragraph[: match.start()]
        if before.endswith(("e.g", "i.e", "etc", "cf", "vs")):
            continue
        if before.count("``") % 2 == 0 and before.replace("``", "").count("`") % 2 == 0:
            return paragraph[: match.start() + 1]
    return paragraph


def data_doc(module: str, name: str) -> str | None:
    """The doc comment (``#: ...`` lines just above) or docstring (a string just below) of the
    module-level assignment of ``name`` in ``module``, as autodoc reads them; else None."""
    try:
        source = inspect.getsource(importlib.import_module(module))
    except (OSError, TypeError):
        return None
    lines = source.splitlines()
    body = ast.parse(source).body
    for i, node in enumerate(body):
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if not any(isinstance(t, ast.Name) and t.id == name for t in targets):
            continue
        comments = []
        for line in reversed(lines[: node.lineno - 1]):
            if not line.strip().startswith("#:"):
                break
            comments.insert(0, line.strip()[2:].strip())
        if comments:
            return "\n".join(comments)
        after = body[i + 1] if i + 1 < len(body) else None
        if isinstance(after, ast.Expr) and isinstance(getattr(after, "value", None), ast.Constant):
            if isinstance(after.value.value, str):
                return after.value.value
    return None


def summary(entry: Entry) -> str:
    """One line about a public name, for the summary tables."""
    if entry.kind == "data":
        module, _, name = entry.home.rpartition(".")
        return _first_sentence(data_doc(module, name))
    return _first_sentence(inspect.getdoc(_resolve(entry.home)))


def _resolve(dotted: str):
    module, _, name = dotted.rpartition(".")
    try:
        return importlib.import_module(dotted)
    except ImportError:
        return getattr(importlib.import_module(module), name)


def _heading(text: str, char: str = "=") -> str:
    return f"{text}\n{char * len(text)}\n"


def module_page(module: str, entries: list[Entry]) -> str:
    """The reStructuredText page of one module."""
    lines = [_heading(module), f".. automodule:: {module}\n"]
    if entries:
        lines += [
            ".. list-table:: Public names",
            "   :header-rows: 0",
            "   :widths: 35 65",
            "",
        ]
        for e in entries:
            role = "mod" if e.kind == "module" else "obj"
            text = summary(e)
            if e.home != f"{e.module}.{e.name}" and e.kind != "module":
                text = f"(from :py:mod:`{e.home.rpartition('.')[0]}`) {text}"
            lines += [f"   * - :py:{role}:`{e.name} <{e.home}>`", f"     - {text}".rstrip()]
        lines.append("")
    for e in entries:
        if e.kind == "module" or e.home != f"{e.module}.{e.name}":
            continue
        if e.kind == "data":
            lines += data_directive(e)
            continue
        lines.append(f".. auto{e.kind}:: {e.home}")
        if e.kind in ("class", "exception"):
            lines += ["   :members:", "   :show-inheritance:"]
        lines.append("")
    return "\n".join(lines)


def data_directive(entry: Entry) -> list[str]:
    """``autodata`` for a constant with a doc comment; without one, autodoc would show the
    docstring of the value's type (``dict``, ``tuple``), so a plain ``py:data`` instead."""
    module, _, name = entry.home.rpartition(".")
    value = _resolve(entry.home)
    short = len(repr(value)) <= MAX_VALUE_REPR
    if data_doc(module, name):
        return [f".. autodata:: {entry.home}", *([] if short else ["   :no-value:"]), ""]
    lines = [f".. py:data:: {name}", f"   :module: {module}", f"   :type: {type(value).__name__}"]
    if short:
        lines.append(f"   :value: {value!r}")
    return [*lines, ""]


def index_page(modules: list[str]) -> str:
    lines = [
        _heading("API reference"),
        f"Generated from the docstrings of ``{PACKAGE}`` at every build: one page per module,",
        "each listing every name in the module's ``__all__``. An object is documented once, in",
        "the module that defines it; the packages that re-export it link there.",
        "",
        ".. toctree::",
        "   :maxdepth: 1",
        "",
    ]
    lines += [f"   {m}" for m in modules]
    return "\n".join(lines) + "\n"


def write_api(out_dir: Path, package: str = PACKAGE) -> dict[str, list[Entry]]:
    """(Re)write ``out_dir`` with ``index.rst`` and one page per public module."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = collect(package)
    pages = {"index.rst": index_page(sorted(entries))}
    pages |= {f"{m}.rst": module_page(m, es) for m, es in entries.items()}
    for stale in out_dir.glob("*.rst"):
        if stale.name not in pages:
            stale.unlink()
    for name, text in pages.items():
        path = out_dir / name
        if not path.exists() or path.read_text() != text:  # keep mtimes: incremental builds
            path.write_text(text)
    return entries


def check_inventory(inventory: Path, package: str = PACKAGE) -> list[str]:
    """Public names whose home is missing from a built site's ``objects.inv``."""
    from sphinx.util.inventory import InventoryFile

    with open(inventory, "rb") as f:
        inv = InventoryFile.load(f, "", lambda base, uri: uri)
    documented = {name for domain, objs in inv.items() if domain.startswith("py:") for name in objs}
    return sorted(
        f"{e.module}.{e.name} (documented at {e.home})"
        for entries in collect(package).values()
        for e in entries
        if e.home not in documented
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate or check the API reference.")
    parser.add_argument("--out", type=Path, help="write the pages to this folder")
    parser.add_argument("--check-inventory", type=Path, help="a built site's objects.inv")
    args = parser.parse_args(argv)
    if args.out:
        entries = write_api(args.out)
        print(f"{sum(map(len, entries.values()))} public names in {len(entries)} modules")
    if args.check_inventory:
        missing = check_inventory(args.check_inventory)
        for line in missing:
            print(f"not in the API reference: {line}")
        if missing:
            return 1
        total = sum(map(len, collect().values()))
        print(f"API reference: all {total} public names documented ({args.check_inventory})")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
