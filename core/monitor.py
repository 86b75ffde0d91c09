"""Background monitor: samples the device (memory, util, power, temperature) through the vendor's
hooks and the host (CPU %, memory, data-loader workers' CPU) through psutil.

Every sample goes to a JSON-lines file with its timestamp and the training phase (``train``,
``eval``, ``checkpoint``) that the case announced with :meth:`DeviceMonitor.set_phase`; the peak
of device-wide used memory is the seed's ``mem`` figure. A hook that raises or returns the wrong
type never stops the run, and is never hidden either: one warning on stderr per hook, a count in
the summary (``monitor_failures``), and the report names the figures it cost.
"""

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from chipbench.device import Device
from chipbench.metrics import is_number

FIGURES_OF_HOOK = {"device_memory_query": "device memory (the mem column)",
                   "device_sample": "device util, power and temperature"}
"""What is lost when a monitored hook fails: the report's wording."""


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
        self.source = ""
        self.phase = "setup"
        self.host = HostSampler() if host else None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="chipbench-monitor", daemon=True)

    def start(self) -> "DeviceMonitor":
        """Take a first sample and start the sampling thread."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sample("start")
        self._thread.start()
        return self

    def set_phase(self, phase: str) -> None:
        """Name what the training is doing from now on (``train``, ``eval``, ``checkpoint``)."""
        self.phase = phase

    def _failed(self, hook: str, exc: BaseException, record: Dict[str, Any]) -> None:
        """Count a failed hook; warn on stderr the first time this hook fails."""
        text = exc.one_line() if hasattr(exc, "one_line") else "{}: {}".format(
            type(exc).__name__, exc)
        record.setdefault("errors", {})[hook] = text
        with self._lock:
            entry = self.failures.setdefault(hook, {"count": 0, "error": text,
                                                    "lost": FIGURES_OF_HOOK.get(hook, hook)})
            entry["count"] += 1
            first = entry["count"] == 1
        if first:
            sys.stderr.write("warning: vendor '{}' hook {} failed during the run, {} not "
                             "measured: {}\n".format(self.facade.vendor, hook,
                                                     FIGURES_OF_HOOK.get(hook, "its figures"),
                                                     text))
            sys.stderr.flush()

    def sample(self, event: str = "") -> Dict[str, Any]:
        """Take one sample now (also called at epoch ends) and append it to the file."""
        record: Dict[str, Any] = {"time": time.time(), "phase": self.phase}
        if event:
            record["event"] = event
        try:
            memory = self.facade.memory_query(self.device)
            record.update({"mem_used_bytes": memory.used_bytes,
                           "mem_total_bytes": memory.total_bytes, "mem_source": memory.source})
        except Exception as exc:  # a monitor never takes the run down, but says so
            self._failed("device_memory_query", exc, record)
        try:
            values = self.facade.sample(self.device)
            record.update({k: v for k, v in values.items() if isinstance(v, (int, float))})
        except Exception as exc:
            self._failed("device_sample", exc, record)
        if self.host is not None:
            try:
                record.update(self.host.sample())
            except Exception as exc:  # psutil races with exiting workers: skip this sample
                record.setdefault("errors", {})["host"] = str(exc)
        with self._lock:
            if "errors" in record:
                self.errors += 1
            if "mem_used_bytes" in record:
                used = record["mem_used_bytes"]
                self.peak_used = used if self.peak_used is None else max(self.peak_used, used)
                self.total = record["mem_total_bytes"]
                self.source = record["mem_source"]
            self.samples += 1
            with open(self.path, "a") as handle:
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
        return self.summary()

    def summary(self) -> Dict[str, Any]:
        """Peak memory, sample and error counts, and the failed hooks (hook -> count, error)."""
        with self._lock:
            return {"mem_used_peak_bytes": self.peak_used, "mem_total_bytes": self.total,
                    "mem_source": self.source, "monitor_samples": self.samples,
                    "monitor_errors": self.errors,
                    "monitor_failures": {k: dict(v) for k, v in self.failures.items()}}


def read_samples(path: Path) -> List[Dict[str, Any]]:
    """The samples of one monitor file: unreadable lines and lines without a numeric ``time`` are
    skipped, and so are values that are neither text nor a finite number (a hand-edited or
    truncated file still charts)."""
    samples = []
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
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
                  ("host_cpu_percent", "host CPU", "%", 1.0),
                  ("workers_cpu_percent", "data-loader workers CPU", "%", 1.0),
                  ("host_mem_used_bytes", "host memory", "GiB", 2.0**30))


def summarize(samples: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Mean and maximum of every sampled figure: rows of (figure, unit, mean, max, samples)."""
    rows = []
    for key, label, unit, scale in SUMMARY_FIELDS:
        values = [s[key] / scale for s in samples if isinstance(s.get(key), (int, float))]
        if values:
            rows.append({"figure": label, "unit": unit, "mean": sum(values) / len(values),
                         "max": max(values), "samples": len(values)})
    return rows
