"""Sphinx configuration of the pyro-aevb documentation (see docs/README.md).

Every build regenerates, inside this folder and ignored by git:

* ``api/``: the API reference, one page per public module, from the package (``gen_api.py``);
* ``tutorials/``: copies of the stored notebooks ``tutorials/*.ipynb``, rendered with their
  stored outputs (myst-nb with execution off: the docs build never runs a notebook);
* ``_generated/``: snippets included by the pages (the list of benchmark result files).
"""

import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(REPO))  # document this checkout's package, not an installed one
sys.path.insert(0, str(DOCS))

import gen_api  # noqa: E402

import pyro_aevb  # noqa: E402

project = "pyro-aevb"
author = "the pyro-aevb authors"
copyright = "the pyro-aevb authors"
release = version = pyro_aevb.__version__

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
exclude_patterns = ["_build", "_generated", "README.md", "**.ipynb_checkpoints"]
suppress_warnings = []

# -- generated sources ---------------------------------------------------------------------


def _sync_tree(sources, dest: Path) -> None:
    """Make ``dest`` hold exactly copies of ``sources`` (mtimes kept: incremental builds)."""
    dest.mkdir(parents=True, exist_ok=True)
    names = {p.name for p in sources}
    for old in dest.iterdir():
        if old.name not in names:
            old.unlink()
    for src in sources:
        target = dest / src.name
        if not target.exists() or target.read_bytes() != src.read_bytes():
            shutil.copy2(src, target)


gen_api.write_api(DOCS / "api")
_sync_tree(sorted((REPO / "tutorials").glob("[0-9][0-9]_*.ipynb")), DOCS / "tutorials")

_results = sorted(
    p
    for p in (REPO / "benchmarks" / "results").rglob("*")
    if p.is_file() and p.suffix in {".json", ".txt"} and "runs" not in p.parts
)
(DOCS / "_generated").mkdir(exist_ok=True)
_listing = "".join(
    f"* {{download}}`{p.relative_to(REPO)} <../{p.relative_to(REPO)}>`\n" for p in _results
)
if not (DOCS / "_generated" / "result_files.md").exists() or (
    (DOCS / "_generated" / "result_files.md").read_text() != _listing
):
    (DOCS / "_generated" / "result_files.md").write_text(_listing)

# -- notebooks and Markdown -------------------------------------------------------------------

nb_execution_mode = "off"  # render the outputs stored by `make tutorials`; never execute
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

# -- API reference --------------------------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_param = False  # types as text: "path" in a type is no cross-reference
napoleon_use_ivar = True  # "Attributes" as fields: no second description of an attribute
autodoc_inherit_docstrings = False  # document this package's docstrings, not torch's


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
    """NamedTuple fields ("Alias for field number 0") are described by the Attributes section."""
    if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_namedtuple_fields)


# -- HTML -------------------------------------------------------------------------------------

html_theme = "furo"
html_title = f"pyro-aevb {release}"
html_static_path = []
html_last_updated_fmt = None
html_copy_source = False
