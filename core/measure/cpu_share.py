"""The run's own share of the CPU while it trains, and the warnings it earns.

A run on the CPU device that got much less CPU than its threads asked for (neighbours' load, a
CPU quota) measures the machine's load as much as the chip: the monitor's samples give the share
(:class:`CpuShare`), result.json records it (:func:`cpu_share`), the ranks are reduced to the one
that got least (:func:`reduce_cpu_share`) and the report warns (:func:`starved_warning`).
"""

import sys
from typing import Any, Dict, List, Optional

from chipbench.measure.metrics import is_number


def torch_threads() -> Optional[int]:
    """torch's intra-op threads as the calling thread sees them; None before torch is loaded."""
    torch = sys.modules.get("torch")
    try:
        return int(torch.get_num_threads()) if torch is not None else None
    except Exception:  # noqa: BLE001 - a half-imported torch
        return None


def machine_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


STARVED_SHARE = 0.75
"""A run on the CPU device that got less than this share of the cores it asked for (its compute
threads, at most the cores it may run on) was starved: each step waited for
time slices that neighbours (or a CPU quota) took, so p_core, p_train and MFU measure the
machine's load as much as the chip. A tiny 2-thread run on a 2-core Xeon got 94 % when given the
machine and 23 % beside neighbours' test runs (docs/metrics.md)."""
SHARE_RATIO = 0.8
"""`core compare` warns where the lower of two runs' CPU shares is below this fraction of the
higher: their throughputs may differ by the machine's load by as much (1.25x) or more."""


class CpuShare:
    """The run's own CPU use while it trains: every sample's process and loader-worker CPU %
    (psutil, per interval), weighted by the interval it covers; the machine's too."""

    def __init__(self) -> None:
        self.threads: Optional[int] = None
        self.last_time: Optional[float] = None
        self.seconds = 0.0
        self.own = 0.0
        self.process = 0.0
        self.host = 0.0
        self.workers = 0.0
        self.samples = 0

    def add(self, record: Dict[str, Any]) -> None:
        """Count one sample (a ``train`` one with the process's CPU %; others only move the
        clock on)."""
        now, before = record.get("time"), self.last_time
        self.last_time = now if is_number(now) else before
        if not is_number(now) or before is None or record.get("phase") != "train" \
                or not is_number(record.get("proc_cpu_percent")):
            return
        span = max(0.0, now - before)
        self.seconds += span
        self.process += span * record["proc_cpu_percent"]
        self.own += span * (record["proc_cpu_percent"] + (record.get("workers_cpu_percent")
                                                         or 0.0))
        self.host += span * (record.get("host_cpu_percent") or 0.0)
        self.workers += span * (record.get("workers") or 0.0)
        self.samples += 1

    def summary(self, device_is_cpu: bool) -> Optional[Dict[str, Any]]:
        """The share while training (None without a training sample; see :func:`cpu_share`)."""
        if not self.seconds:
            return None
        return cpu_share(self.own / self.seconds, self.process / self.seconds,
                         self.host / self.seconds, machine_cores(), self.threads,
                         self.workers / self.seconds, device_is_cpu, self.samples, self.seconds)


def cpu_share(own_percent: float, process_percent: float, host_percent: float, cores: int,
              threads: Optional[int], workers: float, device_is_cpu: bool, samples: int,
              seconds: float) -> Dict[str, Any]:
    """The run's CPU share while training as result.json records it (``metrics.cpu_share``), as
    time-weighted means: ``own_percent`` (the process and its children, the loader workers, in %
    of one core), ``process_percent`` (the process alone), ``host_percent`` (the whole machine
    busy, % of all ``cores``), ``workers`` (children); and on the CPU device ``asked_cores`` (its
    compute threads, at most ``cores``) and ``compute_share`` (``process_percent / 100 /
    asked_cores``: the compute the run got against the threads it asked for; loader workers
    decode between steps and ask for what they use)."""
    share: Dict[str, Any] = {"own_percent": own_percent, "process_percent": process_percent,
                             "host_percent": host_percent, "cores": cores, "threads": threads,
                             "workers": workers, "samples": samples, "seconds": seconds,
                             "asked_cores": None, "compute_share": None}
    if device_is_cpu and threads:
        asked = float(min(cores, threads))
        share["asked_cores"] = asked
        share["compute_share"] = process_percent / 100.0 / asked
    return share


def reduce_cpu_share(parts: List[Any]) -> Optional[Dict[str, Any]]:
    """The run's CPU share over its ranks: the rank that got the least (its compute share on the
    CPU device, else its own CPU %), with that rank's number."""
    known = [(rank, part) for rank, part in enumerate(parts)
             if isinstance(part, dict) and is_number(part.get("own_percent"))]
    if not known:
        return None

    def got(item: Any) -> float:
        part = item[1]
        return part["compute_share"] if is_number(part.get("compute_share")) \
            else part["own_percent"] / 100.0
    rank, part = min(known, key=got)
    return dict(part, rank=rank)


def starved_warning(share: Any) -> Optional[str]:
    """The report's warning where the run got less than :data:`STARVED_SHARE` of the cores it
    asked for (a ``cpu_share`` as :func:`cpu_share` writes it, read from a file); else None."""
    if not isinstance(share, dict) or not is_number(share.get("compute_share")):
        return None
    got = share["compute_share"]
    if got >= STARVED_SHARE:
        return None
    return ("this run was starved of CPU: its compute got {:.0%} of the {} core(s) its threads "
            "asked for ({:.0f} % of one core on average while training, the whole machine {:.0f} "
            "% busy); below "
            "{:.0%} its throughputs and MFU measure the machine's load as much as the chip: rerun "
            "it on an idle machine (or without a CPU quota)").format(
                got, _cores_text(share.get("asked_cores")), share.get("process_percent") or 0.0,
                share.get("host_percent") or 0.0, STARVED_SHARE)


def _cores_text(value: Any) -> str:
    return "{:g}".format(value) if is_number(value) else "?"
