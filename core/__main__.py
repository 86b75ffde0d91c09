"""``python -m chipbench`` runs the ``core`` command (also installed as ``chipbench``)."""

import sys

from chipbench.cli import main

sys.exit(main())
