"""A third-party chipbench vendor, installed on its own and found through the entry-point group
``chipbench.vendors``. It pretends to be a chip called "FakeChip F1" and runs on the CPU.

Copy this file to start a real vendor plugin: every required hook of ``chipbench.hookspecs`` is
here, one line of work each, imported from ``chipbench``'s public surface only. The optional hooks
(``device_configure``, ``device_grad_scaler``, ``device_peak_flops``, ``device_loader_workers``;
API 1.1) are left to chipbench's defaults; ``case_config_dirs`` ships its F1 config. Priority -10
keeps it below the CPU, so it is only used when asked for by name.
"""

from pathlib import Path
from typing import Any, Dict, List

import psutil

from chipbench import HardwareId, MemoryInfo, VendorInfo, hookimpl

_peak = {"bytes": 0}


@hookimpl
def vendor_detect() -> VendorInfo:
    return VendorInfo(name="fakechip", device_type="cpu", priority=-10, available=True,
                      reason="example plugin: a fake chip on the CPU")


@hookimpl
def device_init_backend(local_rank: int):
    import torch

    return torch.device("cpu")


@hookimpl
def device_count() -> int:
    return 1


@hookimpl
def device_name(index: int) -> str:
    return "FakeChip F1"


@hookimpl
def hardware_id() -> HardwareId:
    return HardwareId(label="FAKEF1", config_tag="F1")


@hookimpl
def device_synchronize(device) -> None:
    return None


@hookimpl
def device_memory_query(device) -> MemoryInfo:
    rss = psutil.Process().memory_info().rss
    _peak["bytes"] = max(_peak["bytes"], rss)
    return MemoryInfo(used_bytes=rss, total_bytes=16 * 2**30, source="fakechip")


@hookimpl
def device_memory_peak(device) -> int:
    return max(_peak["bytes"], psutil.Process().memory_info().rss)


@hookimpl
def device_memory_reset_peak(device) -> None:
    _peak["bytes"] = 0


@hookimpl
def collective_backend() -> str:
    return "gloo"


@hookimpl
def visible_devices_env() -> str:
    return "FAKECHIP_VISIBLE_DEVICES"


@hookimpl
def supported_precisions() -> List[str]:
    return ["fp32"]


@hookimpl
def environment_report() -> Dict[str, Any]:
    return {"device_model": "FakeChip F1", "device_count": 1, "device_memory_gib": 16.0,
            "driver_version": "0.1.0"}


@hookimpl
def device_sample(device) -> Dict[str, float]:
    return {"util_percent": 50.0, "power_w": 1.0, "temperature_c": 30.0}


@hookimpl
def case_config_dirs(case_name: str) -> List[str]:
    import chipbench_fakechip_configs

    folder = Path(chipbench_fakechip_configs.__file__).parent / case_name
    return [str(folder)] if folder.is_dir() else []
