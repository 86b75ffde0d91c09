"""Background monitor: samples the device (memory, util, power, temperature) through the vendor's
hooks and the host (CPU %, memory, data-loader workers' CPU) through psutil.

Every sample goes to a JSON-lines file with its timestamp and the training phase (``train``,
``eval``, ``checkpoint``) that the case announced with :meth:`DeviceMonitor.set_phase`; the peak
of device-wide used memory is the seed's ``mem`` figure. A hook that raises or returns the wrong
type never stops the run, and is never hidden either: one warning on stderr per hook, a count in
the summary (``monitor_failures``), and the report names the figures it cost.

Nor does a slow hook stretch the run. While the monitor runs, every call of an observing hook
(:data:`chipbench.contract.TIME_BOUNDED_HOOKS`: memory, samples, the allocator peak), whoever makes it,
is waited for at most ``$CHIPBENCH_HOOK_TIMEOUT_S`` seconds (default 5); a hook that has not
answered by then is reported once (stderr and the rank's log), counted like a failing one, and
not called again in this run: its figures are not measured.
"""

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from chipbench import safeio
from chipbench.device import Device
from chipbench.errors import HookTimedOut
from chipbench.manager import CallTimedOut, call_with_timeout, env_seconds
from chipbench.metrics import is_number
from chipbench.worker import TRACE

FIGURES_OF_HOOK = {"device_memory_query": "device memory (the mem column)",
                   "device_sample": "device util, power and temperature",
                   "device_memory_peak": "the allocator peak"}
"""What is lost when a monitored hook fails: the report's wording."""

ENV_HOOK_TIMEOUT = "CHIPBENCH_HOOK_TIMEOUT_S"
HOOK_TIMEOUT_S = 5.0
"""How long one call of an observing hook may take during a run (seconds)."""
MIN_HOOK_TIMEOUT_S, MAX_HOOK_TIMEOUT_S = 0.01, 3600.0


def hook_timeout() -> float:
    """Seconds one call of an observing hook may take: ``$CHIPBENCH_HOOK_TIMEOUT_S`` or
    :data:`HOOK_TIMEOUT_S`; a value that is no number in range is a one-line error."""
    return env_seconds(ENV_HOOK_TIMEOUT, HOOK_TIMEOUT_S, MIN_HOOK_TIMEOUT_S, MAX_HOOK_TIMEOUT_S)


def _warn(line: str) -> None:
    """A warning of the monitor: on stderr and in the rank's log."""
    TRACE.warning(line)
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):  # no stderr, or a reader that went away
        pass


class HostSampler:
    """CPU %, memory of this process and its children (data-loader workers), via psutil."""

    def __init__(self) -> None:
        try:
            import psutil
        except ImportError:  # psutil is a dependency; stay quiet if a stripped install lacks it
            self.process = None
            return
        self.psutil = psutil
        self.process = psutil.Process()
        self._children: Dict[int, Any] = {}
        self._times = psutil.cpu_times()
        self.process.cpu_percent(None)

    def _host_cpu_percent(self) -> float:
        """Busy share of all CPUs since the last sample (own bookkeeping: psutil's module-wide
        ``cpu_percent`` state is shared with vendor plugins that call it too)."""
        now = self.psutil.cpu_times()
        before, self._times = self._times, now
        idle = getattr(now, "idle", 0.0) + getattr(now, "iowait", 0.0) - (
            getattr(before, "idle", 0.0) + getattr(before, "iowait", 0.0))
        total = sum(now) - sum(before)
        return max(0.0, min(100.0, 100.0 * (1.0 - idle / total))) if total > 0 else 0.0

    def sample(self) -> Dict[str, float]:
        """One host sample; empty when psutil is missing."""
        if self.process is None:
            return {}
        psutil = self.psutil
        record = {"host_cpu_percent": self._host_cpu_percent(),
                  "host_mem_used_bytes": float(psutil.virtual_memory().used),
                  "proc_cpu_percent": self.process.cpu_percent(None),
                  "proc_rss_bytes": float(self.process.memory_info().rss)}
        workers_cpu, alive = 0.0, {}
        try:
            children = self.process.children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:
            known = self._children.get(child.pid, child)
            try:
                workers_cpu += known.cpu_percent(None)  # 0.0 on the first call for a new child
                alive[child.pid] = known
            except psutil.Error:
                continue
        self._children = alive
        record["workers_cpu_percent"] = workers_cpu
        record["workers"] = float(len(alive))
        return record


class DeviceMonitor:
    """Samples ``device`` every ``interval_s`` seconds on a daemon thread until :meth:`stop`."""

    def __init__(self, facade: Device, device: Any, path: Path, interval_s: float = 2.0,
                 host: bool = True) -> None:
        self.facade = facade
        self.device = device
        self.path = Path(path)
        self.interval_s = max(float(interval_s), 0.05)
        self.peak_used: Optional[int] = None
        self.total: Optional[int] = None
        self.samples = 0
        self.errors = 0
        self.failures: Dict[str, Dict[str, Any]] = {}
        self.hook_timeout_s = hook_timeout()
        self.stopped: Dict[str, str] = {}
        """Hooks no longer called in this run (they did not answer in time), with the reason."""
        self.source = ""
        self.phase = "setup"
        self.host = HostSampler() if host else None
        self.device_is_cpu = getattr(getattr(facade, "info", None), "device_type", "") == "cpu"
        self.share = CpuShare()
        """The run's own share of the CPU while it trained (:func:`cpu_share`)."""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="chipbench-monitor", daemon=True)

    def start(self) -> "DeviceMonitor":
        """Bound the observing hooks' calls in time (:meth:`bounded`), take a first sample and
        start the sampling thread."""
        self.facade.observer_calls = self.bounded
        safeio.ensure_folder(self.path.parent, what="run folder")
        self.sample("start")
        self._thread.start()
        return self

    def set_phase(self, phase: str) -> None:
        """Name what the training is doing from now on (``train``, ``eval``, ``checkpoint``)."""
        self.phase = phase
        self.share.threads = torch_threads()  # the training thread's own setting (OpenMP's is
        # per thread: the sampling thread would read the default)

    def bounded(self, hook: str, call: Callable[[], Any]) -> Any:
        """``call()``, the call of observing hook ``hook`` (:attr:`Device.observer_calls`),
        waited for at most :attr:`hook_timeout_s` seconds; :class:`HookTimedOut` where it did
        not answer by then, and at once for a hook that did not answer in time before (it is
        not called again: its call may still be hanging). Each such call is counted as a failed
        one and the first is reported."""
        with self._lock:
            reason = self.stopped.get(hook)
        if reason is None:
            try:
                return call_with_timeout(call, self.hook_timeout_s, "hook " + hook)
            except CallTimedOut:
                reason = "vendor '{}' hook {} did not answer within {:g} s".format(
                    self.facade.vendor, hook, self.hook_timeout_s)
                with self._lock:
                    reason = self.stopped.setdefault(hook, reason)
        exc = HookTimedOut(reason, "it is not called again in this run; report it to the "
                                   "plugin's authors (or raise {})".format(ENV_HOOK_TIMEOUT))
        self._failed(hook, exc, None)
        raise exc

    def _failed(self, hook: str, exc: BaseException, record: Optional[Dict[str, Any]]) -> None:
        """Count a failed hook; warn on stderr the first time this hook fails."""
        if isinstance(exc, HookTimedOut):
            text = exc.problem
        else:
            text = exc.one_line() if hasattr(exc, "one_line") else "{}: {}".format(
                type(exc).__name__, exc)
        if record is not None:
            record.setdefault("errors", {})[hook] = text
        with self._lock:
            first = hook not in self.failures
            entry = self.failures.setdefault(hook, {"count": 0, "error": text,
                                                    "lost": FIGURES_OF_HOOK.get(hook, hook)})
            entry["count"] += 1
        if first and isinstance(exc, HookTimedOut):
            _warn("warning: {} during the run, {} not measured: chipbench stops calling it "
                  "in this run".format(text, FIGURES_OF_HOOK.get(hook, "its figures")))
        elif first:
            _warn("warning: vendor '{}' hook {} failed during the run, {} not measured: "
                  "{}".format(self.facade.vendor, hook, FIGURES_OF_HOOK.get(hook, "its figures"),
                              text))

    def sample(self, event: str = "") -> Dict[str, Any]:
        """Take one sample now (also called at epoch ends) and append it to the file."""
        record: Dict[str, Any] = {"time": time.time(), "phase": self.phase}
        if event:
            record["event"] = event
        try:
            memory = self.facade.memory_query(self.device)
            record.update({"mem_used_bytes": memory.used_bytes,
                           "mem_total_bytes": memory.total_bytes, "mem_source": memory.source})
        except HookTimedOut as exc:  # counted and reported already
            record.setdefault("errors", {})["device_memory_query"] = exc.problem
        except Exception as exc:  # a monitor never takes the run down, but says so
            self._failed("device_memory_query", exc, record)
        try:
            values = self.facade.sample(self.device)
            record.update({k: v for k, v in values.items() if isinstance(v, (int, float))})
        except HookTimedOut as exc:
            record.setdefault("errors", {})["device_sample"] = exc.problem
        except Exception as exc:
            self._failed("device_sample", exc, record)
        if self.host is not None:
            try:
                record.update(self.host.sample())
            except Exception as exc:  # psutil races with exiting workers: skip this sample
                record.setdefault("errors", {})["host"] = str(exc)
        with self._lock:
            self.share.add(record)
            if "errors" in record:
                self.errors += 1
            if "mem_used_bytes" in record:
                used = record["mem_used_bytes"]
                self.peak_used = used if self.peak_used is None else max(self.peak_used, used)
                self.total = record["mem_total_bytes"]
                self.source = record["mem_source"]
            self.samples += 1
            with safeio.open_for_append(self.path, what="run file") as handle:
                handle.write(json.dumps(record) + "\n")
        return record

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def stop(self) -> Dict[str, Any]:
        """Stop sampling (after a last sample) and return the summary."""
        if not self._stop.is_set():
            self._stop.set()
            if self._thread.is_alive():
                self._thread.join(timeout=self.interval_s + 5)
            self.sample("stop")
            if self.facade.observer_calls == self.bounded:
                self.facade.observer_calls = None
        return self.summary()

    def summary(self) -> Dict[str, Any]:
        """Peak memory, sample and error counts, and the failed hooks (hook -> count, error)."""
        with self._lock:
            return {"mem_used_peak_bytes": self.peak_used, "mem_total_bytes": self.total,
                    "mem_source": self.source, "monitor_samples": self.samples,
                    "monitor_errors": self.errors,
                    "monitor_failures": {k: dict(v) for k, v in self.failures.items()},
                    "cpu_share": self.share.summary(self.device_is_cpu)}


def read_samples(path: Path) -> List[Dict[str, Any]]:
    """The samples of one monitor file: unreadable lines and lines without a numeric ``time`` are
    skipped, and so are values that are neither text nor a finite number (a hand-edited or
    truncated file still charts)."""
    samples = []
    try:  # a regular file of the run folder, not through a link, bounded
        lines = safeio.read_text(path, safeio.MONITOR_LIMIT, what="run file").splitlines()
    except (OSError, UnicodeDecodeError, safeio.FileRefused):
        return []
    for line in lines:
        try:
            sample = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if not isinstance(sample, dict) or not is_number(sample.get("time")):
            continue
        samples.append({k: v for k, v in sample.items()
                        if isinstance(v, str) or is_number(v)})
    return samples


SUMMARY_FIELDS = (("util_percent", "util", "%", 1.0), ("power_w", "power", "W", 1.0),
                  ("temperature_c", "temperature", "°C", 1.0),
                  ("mem_used_bytes", "device memory", "GiB", 2.0**30),
                  ("host_cpu_percent", "host CPU (whole machine)", "%", 1.0),
                  ("proc_cpu_percent", "run's own CPU (this process, % of one core)", "%", 1.0),
                  ("workers_cpu_percent", "data-loader workers CPU", "%", 1.0),
                  ("host_mem_used_bytes", "host memory", "GiB", 2.0**30))


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


def summarize(samples: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Mean and maximum of every sampled figure: rows of (figure, unit, mean, max, samples)."""
    rows = []
    for key, label, unit, scale in SUMMARY_FIELDS:
        values = [s[key] / scale for s in samples if isinstance(s.get(key), (int, float))]
        if values:
            rows.append({"figure": label, "unit": unit, "mean": sum(values) / len(values),
                         "max": max(values), "samples": len(values)})
    return rows
