"""The API reference the docs build generates covers every public name of pyro_aevb.

The pages are generated here exactly as ``docs/conf.py`` does at build time; the package is
walked independently of the generator. (``make docs`` additionally checks the built site's
object inventory, and builds with warnings as errors, so a name whose docstring cannot be
imported or rendered fails there.)
"""

import importlib
import importlib.util
import pkgutil
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

import pyro_aevb

DOCS = Path(__file__).resolve().parents[2] / "docs"
DIRECTIVE = re.compile(
    r"^\.\. auto(?:class|exception|function|data):: (\S+)$"
    r"|^\.\. py:data:: (\S+)\n   :module: (\S+)$",
    re.M,
)
ROW = re.compile(r"^   \* - :py:(?:obj|mod):`(\S+) <(\S+)>`$", re.M)  # name, documented at


def _gen_api():
    spec = importlib.util.spec_from_file_location("docs_gen_api", DOCS / "gen_api.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["docs_gen_api"] = module
    spec.loader.exec_module(module)
    return module


def _resolve(dotted):
    try:
        return importlib.import_module(dotted)
    except ImportError:
        module, _, name = dotted.rpartition(".")
        return getattr(importlib.import_module(module), name)


def _public_names():
    """(module, name) for every name in the ``__all__`` of every public module."""
    modules = [pyro_aevb] + [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(pyro_aevb.__path__, prefix="pyro_aevb.")
        if not any(part.startswith("_") for part in info.name.split("."))
    ]
    return [(m.__name__, n) for m in modules for n in getattr(m, "__all__", [])]


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    out = tmp_path_factory.mktemp("api")
    _gen_api().write_api(out)
    return {p.stem: p.read_text() for p in out.glob("*.rst")}


def test_every_public_module_has_a_page(pages):
    modules = {m for m, _ in _public_names()} | {"pyro_aevb", "pyro_aevb.cli"}
    for module in modules:
        assert module in pages, module
        assert f".. automodule:: {module}" in pages[module]
    assert "index" in pages
    assert all(f"   {m}" in pages["index"] for m in modules)


def test_every_public_name_is_documented_once_and_listed_where_exported(pages):
    documented = Counter(
        auto or f"{module}.{name}"
        for text in pages.values()
        for auto, name, module in DIRECTIVE.findall(text)
    )
    assert documented, "no API directives generated"
    duplicates = [t for t, n in documented.items() if n > 1]
    assert not duplicates
    names = _public_names()
    assert len(names) > 100
    for module, name in names:
        obj = getattr(importlib.import_module(module), name)
        rows = [t for n, t in ROW.findall(pages[module]) if n == name]
        assert rows, f"{module}.{name} is not in the table of {module}"
        target = rows[0]
        assert _resolve(target) is obj, f"{module}.{name} links to {target}, another object"
        if not isinstance(obj, type(pyro_aevb)):
            assert target in documented, f"{module}.{name}: {target} is not documented"


def test_the_top_level_names_are_all_there(pages):
    listed = {n for n, _ in ROW.findall(pages["pyro_aevb"])}
    assert set(pyro_aevb.__all__) <= listed
