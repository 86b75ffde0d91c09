"""``python -m chipbench`` runs the ``core`` command (also installed as ``chipbench``)."""

from chipbench.cli import console_main

console_main()
