"""Import a script of ``benchmarks/`` as a module (the scripts are not a package)."""

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).parents[1] / "benchmarks"


def load_script(name: str):
    """``benchmarks/<name>.py`` as a module (its folder on ``sys.path`` for its imports)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
