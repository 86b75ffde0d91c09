"""``core doctor``: call every device hook on the real device and say what passed.

Meant for a hardware owner (a C500 machine, say) to run and send back: each line is one check.
"""

import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, List

from chipbench.device import Device
from chipbench.hookspecs import PRECISIONS


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _check(checks: List[Check], name: str, fn: Callable[[], Any]) -> Any:
    try:
        value = fn()
    except Exception as exc:
        checks.append(Check(name, False, "{}: {}".format(type(exc).__name__, exc)))
        return None
    detail = value if isinstance(value, str) else repr(value)
    checks.append(Check(name, True, detail[:200]))
    return value


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _collective_worker(rank: int, world: int, backend: str, port: int, vendor: str) -> None:
    import datetime

    import torch
    import torch.distributed as dist

    from chipbench.manager import build_host
    from chipbench.selection import select_device

    facade = select_device(build_host(), vendor)
    device = facade.init_backend(rank)
    dist.init_process_group(backend, init_method="tcp://127.0.0.1:{}".format(port), rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    tensor = torch.ones(4, device=device) * (rank + 1)
    dist.all_reduce(tensor)
    facade.synchronize(device)
    expected = world * (world + 1) / 2
    dist.destroy_process_group()
    if float(tensor[0]) != expected:
        raise RuntimeError("all_reduce gave {}, expected {}".format(float(tensor[0]), expected))


def run_doctor(facade: Device, alloc_mib: int = 256) -> List[Check]:
    """Run every check and return them in order."""
    import torch

    checks: List[Check] = []
    _check(checks, "vendor_detect", lambda: "{} available: {}".format(facade.vendor,
                                                                       facade.info.reason))
    device = _check(checks, "device_init_backend(0)", lambda: facade.init_backend(0))
    count = _check(checks, "device_count", facade.count) or 0
    _check(checks, "device_name(0)", lambda: facade.name(0))
    _check(checks, "hardware_id", facade.hardware_id)
    backend = _check(checks, "collective_backend", facade.collective_backend)
    _check(checks, "visible_devices_env", facade.visible_devices_env)
    precisions = _check(checks, "supported_precisions", facade.supported_precisions) or []
    _check(checks, "environment_report", lambda: ", ".join(
        "{}={}".format(k, v) for k, v in facade.environment_report().items()
        if not isinstance(v, (list, dict))))
    if device is None:
        return checks
    before = _check(checks, "device_memory_query before", lambda: facade.memory_query(device))
    _check(checks, "device_memory_reset_peak", lambda: facade.memory_reset_peak(device) or "ok")

    def allocate() -> str:
        elements = alloc_mib * 2**20 // 4
        tensor = torch.ones(elements, device=device)
        matrix = torch.randn(512, 512, device=device)
        start = time.perf_counter()
        product = matrix @ matrix
        facade.synchronize(device)
        elapsed = time.perf_counter() - start
        total = float(tensor.sum()) + float(product.sum())
        allocate.keep = tensor  # keep the allocation alive for the memory checks
        return "{} MiB allocated, 512x512 matmul + sync in {:.4f} s (checksum {:.1f})".format(
            alloc_mib, elapsed, total)

    _check(checks, "allocate + device_synchronize", allocate)
    after = _check(checks, "device_memory_query after", lambda: facade.memory_query(device))
    if before is not None and after is not None:
        delta = (after.used_bytes - before.used_bytes) / 2**20
        checks.append(Check("memory grew with allocation", delta > 0,
                            "used {:.0f} -> {:.0f} MiB of {:.0f} ({})".format(
                                before.used_bytes / 2**20, after.used_bytes / 2**20,
                                after.total_bytes / 2**20, after.source)))
    peak = _check(checks, "device_memory_peak", lambda: facade.memory_peak(device))
    if peak is not None:
        checks.append(Check("peak covers allocation", peak >= alloc_mib * 2**20,
                            "{:.0f} MiB".format(peak / 2**20)))
    allocate.keep = None
    _check(checks, "device_sample", lambda: facade.sample(device))
    for precision in precisions:
        if precision == "fp32" or precision not in PRECISIONS:
            continue
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16

        def autocast_matmul(dtype=dtype, precision=precision) -> str:
            matrix = torch.randn(64, 64, device=device)
            with torch.autocast(device_type=device.type, dtype=dtype):
                out = matrix @ matrix
            facade.synchronize(device)
            return "autocast {} matmul -> {}".format(precision, out.dtype)

        _check(checks, "precision " + precision, autocast_matmul)
    if backend:
        world = 2 if count >= 2 else 1
        _check(checks, "collective all_reduce x{}".format(world),
               lambda: _collective(world, backend, facade.vendor))
    return checks


def _collective(world: int, backend: str, vendor: str) -> str:
    import torch.multiprocessing as mp

    port = _free_port()
    os.environ.setdefault("CHIPBENCH_VENDOR", vendor)
    mp.start_processes(_collective_worker, args=(world, backend, port, vendor), nprocs=world,
                       join=True, start_method="spawn")
    return "{} all_reduce over {} process(es) ok".format(backend, world)
