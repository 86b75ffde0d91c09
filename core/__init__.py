"""chipbench core: device hooks, plugin manager, device facade, config, launcher, metrics, report, CLI.

Importing this package is cheap: nothing here imports torch at import time.
"""

__version__ = "0.1.0"

PROJECT_NAME = "chipbench"
ENTRY_POINT_GROUP = "chipbench.vendors"
