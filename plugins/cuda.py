"""The NVIDIA CUDA vendor: torch.cuda devices, NCCL, memory from cudaMemGetInfo, NVML samples.

Declines when the installed torch is a MetaX build (which also answers ``torch.cuda``) or ROCm's
(``torch.version.hip`` set; the rocm vendor takes it). Monitoring samples and the environment come
from NVIDIA's maintained binding ``pynvml`` (package ``nvidia-ml-py``, the extra
``chipbench[nvidia]``) when it is importable, in-process; else from ``nvidia-smi``'s CSV output.
"""

from __future__ import annotations

import importlib
import re
import threading
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from chipbench.hookspecs import hookimpl
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

NAME = "cuda"
PRIORITY = 50
SMI = "nvidia-smi"
SAMPLE_FIELDS = ("utilization.gpu", "power.draw", "temperature.gpu", "memory.used")


@hookimpl
def vendor_detect() -> VendorInfo:
    version = installed_torch_version()
    if not version:
        return VendorInfo(NAME, "cuda", PRIORITY, False, "torch is not installed")
    if cuda_build_family(version, None, None) == "metax":
        return VendorInfo(NAME, "cuda", PRIORITY, False,
                          "torch {} is not an NVIDIA build (MetaX's: the metax vendor takes it)"
                          .format(version))
    import torch

    family = cuda_build_family(version, getattr(torch.version, "hip", None), torch.version.cuda)
    if family == "rocm":
        return VendorInfo(NAME, "cuda", PRIORITY, False,
                          "torch {} is not an NVIDIA build (ROCm's: the rocm vendor takes it)"
                          .format(version))
    if family != "nvidia":
        return VendorInfo(NAME, "cuda", PRIORITY, False,
                          "torch {} was built without CUDA".format(version))
    count = torch.cuda.device_count()
    if count == 0:
        return VendorInfo(NAME, "cuda", PRIORITY, False,
                          "no NVIDIA GPU visible (torch {}, CUDA {})".format(
                              version, torch.version.cuda))
    return VendorInfo(NAME, "cuda", PRIORITY, True,
                      "{} NVIDIA GPU(s), torch {}".format(count, version))


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

    return torch.cuda.get_device_name(index)


@hookimpl
def hardware_id() -> HardwareId:
    tag = hardware_tag(device_name(0), "GPU")
    return HardwareId(label=tag, config_tag=tag)


@hookimpl
def device_synchronize(device: torch.device) -> None:
    import torch

    torch.cuda.synchronize(device)


@hookimpl
def device_memory_query(device: torch.device) -> MemoryInfo:
    import torch

    free, total = torch.cuda.mem_get_info(device)
    return MemoryInfo(used_bytes=int(total - free), total_bytes=int(total),
                      source="cudaMemGetInfo")


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
    return "nccl"


@hookimpl
def visible_devices_env() -> str:
    return "CUDA_VISIBLE_DEVICES"


@hookimpl
def supported_precisions() -> List[str]:
    import torch

    return cuda_like_precisions(bool(torch.cuda.is_bf16_supported()))


@hookimpl
def environment_report() -> Dict[str, Any]:
    import torch

    report: Dict[str, Any] = {}
    report["runtime_version"] = "CUDA {}".format(torch.version.cuda)
    if torch.backends.cudnn.is_available():
        report["cudnn_version"] = torch.backends.cudnn.version()
    devices = read_nvml_devices()
    rows = [] if devices else _smi_query(["name", "memory.total", "driver_version"])
    if devices:
        report.update({
            "device_model": devices[0]["name"],
            "device_count": len(devices),
            "device_memory_gib": round(devices[0]["memory_total_bytes"] / 2**30, 1),
            "monitor_source": "pynvml",
        })
        driver = nvml_call("nvmlSystemGetDriverVersion")
        if driver is not None:
            report["driver_version"] = _text(driver)
    elif rows:
        report.update({
            "device_model": rows[0][0],
            "device_count": len(rows),
            "device_memory_gib": round(float(rows[0][1]) / 1024, 1),
            "driver_version": rows[0][2],
            "monitor_source": SMI,
        })
    elif torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        report.update({"device_model": props.name, "device_count": torch.cuda.device_count(),
                       "device_memory_gib": round(props.total_memory / 2**30, 1)})
    return report


@hookimpl
def device_configure(device: torch.device, deterministic: bool, autotune: bool) -> None:
    cuda_like_configure(deterministic, autotune)


@hookimpl
def device_grad_scaler(device: torch.device, precision: str) -> Optional[Any]:
    return cuda_like_grad_scaler()


@hookimpl
def device_sample(device: torch.device) -> Dict[str, float]:
    index = visible_index(device.index or 0, ["CUDA_VISIBLE_DEVICES"])
    sample = read_nvml_sample(index)
    if sample is not None:
        return sample
    return smi_sample(index)


def smi_sample(index: int) -> Dict[str, float]:
    """One sample of physical GPU ``index`` from ``nvidia-smi --query-gpu`` (a process each)."""
    rows = _smi_query(list(SAMPLE_FIELDS), index=index)
    if not rows:
        return {}
    sample = {}
    for key, value in zip(("util_percent", "power_w", "temperature_c", "memory_used_mib"),
                          rows[0]):
        try:
            sample[key] = float(value)
        except ValueError:
            continue
    if "memory_used_mib" in sample:
        sample["memory_used_bytes"] = sample.pop("memory_used_mib") * 2**20
    return sample


# --------------------------------------------------------------------------------------------------
# NVML through pynvml (nvidia-ml-py): in-process, no text to parse
# --------------------------------------------------------------------------------------------------

_nvml_lock = threading.Lock()
_nvml_state: Dict[str, Any] = {"tried": False, "module": None}


def nvml() -> Optional[Any]:
    """NVIDIA's ``pynvml`` module, initialised once per process; None where it is not installed
    or NVML does not start (no driver). Thread-safe: NVML itself is, and the monitor samples
    from its own thread."""
    with _nvml_lock:
        if not _nvml_state["tried"]:
            _nvml_state["tried"] = True
            try:
                module = importlib.import_module("pynvml")
                module.nvmlInit()
            except Exception:  # not installed, or NVMLError: no driver, no library
                module = None
            _nvml_state["module"] = module
        return _nvml_state["module"]


def nvml_call(function: str, *args: Any) -> Optional[Any]:
    """``pynvml.<function>(*args)``, or None where NVML is missing or the call fails."""
    lib = nvml()
    if lib is None:
        return None
    try:
        return getattr(lib, function)(*args)
    except Exception:  # NVMLError_NotSupported and its kin: that figure is unknown
        return None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def read_nvml_sample(index: int) -> Optional[Dict[str, float]]:
    """One sample of physical GPU ``index`` through NVML: util %, power W, temperature C, memory
    used bytes (each where the GPU reports it); None where NVML cannot be used."""
    lib = nvml()
    handle = None if lib is None else nvml_call("nvmlDeviceGetHandleByIndex", index)
    if lib is None or handle is None:
        return None
    sample: Dict[str, float] = {}
    util = nvml_call("nvmlDeviceGetUtilizationRates", handle)
    if util is not None:
        sample["util_percent"] = float(util.gpu)
    power = nvml_call("nvmlDeviceGetPowerUsage", handle)  # milliwatts
    if power is not None:
        sample["power_w"] = float(power) / 1000.0
    temperature = nvml_call("nvmlDeviceGetTemperature", handle,
                            getattr(lib, "NVML_TEMPERATURE_GPU", 0))
    if temperature is not None:
        sample["temperature_c"] = float(temperature)
    memory = nvml_call("nvmlDeviceGetMemoryInfo", handle)
    if memory is not None:
        sample["memory_used_bytes"] = float(memory.used)
    return sample


def read_nvml_devices() -> List[Dict[str, Any]]:
    """Every GPU as NVML lists it (``name``, ``memory_total_bytes``); empty without NVML."""
    count = nvml_call("nvmlDeviceGetCount")
    devices = []
    for index in range(int(count or 0)):
        handle = nvml_call("nvmlDeviceGetHandleByIndex", index)
        name = None if handle is None else nvml_call("nvmlDeviceGetName", handle)
        memory = None if handle is None else nvml_call("nvmlDeviceGetMemoryInfo", handle)
        if name is None or memory is None:
            return []
        devices.append({"name": _text(name), "memory_total_bytes": int(memory.total)})
    return devices


def _smi_query(fields: List[str], index: int = -1) -> List[List[str]]:
    argv = [SMI, "--query-gpu=" + ",".join(fields), "--format=csv,noheader,nounits"]
    if index >= 0:
        argv += ["-i", str(index)]
    out = run_tool(argv, timeout=10.0)
    if not out:
        return []
    return [[c.strip() for c in line.split(",")] for line in out.strip().splitlines() if line]


# Dense peak TFLOP/s of known parts, from NVIDIA's datasheets (no structured sparsity):
# "fp32" is the plain FP32 (CUDA-core) figure, "tf32"/"fp16"/"bf16" tensor-core figures.
# fp32 training is reported against TF32 where torch lets cuDNN use it (its default since 1.7:
# convolutions, most of a detection model), else against plain FP32. amp and fp16 use the FP16
# tensor-core figure, bf16 the BF16 one. Longer names first: "H100 PCIe" before "H100".
PEAK_TFLOPS = (
    ("H200", {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4}),
    ("H100 PCIE", {"fp32": 51.2, "tf32": 378.0, "fp16": 756.0, "bf16": 756.0}),
    ("H100", {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4}),  # SXM5
    ("H800", {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4}),
    ("H20", {"fp32": 44.0, "tf32": 74.0, "fp16": 148.0, "bf16": 148.0}),
    ("A100", {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0}),
    ("A800", {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0}),
    ("A30", {"fp32": 10.3, "tf32": 82.0, "fp16": 165.0, "bf16": 165.0}),
    ("A10", {"fp32": 31.2, "tf32": 62.5, "fp16": 125.0, "bf16": 125.0}),
    ("L40S", {"fp32": 91.6, "tf32": 183.0, "fp16": 362.0, "bf16": 362.0}),
    ("L4", {"fp32": 30.3, "tf32": 60.0, "fp16": 121.0, "bf16": 121.0}),
    ("V100S", {"fp32": 16.4, "fp16": 130.0}),
    ("V100-PCIE", {"fp32": 14.0, "fp16": 112.0}),
    ("V100", {"fp32": 15.7, "fp16": 125.0}),  # SXM2
    ("T4", {"fp32": 8.1, "fp16": 65.0}),
)


def peak_tflops(name: str, precision: str, tf32: bool) -> Optional[float]:
    """The table's dense peak of the part called ``name`` for ``precision``; None if unknown."""
    upper = name.upper()
    for part, figures in PEAK_TFLOPS:
        if re.search(r"\b{}\b".format(re.escape(part)), upper):
            if precision == "fp32":
                return figures.get("tf32") if tf32 and "tf32" in figures else figures["fp32"]
            return figures.get("fp16" if precision in ("amp", "fp16") else "bf16")
    return None


@hookimpl
def device_peak_flops(device: "torch.device", precision: str) -> Optional[float]:  # noqa: F821
    import torch

    tf32 = bool(torch.backends.cudnn.allow_tf32)
    peak = peak_tflops(torch.cuda.get_device_name(device), precision, tf32)
    return None if peak is None else peak * 1e12
