"""The MetaX vendor (C500, "MXC500"): MetaX's CUDA-compatible torch build, MCCL, mx-smi / pymxsml.

MetaX's PyTorch answers ``torch.cuda`` and takes the device string ``cuda``; its version string
names the build (``2.0.0+mc2.18.0.8`` in the seed, ``2.8.0+metax3.5.3.9`` later), which is how it
is told from NVIDIA's. Collectives are MCCL behind the backend name ``nccl``. Device-wide memory
comes from ``pymxsml`` when importable, else the ``mx-smi`` table, else ``cudaMemGetInfo``.
Nothing here has run on a real C500 yet: the tests simulate one; ``core doctor --vendor metax``
checks a real machine.
"""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from chipbench.hookspecs import hookimpl
from chipbench.host.contract import PRECISION
from chipbench.measure.environment import installed_torch_version
from chipbench.plugins._tools import (
    cuda_like_configure,
    cuda_like_grad_scaler,
    cuda_like_precisions,
    run_tool,
    visible_index,
)
from chipbench.records import HardwareId, MemoryInfo, VendorInfo

if TYPE_CHECKING:
    import torch

NAME = "metax"
PRIORITY = 100
SMI = "mx-smi"
VISIBLE_ENVS = ("MACA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")
METAX_BUILD = re.compile(r"\+(mc|metax)\d", re.IGNORECASE)
MIB = 2**20

_BUS_ID = re.compile(r"\b[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]\b")
_MEMORY = re.compile(r"(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*(MiB|GiB|MB)\b")
_PROCESS_SECTION = re.compile(r"^[|+\s]*process(es)?\b", re.IGNORECASE)
_NOT_NAME = {"on", "off", "n/a", "default"}
SMI_CACHE_S = 1.0
"""mx-smi answers are reused this long, so one monitor sample runs the tool once."""
_smi_cache: Dict[str, Any] = {"time": -1e9, "value": None}
_HEADER = {
    "mx_smi_version": re.compile(r"MX-SMI\s+([\w.\-]+)"),
    "driver_version": re.compile(r"Driver Version:\s*([\w.\-]+)"),
    "maca_version": re.compile(r"MACA Version:\s*([\w.\-]+)"),
    "bios_version": re.compile(r"BIOS Version:\s*([\w.\-]+)"),
}


# --------------------------------------------------------------------------------------------------
# mx-smi and pymxsml readers
# --------------------------------------------------------------------------------------------------


def parse_mx_smi(text: str) -> Dict[str, Any]:
    """Parse the default ``mx-smi`` table by pattern (columns move between mx-smi versions).

    Returns the header versions found and ``devices``: one dict per GPU with ``index``, ``name``,
    ``bus_id`` and, where shown, ``util_percent``, ``temperature_c``, ``power_w``,
    ``memory_used_mib``, ``memory_total_mib``. A device block starts at a line with a PCI bus id;
    parsing stops at a process table.
    """
    result: Dict[str, Any] = {}
    for key, pattern in _HEADER.items():
        match = pattern.search(text)
        if match:
            result[key] = match.group(1)
    devices: List[Dict[str, Any]] = []
    current: Optional[Dict[str, Any]] = None
    for line in text.splitlines():
        if _PROCESS_SECTION.search(line):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        bus = _BUS_ID.search(line)
        if bus:
            first = cells[0].split() if cells else []
            name = [t for t in first[1:] if t.lower() not in _NOT_NAME]
            current = {"index": int(first[0]) if first and first[0].isdigit() else len(devices),
                       "name": " ".join(name) or "MetaX GPU", "bus_id": bus.group(0)}
            devices.append(current)
            cells = cells[1:]
        if current is None:
            continue
        _read_cells(" | ".join(cells).replace(bus.group(0) if bus else "\0", " "), current)
    result["devices"] = devices
    return result


def _read_cells(text: str, device: Dict[str, Any]) -> None:
    memory = _MEMORY.search(text)
    if memory and "memory_used_mib" not in device:
        scale = 1024 if memory.group(3) == "GiB" else 1
        device["memory_used_mib"] = int(float(memory.group(1)) * scale)
        device["memory_total_mib"] = int(float(memory.group(2)) * scale)
        text = text.replace(memory.group(0), " ")
    patterns = (("util_percent", r"\b(\d+(?:\.\d+)?)\s*%"),
                ("temperature_c", r"\b(\d+(?:\.\d+)?)\s*C\b"),
                ("power_w", r"\b(\d+(?:\.\d+)?)\s*W\b"))
    for key, pattern in patterns:
        match = re.search(pattern, text)
        if match and key not in device:
            device[key] = float(match.group(1))


def read_mx_smi() -> Optional[Dict[str, Any]]:
    """Run ``mx-smi`` (no shell, with a timeout) and parse its table; None when unavailable.

    Answers are reused for :data:`SMI_CACHE_S` seconds.
    """
    now = time.monotonic()
    if now - _smi_cache["time"] < SMI_CACHE_S:
        return _smi_cache["value"]
    out = run_tool([SMI], timeout=15.0)
    parsed = parse_mx_smi(out) if out else None
    value = parsed if parsed and parsed["devices"] else None
    _smi_cache.update(time=time.monotonic(), value=value)
    return value


def _pymxsml() -> Any:
    try:
        import pymxsml

        pymxsml.mxSmlInit()
        return pymxsml
    except Exception:
        return None


def read_pymxsml() -> Optional[List[Dict[str, Any]]]:
    """Devices as ``pymxsml`` (MACA's NVML-like binding) reports them; None when unavailable."""
    sml = _pymxsml()
    if sml is None:
        return None
    devices = []
    try:
        for index in range(int(sml.mxSmlGetDeviceCount())):
            memory = sml.mxSmlGetMemoryInfo(index)  # KiB
            name = sml.mxSmlGetDeviceInfo(index).deviceName
            device = {
                "index": index,
                "name": name.decode() if isinstance(name, bytes) else str(name),
                "memory_used_mib": int(memory.vramUse) // 1024,
                "memory_total_mib": int(memory.vramTotal) // 1024,
            }
            try:
                device["util_percent"] = float(
                    sml.mxSmlGetDeviceIpUsage(index, sml.MXSML_USAGE_XCORE))
                device["temperature_c"] = float(
                    sml.mxSmlGetTemperatureInfo(index, sml.MXSML_TEMPERATURE_HOTSPOT)) / 100
            except Exception:
                pass
            devices.append(device)
    except Exception:
        return None
    return devices or None


def _smi_devices() -> Optional[List[Dict[str, Any]]]:
    table = read_mx_smi()
    return table["devices"] if table else None


def _devices() -> List[Dict[str, Any]]:
    """Devices from pymxsml, else from the mx-smi table; empty when neither answers."""
    return read_pymxsml() or _smi_devices() or []


def _physical(device: torch.device) -> int:
    return visible_index(device.index or 0, VISIBLE_ENVS)


# --------------------------------------------------------------------------------------------------
# hooks
# --------------------------------------------------------------------------------------------------


@hookimpl
def vendor_detect() -> VendorInfo:
    version = installed_torch_version()
    if not METAX_BUILD.search(version or ""):
        reasons = ["torch {} is not a MetaX build (+mc… or +metax…)".format(
            version or "(not installed)")]
        if not _has_smi():
            reasons.append("{} not found on PATH".format(SMI))
        if not os.environ.get("MACA_PATH"):
            reasons.append("MACA_PATH unset")
        return VendorInfo(NAME, "cuda", PRIORITY, False, "; ".join(reasons))
    devices = _devices()
    count = len(devices)
    if count == 0:
        import torch

        count = torch.cuda.device_count()
    if count == 0:
        return VendorInfo(NAME, "cuda", PRIORITY, False,
                          "MetaX torch {} sees no GPU (check the driver and {})".format(
                              version, VISIBLE_ENVS[0]))
    return VendorInfo(NAME, "cuda", PRIORITY, True,
                      "{} MetaX GPU(s), torch {}".format(count, version))


@hookimpl
def device_init_backend(local_rank: int) -> torch.device:
    import torch

    if os.environ.get("METAX_USE_TF32", "") == "1":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


@hookimpl
def device_count() -> int:
    import torch

    return torch.cuda.device_count()


@hookimpl
def device_name(index: int) -> str:
    devices = _devices()
    physical = visible_index(index, VISIBLE_ENVS)
    for device in devices:
        if device["index"] == physical:
            return device["name"]
    import torch

    return torch.cuda.get_device_name(index)


@hookimpl
def hardware_id() -> HardwareId:
    match = re.search(r"([A-Z]\d{3,4}[A-Z]?)", device_name(0))
    tag = match.group(1) if match else "C500"
    return HardwareId(label="MX" + tag, config_tag=tag)


@hookimpl
def device_synchronize(device: torch.device) -> None:
    import torch

    torch.cuda.synchronize(device)


@hookimpl
def device_memory_query(device: torch.device) -> MemoryInfo:
    physical = _physical(device)
    for source, reader in (("pymxsml", read_pymxsml), (SMI, _smi_devices)):
        for entry in reader() or []:
            if entry["index"] == physical and "memory_total_mib" in entry:
                return MemoryInfo(entry["memory_used_mib"] * MIB, entry["memory_total_mib"] * MIB,
                                  source=source)
    import torch

    free, total = torch.cuda.mem_get_info(device)
    return MemoryInfo(int(total - free), int(total), source="cudaMemGetInfo")


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
    return "nccl"  # MCCL answers to the backend name nccl in MetaX's torch


@hookimpl
def visible_devices_env() -> str:
    return VISIBLE_ENVS[0]


@hookimpl
def supported_precisions() -> List[str]:
    return cuda_like_precisions(bf16_supported=True)


@hookimpl
def environment_report() -> Dict[str, Any]:
    report: Dict[str, Any] = {}
    table = read_mx_smi() or {}
    devices = read_pymxsml() or table.get("devices") or []
    for key in ("driver_version", "bios_version", "mx_smi_version"):
        if key in table:
            report[key] = table[key]
    if "maca_version" in table:
        report["runtime_version"] = "MACA {}".format(table["maca_version"])
    report["maca_path"] = os.environ.get("MACA_PATH", "")
    if devices:
        report["device_model"] = devices[0]["name"]
        report["device_count"] = len(devices)
        if "memory_total_mib" in devices[0]:
            report["device_memory_gib"] = round(devices[0]["memory_total_mib"] / 1024, 1)
        report["devices"] = devices
    tuning = {k: v for k, v in os.environ.items() if k.startswith(("MCCL_", "MACA_", "METAX_"))}
    if tuning:
        report["env"] = tuning
    return report


@hookimpl
def device_configure(device: torch.device, deterministic: bool, autotune: bool) -> None:
    cuda_like_configure(deterministic, autotune)


@hookimpl
def device_grad_scaler(device: torch.device, precision: str) -> Optional[Any]:
    return cuda_like_grad_scaler()


@hookimpl
def device_sample(device: torch.device) -> Dict[str, float]:
    physical = _physical(device)
    for entry in _devices():
        if entry["index"] == physical:
            sample: Dict[str, float] = {
                k: float(entry[k]) for k in ("util_percent", "power_w", "temperature_c")
                if k in entry}
            if "memory_used_mib" in entry:
                sample["memory_used_bytes"] = float(entry["memory_used_mib"] * MIB)
            return sample
    return {}


def _has_smi() -> bool:
    import shutil

    return shutil.which(SMI) is not None


# The C500's dense peaks in TFLOP/s as MetaX announced them publicly (FP32 vector, TF32/FP16/BF16
# matrix). UNVERIFIED: taken from press coverage of the launch, not checked against a MetaX
# datasheet; correct them here when a datasheet says otherwise.
C500_PEAK_TFLOPS = {"fp32": 36.0, "tf32": 140.0, "fp16": 280.0, "bf16": 280.0}


@hookimpl
def device_peak_flops(device: "torch.device", precision: str) -> Optional[float]:  # noqa: F821
    if "C500" not in device_name(device.index or 0).upper():
        return None
    tf32 = os.environ.get("METAX_USE_TF32", "") == "1"  # device_init_backend's switch
    key = PRECISION[precision].peak if precision in PRECISION else precision
    key = "tf32" if key == "fp32" and tf32 else key
    peak = C500_PEAK_TFLOPS.get(key)
    return None if peak is None else peak * 1e12
