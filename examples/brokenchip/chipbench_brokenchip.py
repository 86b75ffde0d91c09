"""The broken twin of chipbench_fakechip: every hook is there, and many break the contract.

Not installed anywhere by default: chipbench's tests put it on ``sys.path`` with an entry point
and expect ``core doctor`` and the pytest entry of the conformance kit to fail with one precise
line per broken check. Each break is named in a comment.
"""

from typing import Any, Dict, List

from chipbench import MemoryInfo, VendorInfo, hookimpl


@hookimpl
def vendor_detect() -> VendorInfo:
    return VendorInfo(name="brokenchip", device_type="cpu", priority=-20, available=True,
                      reason="example plugin that breaks the contract")


@hookimpl
def device_init_backend(local_rank: int):
    import torch

    return torch.device("cpu")


@hookimpl
def device_count() -> int:
    return 0  # broken: no device while vendor_detect says available


@hookimpl
def device_name(index: int) -> str:
    return ""  # broken: empty name


@hookimpl
def hardware_id():
    return ("BROKEN", "B1")  # broken: a tuple, not a HardwareId


@hookimpl
def device_synchronize(device) -> None:
    return None


@hookimpl
def device_memory_query(device) -> MemoryInfo:
    return MemoryInfo(used_bytes=32 * 2**30, total_bytes=16 * 2**30)  # broken: used > total


@hookimpl
def device_memory_peak(device) -> int:
    return 1.5  # broken: a float, and it never moves


@hookimpl
def device_memory_reset_peak(device) -> None:
    return None


@hookimpl
def collective_backend() -> str:
    return "gloo"


@hookimpl
def visible_devices_env() -> str:
    return ""


@hookimpl
def supported_precisions() -> List[str]:
    return ["fp16"]  # broken: no fp32


@hookimpl
def environment_report() -> Dict[str, Any]:
    return {"device_model": "BrokenChip B1", "driver_version": 1.0}  # broken: version not a str


@hookimpl
def device_sample(device) -> Dict[str, Any]:
    return {"util_percent": "93%"}  # broken: a string, not a number


@hookimpl
def device_loader_workers(configured, local_world_size):
    return -3  # broken: a negative worker count (optional hook)
