"""The chipbench hook specifications: the whole extension surface in one file.

A vendor plugin is a module (or object) with ``@hookimpl`` functions named as below. Vendors answer
``vendor_detect`` always; once a vendor is chosen the others are unregistered, so every *device hook*
is a ``firstresult`` call answered by that one vendor. *Lifecycle hooks* are called on every plugin
(vendors and observers such as the built-in reporter) and their results are ignored.

Devices are passed and returned as ``torch.device`` objects, never bare ints (torch reads an int as
CUDA). Callers never use ``pm.hook`` directly: they go through :class:`chipbench.host.device.Device` and
:class:`chipbench.host.manager.PluginHost`, which check the returned types.

Implementations name their arguments exactly as the specs below do, and may take a subset of them.
Each spec says the API version (:data:`chipbench.API_VERSION`) it appeared in; hooks marked
*optional* may be left out, and chipbench then applies the documented default, so a plugin written
for an older API version keeps working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional

import pluggy

from chipbench import PROJECT_NAME

if TYPE_CHECKING:
    import torch

    from chipbench.records import HardwareId, MemoryInfo, VendorInfo

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --------------------------------------------------------------------------------------------------
# discovery (every vendor answers)
# --------------------------------------------------------------------------------------------------


@hookspec
def vendor_detect() -> VendorInfo:
    """Say who this vendor is and whether it can run on this machine.

    Returns a :class:`chipbench.records.VendorInfo`. Must be cheap and must not create a device
    context (it runs for every vendor on every command, ``core vendors`` included); explain an
    unavailable vendor in ``reason`` ("torch 2.1.0 is not our build; our smi tool is not on PATH").

    Called once per vendor plugin, each on its own, so a vendor that raises is reported by name
    and the others keep working.

    .. versionadded:: 1.0
    """


# --------------------------------------------------------------------------------------------------
# backend and identity
# --------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def device_init_backend(local_rank: int) -> torch.device:
    """Prepare the device that the process of ``local_rank`` uses and return it.

    Sets the current device and applies the vendor's switches (TF32, allocator settings, ...).
    ``local_rank`` counts the processes of this node from 0 and indexes the *visible* devices.
    Called once per process, before any tensor is created. Returns a ``torch.device``.

    .. versionadded:: 1.0
    """


@hookspec(firstresult=True)
def device_count() -> int:
    """Return how many devices this process can see (1 for the CPU).

    .. versionadded:: 1.0
    """


@hookspec(firstresult=True)
def device_name(index: int) -> str:
    """Return the marketing name of visible device ``index`` ("Acme X1 64G").

    .. versionadded:: 1.0
    """


@hookspec(firstresult=True)
def hardware_id() -> HardwareId:
    """Return a :class:`chipbench.records.HardwareId`: the short label of the hardware in result tables
    ("ACX1") and the tag that selects a case's hardware configs ("X1" -> ``X1x1x8.yaml``).

    .. versionadded:: 1.0
    """


# --------------------------------------------------------------------------------------------------
# synchronisation
# --------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def device_synchronize(device: torch.device) -> None:
    """Block until all work queued on ``device`` has finished. Timers are read only after it.

    Returns None (a no-op on the CPU).

    .. versionadded:: 1.0
    """


# --------------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def device_memory_query(device: torch.device) -> MemoryInfo:
    """Return the device-wide memory of ``device`` as a :class:`chipbench.records.MemoryInfo`.

    Device-wide means what the vendor's management tool shows (every process, driver reserve
    included), the figure of the seed's "mem 37.5/64.0" column; ``source`` names where it came from.

    .. versionadded:: 1.0
    """


@hookspec(firstresult=True)
def device_memory_peak(device: torch.device) -> int:
    """Return this process's allocator peak on ``device`` in bytes since the last reset.

    .. versionadded:: 1.0
    """


@hookspec(firstresult=True)
def device_memory_reset_peak(device: torch.device) -> None:
    """Reset the allocator peak that :func:`device_memory_peak` reports. Returns None.

    .. versionadded:: 1.0
    """


# --------------------------------------------------------------------------------------------------
# collectives and launch
# --------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def collective_backend() -> str:
    """Return the ``torch.distributed`` backend name for this vendor ("nccl", "gloo", ...).

    .. versionadded:: 1.0
    """


@hookspec(firstresult=True)
def visible_devices_env() -> str:
    """Return the environment variable that restricts which devices a process sees
    ("CUDA_VISIBLE_DEVICES"); an empty string when the vendor has none (the CPU).

    .. versionadded:: 1.0
    """


# --------------------------------------------------------------------------------------------------
# capabilities, environment, monitoring
# --------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def supported_precisions() -> List[str]:
    """Return the training precisions this vendor supports, a subset of
    ``["fp32", "amp", "fp16", "bf16"]``.

    .. versionadded:: 1.0
    """


@hookspec(firstresult=True)
def environment_report() -> Dict[str, Any]:
    """Return the hardware and software facts of this machine as a flat JSON-able dict.

    Expected keys where the vendor can tell: ``device_model``, ``device_count``,
    ``device_memory_gib``, ``driver_version``, ``runtime_version``, ``framework``
    (the torch build); vendors may add their own (``bios_version``, ``devices`` list, ...).
    This is the seed's hardware/software section. Must work without creating a device context.

    .. versionadded:: 1.0
    """


@hookspec(firstresult=True)
def device_sample(device: torch.device) -> Dict[str, float]:
    """Return one monitoring sample of ``device``: any of ``util_percent``, ``power_w``,
    ``temperature_c``, ``memory_used_bytes``; an empty dict when the vendor cannot tell.
    Called periodically from a background thread, so it must be quick and thread-safe.

    .. versionadded:: 1.0
    """


# --------------------------------------------------------------------------------------------------
# run switches (optional, API 1.1). A vendor may leave them out: chipbench then does what is said
# under "default", which is vendor-neutral torch.
# --------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def device_configure(device: torch.device, deterministic: bool, autotune: bool) -> None:
    """Apply the run's switches to the vendor's libraries, after :func:`device_init_backend`.

    ``deterministic``: the run asked for reproducible kernels (chipbench has already called
    ``torch.use_deterministic_algorithms``); set what the vendor's libraries need for it (a
    workspace setting, disabling kernel autotuning, ...). ``autotune``: the run allows the vendor
    to pick the fastest kernels by timing them (``train.autotune``); ignored when ``deterministic``.
    Called once per process, before the model is built. Returns None.

    Default when no vendor implements it: nothing beyond ``torch.use_deterministic_algorithms``.

    .. versionadded:: 1.1
    """


@hookspec(firstresult=True)
def device_grad_scaler(device: torch.device, precision: str) -> Optional[Any]:
    """Return the dynamic loss scaler for training in ``precision`` on ``device``.

    Called only for precisions that need loss scaling (``amp``, ``fp16``). Return an object with
    the interface of ``torch.amp.GradScaler`` (``scale``, ``step``, ``update``, ``unscale_``,
    ``state_dict``, ``load_state_dict``), or None to take the default.

    Default when no vendor answers: ``torch.amp.GradScaler(device.type)`` where torch has it
    (torch 2.3 and later); on older torch the run stops with an error asking for fp32 or bf16.

    .. versionadded:: 1.1
    """


# --------------------------------------------------------------------------------------------------
# lifecycle (every plugin; results ignored). on_run_start / on_run_end are called by the `core run`
# process of each node; on_epoch_end by the rank-0 worker.
# --------------------------------------------------------------------------------------------------


@hookspec
def on_run_start(run: Dict[str, Any]) -> None:
    """A run has started. ``run`` holds ``run_dir``, ``case``, ``vendor``, ``config``,
    ``environment``. Called once per run.

    .. versionadded:: 1.0
    """


@hookspec
def on_epoch_end(run: Dict[str, Any], epoch: int, metrics: Dict[str, Any]) -> None:
    """Epoch ``epoch`` (from 0) has finished and ``metrics`` holds the figures so far
    (including the evaluation of this epoch). Called once per epoch.

    .. versionadded:: 1.0
    """


@hookspec
def on_run_end(run: Dict[str, Any], result: Dict[str, Any]) -> None:
    """A run has ended, finished or failed; ``result`` is what ``result.json`` holds.
    Called once per run, also after a failure.

    .. versionadded:: 1.0
    """


# What each hook must answer, which hooks are required and what chipbench does without the optional
# ones: the rules in chipbench.host.contract, the one definition that runs and the conformance kit share.
from chipbench.host.contract import (  # noqa: E402, F401 - re-exported: the public names of the contract
    DEVICE_HOOKS,
    LIFECYCLE_HOOKS,
    OPTIONAL_HOOKS,
    PRECISIONS,
    SAMPLE_RANGES,
    sample_problem,
)

# --------------------------------------------------------------------------------------------------
# configs shipped by plugins (optional; every plugin answers; the answers are collected). Only the
# chosen vendor is registered during a run, so a vendor's configs apply to its own runs.
# --------------------------------------------------------------------------------------------------


@hookspec
def case_config_dirs(case_name: str) -> List[str]:
    """Return folders holding hardware/topology configs that this plugin ships for ``case_name``.

    Optional. A folder holds files named like the case's own configs, ``<config_tag>x<N>x<M>.yaml``
    (``F1x1x8.yaml``), each a partial YAML layer over the case's ``defaults.yaml``. They are found
    exactly like the case's built-in ones (``--config NAME`` and the automatic choice from the
    hardware tag and topology), searched after the case's own folder. Return ``[]`` for a case
    you ship nothing for. Called once per run on every registered plugin. Optional: the
    default is no folder.

    .. versionadded:: 1.1
    """


# --------------------------------------------------------------------------------------------------
# performance facts and host resources (optional: a vendor may leave these out; callers then use
# the default each spec names)
# --------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def device_peak_flops(device: torch.device, precision: str) -> Optional[float]:
    """Return the peak FLOP/s of one device ``device`` when training in ``precision`` (one of
    :data:`PRECISIONS`), or None when the vendor cannot tell.

    Dense figures (no structured sparsity) of the units the precision runs on: tensor/matrix
    units where torch uses them (``fp32`` may mean TF32 where the vendor's switches turn it on;
    say so in the plugin). The MFU of a run is its achieved FLOP/s over this peak times the
    number of devices. Called once per run by the rank-0 worker, after ``device_init_backend``;
    it may take a few seconds (a measured peak). Optional: the default is None (no MFU). A value
    outside 1e6-1e18 FLOP/s is refused as the vendor's error (the run then records no MFU).

    .. versionadded:: 1.1
    """


@hookspec(firstresult=True)
def device_loader_workers(configured: Optional[int], local_world_size: int) -> Optional[int]:
    """Return how many data-loader worker processes each rank starts, and budget the host for it.

    ``configured`` is the config's ``data.num_workers`` (None: "choose for me");
    ``local_world_size`` is the number of ranks on this node. A vendor whose compute runs on the
    host cores (the CPU vendor) splits the cores between its compute threads and the loader
    workers here, so that the two never oversubscribe. Returns None to leave the choice to the
    caller (``configured``, or a default from the core count when it is None). Called once per
    rank, before its loaders are built. Optional: the default is None.

    .. versionadded:: 1.1
    """
