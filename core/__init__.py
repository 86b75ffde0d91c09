"""chipbench: the same AI training benchmark on any accelerator; vendors are pluggy plugins.

The public plugin API is what this module exports (``__all__``): a vendor package writes

    from chipbench import hookimpl, VendorInfo, MemoryInfo, HardwareId

and nothing else of chipbench's internals. ``API_VERSION`` is the version of that contract: the
minor number grows when hooks or records are added (old plugins keep working), the major number
when something a plugin relies on changes. Every hook spec says the API version it appeared in.

Importing this package is cheap: nothing here imports torch.
"""

__version__ = "0.2.0"

API_VERSION = "1.1"
"""Version of the plugin contract (hooks, records, entry-point groups)."""

PROJECT_NAME = "chipbench"
"""pluggy project name: the marker name of :data:`hookimpl` and :data:`hookspec`."""

ENTRY_POINT_GROUP = "chipbench.vendors"
"""Entry-point group through which third-party vendor plugins are found."""

from chipbench.hookspecs import hookimpl, hookspec  # noqa: E402 (needs PROJECT_NAME above)
from chipbench.records import HardwareId, MemoryInfo, VendorInfo  # noqa: E402

__all__ = [
    "API_VERSION",
    "ENTRY_POINT_GROUP",
    "HardwareId",
    "MemoryInfo",
    "PROJECT_NAME",
    "VendorInfo",
    "__version__",
    "hookimpl",
    "hookspec",
]
