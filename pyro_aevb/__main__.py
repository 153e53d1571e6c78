"""``python -m pyro_aevb ...``: the ``pyro-aevb`` command line (:mod:`pyro_aevb.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
