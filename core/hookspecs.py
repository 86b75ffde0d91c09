"""The chipbench hook specifications: the whole extension surface in one file.

A vendor plugin is a module (or object) with ``@hookimpl`` functions named as below. Vendors answer
``vendor_detect`` always; once a vendor is chosen the others are unregistered, so every *device hook*
is a ``firstresult`` call answered by that one vendor. *Lifecycle hooks* are called on every plugin
(vendors and observers such as the built-in reporter) and their results are ignored.

Devices are passed and returned as ``torch.device`` objects, never bare ints (torch reads an int as
CUDA). Callers never use ``pm.hook`` directly: they go through :class:`chipbench.device.Device` and
:class:`chipbench.manager.PluginHost`, which check the returned types.
"""

from typing import Any, Dict, List, Optional

import pluggy

from chipbench import PROJECT_NAME

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --------------------------------------------------------------------------------------------------
# discovery (every vendor answers)
# --------------------------------------------------------------------------------------------------


@hookspec
def vendor_detect() -> "VendorInfo":  # noqa: F821 (records are imported by implementers)
    """Say who this vendor is and whether it can run on this machine.

    Returns a :class:`chipbench.records.VendorInfo`. Must be cheap and must not create a device
    context (it runs for every vendor on every command, ``core vendors`` included); explain an
    unavailable vendor in ``reason`` ("torch 2.1.0 is not our build; our smi tool is not on PATH").

    Called once per vendor plugin, each on its own, so a vendor that raises is reported by name
    and the others keep working.
    """


# --------------------------------------------------------------------------------------------------
# backend and identity
# --------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def device_init_backend(local_rank: int) -> "torch.device":  # noqa: F821
    """Prepare the device that the process of ``local_rank`` uses and return it.

    Sets the current device and applies the vendor's switches (TF32, allocator settings, ...).
    ``local_rank`` counts the processes of this node from 0 and indexes the *visible* devices.
    Called once per process, before any tensor is created. Returns a ``torch.device``.
    """


@hookspec(firstresult=True)
def device_count() -> int:
    """Return how many devices this process can see (1 for the CPU)."""


@hookspec(firstresult=True)
def device_name(index: int) -> str:
    """Return the marketing name of visible device ``index`` ("Acme X1 64G")."""


@hookspec(firstresult=True)
def hardware_id() -> "HardwareId":  # noqa: F821
    """Return a :class:`chipbench.records.HardwareId`: the short label of the hardware in result tables
    ("ACX1") and the tag that selects a case's hardware configs ("X1" -> ``X1x1x8.yaml``)."""


# --------------------------------------------------------------------------------------------------
# synchronisation
# --------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def device_synchronize(device: "torch.device") -> None:  # noqa: F821
    """Block until all work queued on ``device`` has finished. Timers are read only after it.

    Returns None (a no-op on the CPU).
    """


# --------------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def device_memory_query(device: "torch.device") -> "MemoryInfo":  # noqa: F821
    """Return the device-wide memory of ``device`` as a :class:`chipbench.records.MemoryInfo`.

    Device-wide means what the vendor's management tool shows (every process, driver reserve
    included), the figure of the seed's "mem 37.5/64.0" column; ``source`` names where it came from.
    """


@hookspec(firstresult=True)
def device_memory_peak(device: "torch.device") -> int:  # noqa: F821
    """Return this process's allocator peak on ``device`` in bytes since the last reset."""


@hookspec(firstresult=True)
def device_memory_reset_peak(device: "torch.device") -> None:  # noqa: F821
    """Reset the allocator peak that :func:`device_memory_peak` reports. Returns None."""


# --------------------------------------------------------------------------------------------------
# collectives and launch
# --------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def collective_backend() -> str:
    """Return the ``torch.distributed`` backend name for this vendor ("nccl", "gloo", ...)."""


@hookspec(firstresult=True)
def visible_devices_env() -> str:
    """Return the environment variable that restricts which devices a process sees
    ("CUDA_VISIBLE_DEVICES"); an empty string when the vendor has none (the CPU)."""


# --------------------------------------------------------------------------------------------------
# capabilities, environment, monitoring
# --------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def supported_precisions() -> List[str]:
    """Return the training precisions this vendor supports, a subset of
    ``["fp32", "amp", "fp16", "bf16"]``."""


@hookspec(firstresult=True)
def environment_report() -> Dict[str, Any]:
    """Return the hardware and software facts of this machine as a flat JSON-able dict.

    Expected keys where the vendor can tell: ``device_model``, ``device_count``,
    ``device_memory_gib``, ``driver_version``, ``runtime_version``, ``framework``
    (the torch build); vendors may add their own (``bios_version``, ``devices`` list, ...).
    This is the seed's hardware/software section. Must work without creating a device context.
    """


@hookspec(firstresult=True)
def device_sample(device: "torch.device") -> Dict[str, float]:  # noqa: F821
    """Return one monitoring sample of ``device``: any of ``util_percent``, ``power_w``,
    ``temperature_c``, ``memory_used_bytes``; an empty dict when the vendor cannot tell.
    Called periodically from a background thread, so it must be quick and thread-safe."""


# --------------------------------------------------------------------------------------------------
# lifecycle (every plugin; results ignored). on_run_start / on_run_end are called by the `core run`
# process of each node; on_epoch_end by the rank-0 worker.
# --------------------------------------------------------------------------------------------------


@hookspec
def on_run_start(run: Dict[str, Any]) -> None:
    """A run has started. ``run`` holds ``run_dir``, ``case``, ``vendor``, ``config``,
    ``environment``. Called once per run."""


@hookspec
def on_epoch_end(run: Dict[str, Any], epoch: int, metrics: Dict[str, Any]) -> None:
    """Epoch ``epoch`` (from 0) has finished and ``metrics`` holds the figures so far
    (including the evaluation of this epoch). Called once per epoch."""


@hookspec
def on_run_end(run: Dict[str, Any], result: Dict[str, Any]) -> None:
    """A run has ended, finished or failed; ``result`` is what ``result.json`` holds.
    Called once per run, also after a failure."""


DEVICE_HOOKS = (
    "device_init_backend",
    "device_count",
    "device_name",
    "hardware_id",
    "device_synchronize",
    "device_memory_query",
    "device_memory_peak",
    "device_memory_reset_peak",
    "collective_backend",
    "visible_devices_env",
    "supported_precisions",
    "environment_report",
    "device_sample",
)
"""Every hook a vendor plugin must implement besides ``vendor_detect``."""

PRECISIONS = ("fp32", "amp", "fp16", "bf16")


# --------------------------------------------------------------------------------------------------
# optional: host resources (issue 10). A vendor may leave these out; callers then use the default
# the spec names.
# --------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def device_loader_workers(configured: Optional[int], local_world_size: int) -> Optional[int]:
    """Return how many data-loader worker processes each rank starts, and budget the host for it.

    ``configured`` is the config's ``data.num_workers`` (None: "choose for me");
    ``local_world_size`` is the number of ranks on this node. A vendor whose compute runs on the
    host cores (the CPU vendor) splits the cores between its compute threads and the loader
    workers here, so that the two never oversubscribe. Returns None to leave the choice to the
    caller (``configured``, or a default from the core count when it is None). Called once per
    rank, before its loaders are built.
    """
