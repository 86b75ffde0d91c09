"""The AMD ROCm vendor (Instinct and Radeon GPUs): ROCm's torch, RCCL, amdsmi / amd-smi.

ROCm's PyTorch presents AMD GPUs as device type ``cuda`` and answers ``torch.cuda``; it is told
from NVIDIA's by ``torch.version.hip`` (and a ``+rocm…`` version). Collectives are RCCL behind the
backend name ``nccl``. Device-wide memory and monitoring samples (util, power, temperature) come
from AMD's maintained Python library ``amdsmi`` when importable (ROCm ships it under
``/opt/rocm/share/amd_smi``), else from the ``amd-smi`` command's JSON output, else from torch.

Visible devices: ``HIP_VISIBLE_DEVICES`` (which ROCm's HIP also reads as
``CUDA_VISIBLE_DEVICES``) picks among the GPUs that the lower ROCr runtime exposes, and
``ROCR_VISIBLE_DEVICES`` restricts those first; ROCm's documentation recommends
``ROCR_VISIBLE_DEVICES`` for isolating GPUs of containers and ``HIP_VISIBLE_DEVICES`` inside an
application. chipbench restricts a run's workers through ``HIP_VISIBLE_DEVICES`` and maps a torch
index back to the management tools' index through both. Nothing here has run on a real AMD GPU
yet: the tests simulate one; ``core doctor --vendor rocm`` checks a real machine.
"""

from __future__ import annotations

import importlib
import json
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from chipbench.hookspecs import hookimpl
from chipbench.host.contract import PRECISION
from chipbench.measure.environment import installed_torch_version
from chipbench.plugins._tools import (
    cuda_build_family,
    cuda_like_configure,
    cuda_like_grad_scaler,
    cuda_like_precisions,
    hardware_tag,
    run_tool,
    visible_index,
)
from chipbench.records import HardwareId, MemoryInfo, VendorInfo

if TYPE_CHECKING:
    import torch

NAME = "rocm"
PRIORITY = 50
SMI = "amd-smi"
HIP_ENVS = ("HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")
ROCR_ENV = "ROCR_VISIBLE_DEVICES"
MIB = 2**20
SMI_CACHE_S = 1.0
"""amd-smi answers are reused this long, so one monitor sample runs the tool once."""

_smi_cache: Dict[str, Any] = {}
_amdsmi_lock = threading.Lock()
_amdsmi_state: Dict[str, Any] = {"tried": False, "module": None}


# --------------------------------------------------------------------------------------------------
# amd-smi (JSON) and amdsmi readers; both give devices as dicts of the same keys
# --------------------------------------------------------------------------------------------------


def _number(value: Any) -> Optional[float]:
    """A figure of amd-smi's JSON: ``{"value": 42, "unit": "W"}``, a bare number, or "N/A"."""
    if isinstance(value, dict):
        value = value.get("value")
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip().split()[0])
    except (ValueError, IndexError):
        return None


def _rows(parsed: Any) -> List[Dict[str, Any]]:
    """The per-GPU objects of an amd-smi JSON answer: a list (ROCm 6) or ``{"gpu_data": [...]}``
    (later versions)."""
    if isinstance(parsed, dict):
        parsed = parsed.get("gpu_data", [])
    return [row for row in parsed if isinstance(row, dict)] if isinstance(parsed, list) else []


def _first(section: Any, keys: List[str]) -> Optional[float]:
    if not isinstance(section, dict):
        return None
    for key in keys:
        value = _number(section.get(key))
        if value is not None:
            return value
    return None


def _gpu_rows(text: str) -> List[Tuple[int, Dict[str, Any]]]:
    """``(index, row)`` of each GPU in an ``amd-smi ... --json`` output (its ``gpu`` number, else
    its position); [] where the text is no JSON."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return []
    return [(row["gpu"] if type(row.get("gpu")) is int else position, row)
            for position, row in enumerate(_rows(parsed))]


def parse_amd_smi_metric(text: str) -> List[Dict[str, Any]]:
    """Parse ``amd-smi metric --json``: one dict per GPU with ``index`` and, where reported,
    ``util_percent``, ``power_w``, ``temperature_c``, ``memory_used_mib``, ``memory_total_mib``
    (amd-smi's "MB" are MiB: an MI300X shows 196592 of them)."""
    devices = []
    for index, row in _gpu_rows(text):
        device: Dict[str, Any] = {"index": index}
        figures = (
            ("util_percent", row.get("usage"), ["gfx_activity"]),
            ("power_w", row.get("power"), ["socket_power", "current_socket_power",
                                           "average_socket_power"]),
            ("temperature_c", row.get("temperature"), ["hotspot", "edge", "junction"]),
            ("memory_used_mib", row.get("mem_usage"), ["used_vram"]),
            ("memory_total_mib", row.get("mem_usage"), ["total_vram"]),
        )
        for key, section, names in figures:
            value = _first(section, names)
            if value is not None:
                device[key] = int(value) if key.startswith("memory") else value
        devices.append(device)
    return devices


def parse_amd_smi_static(text: str) -> List[Dict[str, Any]]:
    """Parse ``amd-smi static --json``: one dict per GPU with ``index``, ``name`` (the ASIC's
    market name) and, where reported, ``driver_version`` and ``memory_total_mib``."""
    devices = []
    for index, row in _gpu_rows(text):
        asic = row.get("asic")
        if not isinstance(asic, dict):
            asic = {}
        device: Dict[str, Any] = {"index": index,
                                  "name": str(asic.get("market_name") or "AMD GPU").strip()}
        driver = row.get("driver")
        if isinstance(driver, dict) and driver.get("version") not in (None, "N/A"):
            device["driver_version"] = str(driver["version"])
        vram = row.get("vram")
        size = _number(vram.get("size")) if isinstance(vram, dict) else None
        if size is not None:
            device["memory_total_mib"] = int(size)
        devices.append(device)
    return devices


def _smi(command: str, parse: Any) -> List[Dict[str, Any]]:
    """``amd-smi <command> --json`` parsed, reused for :data:`SMI_CACHE_S` seconds; [] when the
    tool is missing, fails or prints no GPU."""
    now = time.monotonic()
    cached = _smi_cache.get(command)
    if cached is not None and now - cached[0] < SMI_CACHE_S:
        return cached[1]
    out = run_tool([SMI, command, "--json"], timeout=15.0)
    devices = parse(out) if out else []
    _smi_cache[command] = (time.monotonic(), devices)
    return devices


def read_amd_smi() -> List[Dict[str, Any]]:
    """Devices from ``amd-smi metric --json`` (memory and samples), with the names of
    ``amd-smi static --json``; [] when the tool does not answer."""
    metric = _smi("metric", parse_amd_smi_metric)
    names = {d["index"]: d for d in _smi("static", parse_amd_smi_static)}
    for device in metric:
        static = names.get(device["index"], {})
        device.setdefault("name", static.get("name", "AMD GPU"))
    return metric


def amdsmi() -> Optional[Any]:
    """AMD's ``amdsmi`` module, initialised once per process; None where it is not importable or
    does not start (no driver)."""
    with _amdsmi_lock:
        if not _amdsmi_state["tried"]:
            _amdsmi_state["tried"] = True
            try:
                module = importlib.import_module("amdsmi")
                module.amdsmi_init()
            except Exception:  # not installed, or AmdSmiLibraryException: no driver
                module = None
            _amdsmi_state["module"] = module
        return _amdsmi_state["module"]


def _call(function: Any, *args: Any) -> Any:
    try:
        return function(*args)
    except Exception:  # AmdSmiLibraryException (not supported on this GPU): unknown figure
        return None


def read_amdsmi(only: Optional[int] = None) -> Optional[List[Dict[str, Any]]]:
    """Devices as ``amdsmi`` reports them (all, or the one of index ``only``), in the keys of
    :func:`parse_amd_smi_metric` plus ``name``; None where amdsmi cannot be used."""
    lib = amdsmi()
    if lib is None:
        return None
    handles = _call(lib.amdsmi_get_processor_handles)
    if not handles:
        return None
    devices = []
    for index, handle in enumerate(handles):
        if only is not None and index != only:
            continue
        asic = _call(lib.amdsmi_get_gpu_asic_info, handle) or {}
        device: Dict[str, Any] = {"index": index,
                                  "name": str(asic.get("market_name") or "AMD GPU").strip()}
        vram = _call(lib.amdsmi_get_gpu_vram_usage, handle) or {}  # MB (MiB), per AMD's docs
        for key, name in (("memory_used_mib", "vram_used"), ("memory_total_mib", "vram_total")):
            value = _number(vram.get(name))
            if value is not None:
                device[key] = int(value)
        activity = _number((_call(lib.amdsmi_get_gpu_activity, handle) or {}).get("gfx_activity"))
        if activity is not None:
            device["util_percent"] = activity
        power = _first(_call(lib.amdsmi_get_power_info, handle),
                       ["current_socket_power", "average_socket_power"])  # W
        if power is not None:
            device["power_w"] = power
        kinds = getattr(lib, "AmdSmiTemperatureType", None)
        metric = getattr(getattr(lib, "AmdSmiTemperatureMetric", None), "CURRENT", None)
        for sensor in ("HOTSPOT", "EDGE"):
            kind = getattr(kinds, sensor, None)
            value = None if kind is None else _number(
                _call(lib.amdsmi_get_temp_metric, handle, kind, metric))
            if value is not None:
                device["temperature_c"] = value
                break
        devices.append(device)
    return devices


def _devices(only: Optional[int] = None) -> List[Dict[str, Any]]:
    """Devices from amdsmi, else amd-smi; empty when neither answers."""
    return read_amdsmi(only) or read_amd_smi()


def physical_index(local_index: int) -> int:
    """The management tools' index of torch device ``local_index``: through
    ``HIP_VISIBLE_DEVICES`` (or ``CUDA_VISIBLE_DEVICES``), then ``ROCR_VISIBLE_DEVICES``, which
    selects the GPUs that HIP then indexes."""
    return visible_index(visible_index(local_index, HIP_ENVS), (ROCR_ENV,))


def _entry(device: torch.device) -> Dict[str, Any]:
    physical = physical_index(device.index or 0)
    for entry in _devices(physical):
        if entry["index"] == physical:
            return entry
    return {}


# --------------------------------------------------------------------------------------------------
# hooks
# --------------------------------------------------------------------------------------------------


@hookimpl
def vendor_detect() -> VendorInfo:
    version = installed_torch_version()
    if not version:
        return VendorInfo(NAME, "cuda", PRIORITY, False, "torch is not installed")
    import torch

    hip = getattr(torch.version, "hip", None)
    if cuda_build_family(version, hip, None) != "rocm":
        return VendorInfo(NAME, "cuda", PRIORITY, False,
                          "torch {} is not a ROCm build (torch.version.hip unset{})".format(
                              version, "" if _has_smi() else "; amd-smi not on PATH"))
    count = torch.cuda.device_count()
    if count == 0:
        return VendorInfo(NAME, "cuda", PRIORITY, False,
                          "ROCm torch {} sees no GPU (check the amdgpu driver, access to "
                          "/dev/kfd, {} and {})".format(version, HIP_ENVS[0], ROCR_ENV))
    return VendorInfo(NAME, "cuda", PRIORITY, True, "{} AMD GPU(s), torch {}{}".format(
        count, version, ", HIP {}".format(hip) if hip else ""))


def _has_smi() -> bool:
    import shutil

    return shutil.which(SMI) is not None


@hookimpl
def device_init_backend(local_rank: int) -> torch.device:
    import torch

    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


@hookimpl
def device_count() -> int:
    import torch

    return torch.cuda.device_count()


@hookimpl
def device_name(index: int) -> str:
    import torch

    entry = _entry(torch.device("cuda", index))
    if entry.get("name") and entry["name"] != "AMD GPU":
        return entry["name"]
    return torch.cuda.get_device_name(index)


@hookimpl
def hardware_id() -> HardwareId:
    tag = hardware_tag(device_name(0), "AMDGPU")
    return HardwareId(label=tag, config_tag=tag)


@hookimpl
def device_synchronize(device: torch.device) -> None:
    import torch

    torch.cuda.synchronize(device)


@hookimpl
def device_memory_query(device: torch.device) -> MemoryInfo:
    physical = physical_index(device.index or 0)
    for source, reader in (("amdsmi", lambda: read_amdsmi(physical)), (SMI, read_amd_smi)):
        for entry in reader() or []:
            if entry["index"] == physical and "memory_total_mib" in entry \
                    and "memory_used_mib" in entry:
                total = entry["memory_total_mib"] * MIB
                return MemoryInfo(min(entry["memory_used_mib"] * MIB, total), total, source=source)
    import torch

    free, total = torch.cuda.mem_get_info(device)
    return MemoryInfo(int(total - free), int(total), source="hipMemGetInfo")


@hookimpl
def device_memory_peak(device: torch.device) -> int:
    import torch

    return int(torch.cuda.max_memory_reserved(device))


@hookimpl
def device_memory_reset_peak(device: torch.device) -> None:
    import torch

    torch.cuda.reset_peak_memory_stats(device)


@hookimpl
def collective_backend() -> str:
    return "nccl"  # RCCL answers to the backend name nccl in ROCm's torch


@hookimpl
def visible_devices_env() -> str:
    return HIP_ENVS[0]


@hookimpl
def supported_precisions() -> List[str]:
    import torch

    return cuda_like_precisions(bool(torch.cuda.is_bf16_supported()))


@hookimpl
def environment_report() -> Dict[str, Any]:
    import torch

    report: Dict[str, Any] = {}
    hip = getattr(torch.version, "hip", None)
    if hip:
        report["runtime_version"] = "HIP {}".format(hip)
    devices = read_amdsmi()
    source = "amdsmi"
    static = _smi("static", parse_amd_smi_static)
    if not devices:
        devices, source = read_amd_smi() or static, SMI
    if devices:
        report["device_model"] = devices[0]["name"]
        report["device_count"] = len(devices)
        if "memory_total_mib" in devices[0]:
            report["device_memory_gib"] = round(devices[0]["memory_total_mib"] / 1024, 1)
        report["devices"] = devices
        report["monitor_source"] = source
    drivers = [d["driver_version"] for d in static if "driver_version" in d]
    if drivers:
        report["driver_version"] = drivers[0]
    elif not devices and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        report.update({"device_model": props.name, "device_count": torch.cuda.device_count(),
                       "device_memory_gib": round(props.total_memory / 2**30, 1)})
    tuning = {k: v for k, v in os.environ.items()
              if k.startswith(("HIP_", "ROCR_", "HSA_", "NCCL_", "RCCL_", "MIOPEN_"))}
    if tuning:
        report["env"] = tuning
    return report


@hookimpl
def device_configure(device: torch.device, deterministic: bool, autotune: bool) -> None:
    cuda_like_configure(deterministic, autotune)  # MIOpen reads cudnn.benchmark on ROCm


@hookimpl
def device_grad_scaler(device: torch.device, precision: str) -> Optional[Any]:
    return cuda_like_grad_scaler()


@hookimpl
def device_sample(device: torch.device) -> Dict[str, float]:
    entry = _entry(device)
    sample: Dict[str, float] = {k: float(entry[k]) for k in ("util_percent", "power_w",
                                                             "temperature_c") if k in entry}
    if "memory_used_mib" in entry:
        sample["memory_used_bytes"] = float(entry["memory_used_mib"] * MIB)
    return sample


# Dense peaks in TFLOP/s (no structured sparsity) as AMD's published Instinct datasheets give
# them: "fp32" the FP32 matrix-core figure (rocBLAS and MIOpen run fp32 GEMMs and convolutions on
# the CDNA matrix cores; TF32 is not used by torch's defaults on ROCm), "fp16"/"bf16" the matrix
# figures. Quoted from AMD's datasheets as remembered, not re-read for this table: correct them
# here when a datasheet says otherwise. MI250X and MI250 share a marketing name on some ROCm
# versions ("AMD Instinct MI250X / MI250"): the longer, first entry then wins.
PEAK_TFLOPS = (
    ("MI325X", {"fp32": 163.4, "fp16": 1307.4, "bf16": 1307.4}),
    ("MI300X", {"fp32": 163.4, "fp16": 1307.4, "bf16": 1307.4}),
    ("MI250X", {"fp32": 95.7, "fp16": 383.0, "bf16": 383.0}),
    ("MI250", {"fp32": 90.5, "fp16": 362.1, "bf16": 362.1}),
    ("MI210", {"fp32": 45.3, "fp16": 181.0, "bf16": 181.0}),
)


def peak_tflops(name: str, precision: str) -> Optional[float]:
    """The table's dense peak of the part called ``name`` for ``precision``; None if unknown."""
    tag = hardware_tag(name, "").upper()
    for part, figures in PEAK_TFLOPS:
        if tag == part or (not tag and part in name.upper()):
            return figures.get(PRECISION[precision].peak if precision in PRECISION else precision)
    return None


@hookimpl
def device_peak_flops(device: "torch.device", precision: str) -> Optional[float]:  # noqa: F821
    peak = peak_tflops(device_name(device.index or 0), precision)
    return None if peak is None else peak * 1e12
