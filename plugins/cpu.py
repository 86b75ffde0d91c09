"""The CPU vendor: always available, lowest priority, gloo collectives, psutil memory.

The host cores are the device here, so the vendor budgets them: torch's intra-op threads plus the
data-loader workers of every rank on the node never exceed the cores this process may use.
``CHIPBENCH_CPU_THREADS`` overrides the thread count, ``data.num_workers`` the worker count.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import psutil

from chipbench.errors import UserError
from chipbench.hookspecs import hookimpl
from chipbench.plugins import _cgroup
from chipbench.records import HardwareId, MemoryInfo, VendorInfo

if TYPE_CHECKING:
    import torch


@hookimpl
def vendor_detect() -> VendorInfo:
    return VendorInfo(name="cpu", device_type="cpu", priority=0, available=True,
                      reason="always available (slow: for tests and the embedded default)")


@hookimpl
def device_init_backend(local_rank: int) -> torch.device:
    import torch

    workers, threads = core_budget(None, _local_world_size())
    torch.set_num_threads(threads)
    return torch.device("cpu")


@hookimpl
def device_loader_workers(configured: Optional[int], local_world_size: int) -> int:
    import torch

    workers, threads = core_budget(configured, local_world_size)
    torch.set_num_threads(threads)
    return workers


@hookimpl
def device_count() -> int:
    return 1


@hookimpl
def device_name(index: int) -> str:
    import platform

    return platform.processor() or platform.machine() or "CPU"


@hookimpl
def hardware_id() -> HardwareId:
    return HardwareId(label="CPU", config_tag="CPU")


@hookimpl
def device_synchronize(device: torch.device) -> None:
    return None


@hookimpl
def device_memory_query(device: torch.device) -> MemoryInfo:
    rss = psutil.Process().memory_info().rss
    total, limited = memory_total()
    return MemoryInfo(used_bytes=rss, total_bytes=max(total, rss),
                      source="psutil (process RSS / {})".format(
                          "cgroup memory limit" if limited else "machine total"))


def memory_total() -> Tuple[int, bool]:
    """The memory this process may fill: the machine's, or its control group's limit where that
    is smaller (a container); and whether the limit was the smaller."""
    machine = int(psutil.virtual_memory().total)
    limit = _cgroup.memory_limit()
    if limit is not None and 0 < limit < machine:
        return limit, True
    return machine, False


@hookimpl
def device_memory_peak(device: torch.device) -> int:
    info = psutil.Process().memory_info()
    return int(getattr(info, "peak_wset", 0) or _linux_peak_rss() or info.rss)


@hookimpl
def device_memory_reset_peak(device: torch.device) -> None:
    # Linux keeps the peak RSS (VmHWM) per process; writing 5 to clear_refs resets it to the
    # current RSS, which first drops the free pages the C heap kept
    release_free_heap()
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass
    return None


def release_free_heap() -> None:
    """Return the C heap's free pages to the OS (glibc's ``malloc_trim``; a no-op elsewhere).

    Pages glibc keeps after a free stay resident and are reused by the next allocation, so a peak
    measured from the resident size would miss new memory (a 64 MiB tensor raised it by 0 after an
    earlier run in the same process)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return
    trim(0)


@hookimpl
def collective_backend() -> str:
    return "gloo"


@hookimpl
def visible_devices_env() -> str:
    return ""


@hookimpl
def supported_precisions() -> List[str]:
    return ["fp32"] + (["bf16"] if bf16_kernel_error() is None else [])


_bf16_kernel_errors: Dict[str, Optional[str]] = {}


def bf16_kernel_error() -> Optional[str]:
    """None where this torch trains a convolution in bf16 autocast on this CPU, else the kernels'
    error, once per process.

    torch 2.0's oneDNN has no bf16 convolution on a CPU without AVX-512 ("could not create a
    primitive descriptor" in the first forward); the probe finds that before a run starts, with
    the global RNG state left as it was.
    """
    if "error" not in _bf16_kernel_errors:
        import torch

        error = None
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            try:
                conv = torch.nn.Conv2d(3, 4, 3)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = conv(torch.randn(1, 3, 8, 8))
                out.float().sum().backward()
            except RuntimeError as exc:
                error = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        _bf16_kernel_errors["error"] = error
    return _bf16_kernel_errors["error"]


def cpu_model() -> str:
    """The processor's model name ("AMD EPYC 7B13"): /proc/cpuinfo, else platform.processor()."""
    import platform

    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware")) and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


@hookimpl
def environment_report() -> Dict[str, Any]:
    report: Dict[str, Any] = {}
    report.update({
        "device_model": cpu_model(),
        "device_count": 1,
        "cpu_cores": os.cpu_count(),
        "cpu_bf16": bf16_support() if bf16_kernel_error() is None else bf16_unsupported(),
    })
    total, limited = memory_total()
    report["device_memory_gib"] = round(total / 2**30, 1)
    limits = []
    if limited:
        limits.append("memory {:.1f} GiB of the machine's {:.1f}".format(
            total / 2**30, psutil.virtual_memory().total / 2**30))
    affinity = affinity_cores()
    cores, capped = _cgroup.cores_allowed(affinity, _cgroup.cpu_limit())
    if capped:
        limits.append("CPU time of {} core(s) of the {} it may run on".format(cores, affinity))
    if limits:
        report["cgroup_limits"] = "; ".join(limits)
    return report


@hookimpl
def device_sample(device: torch.device) -> Dict[str, float]:
    return {"util_percent": psutil.cpu_percent(interval=None),
            "memory_used_bytes": float(psutil.Process().memory_info().rss)}


BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""CPU flags of native bf16 arithmetic; without them bf16 autocast is emulated and often slower."""


def bf16_support(cpuinfo: str = "/proc/cpuinfo") -> str:
    """"native (<flags>)", or a warning that bf16 may be slower than fp32 on this CPU."""
    try:
        with open(cpuinfo) as handle:
            flags = set(next((line.split(":", 1)[1].split() for line in handle
                              if line.startswith("flags")), []))
    except OSError:
        return "unknown (no {}): bf16 may be slower than fp32".format(cpuinfo)
    native = [f for f in BF16_FLAGS if f in flags]
    if native:
        return "native ({})".format(", ".join(native))
    return ("emulated: this CPU lacks {}, so bf16 training may be slower than fp32 "
            "(benchmarks/fast_paths.py measures it)".format(" and ".join(BF16_FLAGS)))


def bf16_unsupported() -> str:
    """Why bf16 is not offered on this CPU, with the fix."""
    import torch

    return ("unsupported: torch {}'s CPU kernels cannot train a bf16 convolution here ({}); "
            "train in fp32, or use a newer torch".format(torch.__version__, bf16_kernel_error()))


THREADS_ENV = "CHIPBENCH_CPU_THREADS"
CORES_PER_LOADER_WORKER = 8
"""On the CPU one loader worker per 8 cores: decoding is cheap next to a CPU training step."""


def affinity_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def usable_cores() -> int:
    """Cores this process may keep busy: its affinity, capped by its control group's CPU quota
    (a container's ``--cpus``): more threads than the quota only wait for their time slices."""
    return _cgroup.cores_allowed(affinity_cores(), _cgroup.cpu_limit())[0]


def core_budget(configured: Optional[int], local_world_size: int,
                cores: Optional[int] = None) -> Tuple[int, int]:
    """``(loader workers, intra-op threads)`` per rank, whose sum fits this rank's cores.

    ``configured`` None chooses the workers from the core count: none below 8 cores per rank
    (the loader then runs between steps in the training process), else one per 8 cores.
    ``$CHIPBENCH_CPU_THREADS`` overrides the thread count.
    """
    per_rank = max(1, (usable_cores() if cores is None else cores) // max(1, local_world_size))
    workers = per_rank // CORES_PER_LOADER_WORKER if configured is None else int(configured)
    threads = max(1, per_rank - workers)
    override = os.environ.get(THREADS_ENV, "").strip()
    if override:
        try:
            threads = int(override)
        except ValueError:
            threads = 0
        if not 1 <= threads <= 4096:
            raise UserError("{}={!r} is not a thread count from 1 to 4096".format(
                THREADS_ENV, override),
                "set it to a thread count, e.g. {}=4, or unset it".format(THREADS_ENV)) from None
    return workers, threads


def _local_world_size() -> int:
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _linux_peak_rss() -> int:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


ENV_PEAK_GEMM = "CHIPBENCH_CPU_PEAK_GEMM_S"
"""Seconds the CPU's peak is measured for at run start (default 0.5: a hundred 1024x1024 GEMMs
at 400 GFLOP/s, twenty on a CPU 5x slower; 0 turns the measurement off)."""
_measured_peaks: Dict[str, float] = {}


def measure_gemm_flops(seconds: float, precision: str = "fp32", size: int = 1024) -> float:
    """FLOP/s of square matrix products on this CPU: the best of several short windows within
    about ``seconds`` (a peak, so the fastest window counts, not the mean that a busy neighbour or
    a cold cache drags down).

    The matrices start at 128 and double up to ``size`` while the next size's product fits in a
    tenth of ``seconds``: where one 1024 product takes longer (bf16 on a CPU without bf16 units
    runs ~100x slower than fp32: 1.6 s a product), the measurement still keeps to its window."""
    import time

    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n = min(128, size)
    while True:
        a = torch.randn(n, n, generator=torch.Generator().manual_seed(0)).to(dtype)
        b = a.t().contiguous()
        torch.mm(a, b)  # warm-up: kernel choice, page faults
        start = time.perf_counter()
        torch.mm(a, b)
        took = time.perf_counter() - start
        if n * 2 > size or took * 8 > seconds / 10:  # doubling n costs 8x
            break
        n *= 2
    best, deadline = 2.0 * n ** 3 / max(took, 1e-9), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        elapsed = time.perf_counter() - start
        best = max(best, 2.0 * n ** 3 / max(elapsed, 1e-9))
    return best


@hookimpl
def device_peak_flops(device: "torch.device", precision: str) -> Optional[float]:  # noqa: F821
    # measured, not a datasheet figure: a short GEMM at run start, once per process
    raw = os.environ.get(ENV_PEAK_GEMM, "0.5")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= 60:  # NaN too: a NaN deadline never came
        raise UserError("{}={!r} is not a number of seconds from 0 to 60".format(
            ENV_PEAK_GEMM, raw), "set it to 0.5 (the default), or 0 to skip the peak")
    if seconds == 0:
        return None
    if precision not in _measured_peaks:
        _measured_peaks[precision] = measure_gemm_flops(seconds, precision)
    return _measured_peaks[precision]
