"""The NVIDIA CUDA vendor: torch.cuda devices, NCCL, memory from cudaMemGetInfo, nvidia-smi samples.

Declines when the installed torch is a MetaX build (which also answers ``torch.cuda``) or ROCm's.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from chipbench.environment import installed_torch_version
from chipbench.hookspecs import hookimpl
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

NAME = "cuda"
PRIORITY = 50
SMI = "nvidia-smi"
NON_NVIDIA_BUILD = re.compile(r"\+(mc|metax|rocm)", re.IGNORECASE)
SAMPLE_FIELDS = ("utilization.gpu", "power.draw", "temperature.gpu", "memory.used")


@hookimpl
def vendor_detect() -> VendorInfo:
    version = installed_torch_version()
    if not version:
        return VendorInfo(NAME, "cuda", PRIORITY, False, "torch is not installed")
    if NON_NVIDIA_BUILD.search(version):
        return VendorInfo(NAME, "cuda", PRIORITY, False,
                          "torch {} is not an NVIDIA build".format(version))
    import torch

    if getattr(torch.version, "hip", None):
        return VendorInfo(NAME, "cuda", PRIORITY, False, "torch {} is a ROCm build".format(version))
    if torch.version.cuda is None:
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
    name = device_name(0)
    match = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", name)
    tag = match.group(1) if match else name.replace("NVIDIA", "").strip().split(" ")[0]
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
    rows = _smi_query(["name", "memory.total", "driver_version"])
    if rows:
        report.update({
            "device_model": rows[0][0],
            "device_count": len(rows),
            "device_memory_gib": round(float(rows[0][1]) / 1024, 1),
            "driver_version": rows[0][2],
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
