"""``python -m core`` runs the ``core`` command."""

import sys

from core.cli import main

sys.exit(main())
