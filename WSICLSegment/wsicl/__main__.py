"""``python -m wsicl``: the ``wsicl`` command line (as ``python -m wsicl.cli``, which
``torchrun -m`` needs)."""
import sys

from .cli import main

sys.exit(main())
