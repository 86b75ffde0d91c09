"""The CPU vendor: always available, lowest priority, gloo collectives, psutil memory.

The host cores are the device here, so the vendor budgets them: torch's intra-op threads plus the
data-loader workers of every rank on the node never exceed the cores this process may use.
``CHIPBENCH_CPU_THREADS`` overrides the thread count, ``data.num_workers`` the worker count.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import psutil

from chipbench.errors import ChipbenchError, UserError
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
"""Seconds one measurement of the CPU's peak lasts at run start (default 0.5: a hundred 1024x1024
GEMMs at 400 GFLOP/s, twenty on a CPU 5x slower; 0 turns the measurement off). A measurement that
fails its sanity checks is repeated, at most :data:`PEAK_ATTEMPTS` times in all."""
_measured_peaks: Dict[str, float] = {}

PEAK_ATTEMPTS = 3
"""Measurements of the peak at most, while one falls short of the sanity checks (a busy machine)."""
ISA_FLOOR_SHARE = 0.10
"""A measured peak below this share of what the cores could compute with one FMA unit of their
vector width is not the CPU's peak but a busy machine's leftovers (a GEMM on an idle CPU reaches
most of the vector units' rate: a 2-core AVX-512 Xeon here measured 252-258 GFLOP/s fp32, against
166 for one FMA unit per core and 333 for two; with a busy process on each core the single-try
measurement this replaced gave 0.21 GFLOP/s)."""
PER_CORE_SIZE = 512
"""The largest matrices of the one-thread measurement of a busy machine: a product of about a
millisecond per core fits in one time slice, so some products run whole at the core's speed."""
RETRY_MIN_S = 0.25
"""Seconds a repeated measurement lasts at least: a window of a few products (a user's 0.02 s)
that a busy machine stretched is retried over enough products to catch a fast one."""
PREVIOUS_SHARE = 0.5
"""A measurement below this share of the figure cached for this CPU (same model, threads, quota,
precision, torch and ISA settings) was disturbed: the cached figure is used instead."""
PEAK_CACHE_FILE = "cpu-peaks.json"
PEAK_CACHE_LIMIT = 1 << 20
FLOPS_PER_CYCLE = (("avx512f", 32, "AVX-512"), ("avx2", 16, "AVX2"), ("avx", 8, "AVX"),
                   ("sse2", 4, "SSE2"))
"""fp32 FLOPs per cycle and core of one fused multiply-add unit of each vector width (x86 flags of
/proc/cpuinfo, widest first; FMA counts 2 FLOPs per lane). Most cores have two such units: the
floor (:data:`ISA_FLOOR_SHARE`) errs low."""
ISA_CAP_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
"""Settings that cap the vector width torch's kernels use (benchmarks/slow_cpu.sh sets two)."""


class PeakUnreliable(ChipbenchError):
    """The CPU's peak could not be measured: every try fell below the sanity floor. One of
    chipbench's own errors, so that it passes the vendor facade as it is (no "report it to the
    plugin's authors": the machine was busy); the run records it as its peak note, without MFU."""


def _cpu_flags_and_mhz(cpuinfo: str = "/proc/cpuinfo") -> Tuple[List[str], Optional[float]]:
    """The first processor's flags and clock (MHz) in ``cpuinfo``; empty and None where unknown."""
    flags: List[str] = []
    mhz: Optional[float] = None
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key == "flags" and not flags:
                    flags = value.split()
                elif key == "cpu mhz" and mhz is None:
                    try:
                        mhz = float(value)
                    except ValueError:
                        pass
                if flags and mhz is not None:
                    break
    except OSError:
        pass
    return flags, (mhz if mhz is not None and math.isfinite(mhz) and mhz > 0 else None)


ISA_LEVELS = {"avx512f": 3, "avx2": 2, "avx": 1, "sse2": 0}


def _isa_level(setting: str) -> int:
    """The widest level of :data:`ISA_LEVELS` an ISA setting's value allows (3: no cap known)."""
    value = setting.strip().lower()
    if not value or value.startswith("avx512") or "amx" in value:
        return 3
    for prefix, level in (("avx2", 2), ("avx", 1), ("sse", 0), ("default", 0)):
        if value.startswith(prefix):
            return level
    return 3


def _isa_capped(flag: str) -> bool:
    """Whether an ISA setting (:data:`ISA_CAP_ENV`) keeps torch's kernels below ``flag``'s width."""
    cap = min(_isa_level(os.environ.get(name, "")) for name in ISA_CAP_ENV)
    return ISA_LEVELS[flag] > cap


def peak_floor(precision: str, cores: float, cpuinfo: str = "/proc/cpuinfo"
               ) -> Optional[Tuple[float, str]]:
    """The lowest FLOP/s a GEMM in ``precision`` on ``cores`` cores of this CPU may measure and
    still be its peak (:data:`ISA_FLOOR_SHARE` of one FMA unit per core at the stated clock),
    with how it was reckoned; None where that is not known (no clock or vector flags, not x86, or
    bf16 without native bf16 units, whose emulated rate has no floor)."""
    flags, mhz = _cpu_flags_and_mhz(cpuinfo)
    if mhz is None or cores <= 0:
        return None
    if precision == "bf16" and not any(f in flags for f in BF16_FLAGS):
        return None
    for flag, per_cycle, name in FLOPS_PER_CYCLE:
        if flag in flags and not _isa_capped(flag):
            ceiling = cores * mhz * 1e6 * per_cycle
            return ISA_FLOOR_SHARE * ceiling, "{:.0%} of {:g} core(s) x {} ({} FLOP/cycle) x " \
                "{:.2f} GHz = {:.3g} GFLOP/s".format(ISA_FLOOR_SHARE, cores, name, per_cycle,
                                                      mhz / 1e3, ceiling / 1e9)
    return None


def _peak_cores() -> float:
    """Cores the peak's GEMM can keep busy: torch's threads, within the affinity and a quota."""
    import torch

    cores = float(min(torch.get_num_threads(), affinity_cores()))
    quota = _cgroup.cpu_limit()
    return min(cores, quota) if quota is not None and quota > 0 else cores


def _peak_cache_key(precision: str) -> str:
    """What a cached peak holds for: the CPU, the threads and quota, the precision, torch and the
    ISA settings (a different one of any is measured afresh)."""
    import torch

    return json.dumps([cpu_model(), torch.get_num_threads(), _cgroup.cpu_limit(), precision,
                       torch.__version__] + [os.environ.get(name, "") for name in ISA_CAP_ENV])


def peak_cache_path() -> Path:
    """``$CHIPBENCH_CACHE/cpu-peaks.json`` (default cache ``~/.cache/chipbench``)."""
    root = os.environ.get("CHIPBENCH_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "chipbench") / PEAK_CACHE_FILE


def _read_peak_cache() -> Dict[str, Any]:
    """The cached peaks (key -> FLOP/s); empty where the file is missing or not as written."""
    from chipbench.util import safeio

    try:
        found = safeio.read_json(peak_cache_path(), PEAK_CACHE_LIMIT, what="cache file")
    except (OSError, ValueError, RecursionError, safeio.FileRefused):
        return {}
    return found if isinstance(found, dict) else {}


def cached_peak(precision: str) -> Optional[float]:
    """The peak cached for this CPU and settings (:func:`_peak_cache_key`), or None."""
    from chipbench.measure.metrics import is_number

    value = _read_peak_cache().get(_peak_cache_key(precision))
    return float(value) if is_number(value) and 1e6 <= value <= 1e18 else None


def _cache_peak(precision: str, flops: float) -> None:
    """Remember ``flops`` as this CPU's peak; a cache that cannot be written is skipped."""
    from chipbench.util import safeio

    peaks = _read_peak_cache()
    peaks[_peak_cache_key(precision)] = flops
    try:
        safeio.ensure_folder(peak_cache_path().parent, what="cache folder")
        safeio.write_atomic(peak_cache_path(), json.dumps(peaks, indent=1), what="cache file")
    except (OSError, UserError, safeio.FileRefused):
        pass


def _product_seconds(a: "torch.Tensor", b: "torch.Tensor", repeats: int) -> float:
    """The fastest of ``repeats`` timed products ``a @ b``."""
    import time

    import torch

    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return best


def measure_gemm_flops(seconds: float, precision: str = "fp32", size: int = 1024,
                       threads: Optional[int] = None) -> float:
    """FLOP/s of square matrix products on this CPU: the fastest product within about
    ``seconds`` (a peak, so the fastest counts, not the mean that a busy neighbour or a cold
    cache drags down), in at most about twice ``seconds`` in all.

    The matrices start at 128 and double up to ``size`` while the next size's product fits in a
    tenth of ``seconds``, judged on the fastest of three products at each size (one product that
    the scheduler stretched a thousandfold would otherwise keep the matrices small): where one
    1024 product takes longer (bf16 on a CPU without bf16 units runs ~100x slower than fp32:
    1.6 s a product), the measurement still keeps to its window. ``threads`` sets torch's threads
    for the measurement only (default: as they are)."""
    import torch

    was = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _fastest_product(seconds, precision, size)
    finally:
        if threads is not None:
            torch.set_num_threads(was)


def _fastest_product(seconds: float, precision: str, size: int) -> float:
    """:func:`measure_gemm_flops` with torch's threads as they are."""
    import time

    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n = min(128, size)
    search_end = time.perf_counter() + seconds
    while True:
        a = torch.randn(n, n, generator=torch.Generator().manual_seed(0)).to(dtype)
        b = a.t().contiguous()
        torch.mm(a, b)  # warm-up: kernel choice, page faults
        took = _product_seconds(a, b, 3)
        if n * 2 > size or took * 8 > seconds / 10 or time.perf_counter() > search_end:
            break  # doubling n costs 8x
        n *= 2
    best, deadline = 2.0 * n ** 3 / max(took, 1e-9), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        best = max(best, 2.0 * n ** 3 / max(_product_seconds(a, b, 1), 1e-9))
    return best


def robust_peak(seconds: float, precision: str) -> float:
    """This CPU's peak FLOP/s in ``precision``: the best of up to :data:`PEAK_ATTEMPTS`
    measurements (:func:`measure_gemm_flops`; a repeated one lasts :data:`RETRY_MIN_S` at
    least), stopping at the first that passes both checks: not below the vector units' floor
    (:func:`peak_floor`) nor below :data:`PREVIOUS_SHARE` of the figure cached from an earlier
    run on this CPU and settings. The last try, on a machine so busy that the threads stall at
    each other's barriers (a 2-thread 128x128 product took 20-50 ms instead of 0.03), times one
    thread's products of at most :data:`PER_CORE_SIZE` (each fits in a time slice) and takes that
    rate times the cores, where that passes the checks (an estimate: not cached). The result is the higher of
    the best measurement and the cached figure (a peak is the fastest this CPU was seen to go; it
    is cached for later runs). Raises :class:`PeakUnreliable` where no measurement reached the
    floor and nothing is cached: the machine was too busy to tell the peak."""
    cores = _peak_cores()
    floor = peak_floor(precision, cores)
    previous = cached_peak(precision)

    def passes(flops: float) -> bool:
        return (floor is None or flops >= floor[0]) and (previous is None
                                                         or flops >= PREVIOUS_SHARE * previous)

    best = 0.0
    for attempt in range(PEAK_ATTEMPTS - 1):
        best = max(best, measure_gemm_flops(seconds if attempt == 0
                                            else max(seconds, RETRY_MIN_S), precision))
        if passes(best):
            break
    if not passes(best):  # the threads stall at each other's barriers: time one core's products
        per_core = measure_gemm_flops(max(seconds, RETRY_MIN_S), precision, PER_CORE_SIZE, 1)
        if passes(per_core * cores):
            logging.getLogger("chipbench").warning(
                "warning: the CPU's %s GEMM measured %.3g GFLOP/s on %g thread(s), a busy "
                "machine's figure: the peak is one core's rate x %g cores (%.3g GFLOP/s)",
                precision, best / 1e9, cores, cores, per_core * cores / 1e9)
            return max(per_core * cores, previous or 0.0)  # an estimate: not cached
        tried = "{:.3g} GFLOP/s on {:g} thread(s) in {} tries, one core {:.3g}".format(
            best / 1e9, cores, PEAK_ATTEMPTS - 1, per_core / 1e9)
        best = max(best, per_core * cores)
    else:
        tried = "{:.3g} GFLOP/s".format(best / 1e9)
    if previous is not None and best < PREVIOUS_SHARE * previous:
        logging.getLogger("chipbench").warning(
            "warning: the CPU's %s GEMM measured %.3g GFLOP/s, below %.0f%% of the %.3g cached "
            "for this CPU (%s): the machine is busy; the cached peak is used for MFU", precision,
            best / 1e9, PREVIOUS_SHARE * 100, previous / 1e9, peak_cache_path())
        return previous
    if floor is not None and best < floor[0]:
        raise PeakUnreliable(
            "the CPU's {} GEMM measured {}, below the floor of a peak ({}): the machine was "
            "busy, so no peak is known".format(precision, tried, floor[1]),
            "rerun on an idle machine for an MFU")
    if previous is None or best > previous:
        _cache_peak(precision, best)
    return max(best, previous or 0.0)


@hookimpl
def device_peak_flops(device: "torch.device", precision: str) -> Optional[float]:  # noqa: F821
    # measured, not a datasheet figure: GEMMs at run start, once per process (robust_peak)
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
        _measured_peaks[precision] = robust_peak(seconds, precision)
    return _measured_peaks[precision]
