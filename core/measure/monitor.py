"""Background monitor: samples the device (memory, util, power, temperature) through the vendor's
hooks and the host (CPU %, memory, data-loader workers' CPU) through psutil.

Every sample goes to a JSON-lines file with its timestamp and the training phase (``train``,
``eval``, ``checkpoint``) that the case announced with :meth:`DeviceMonitor.set_phase`; the peak
of device-wide used memory is the seed's ``mem`` figure. A hook that raises or returns the wrong
type never stops the run, and is never hidden either: one warning on stderr per hook, a count in
the summary (``monitor_failures``), and the report names the figures it cost.

Nor does a slow hook stretch the run. While the monitor runs, every call of an observing hook
(:data:`chipbench.host.contract.TIME_BOUNDED_HOOKS`: memory, samples, the allocator peak), whoever makes it,
is waited for at most ``$CHIPBENCH_HOOK_TIMEOUT_S`` seconds (default 5); a hook that has not
answered by then is reported once (stderr and the rank's log), counted like a failing one, and
not called again in this run: its figures are not measured.

The host's side of a sample is :mod:`chipbench.measure.samplers`, the run's CPU share that the samples
add up to is :mod:`chipbench.measure.cpu_share`, and reading the files back is
:mod:`chipbench.measure.monitor_samples` (their names stay importable from here).
"""

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from chipbench.errors import TRACE, HookTimedOut
from chipbench.host.deadlines import CallTimedOut, call_with_timeout, env_seconds
from chipbench.host.device import Device
from chipbench.measure.cpu_share import (  # noqa: F401 - chipbench.measure.monitor's names too
    SHARE_RATIO,
    STARVED_SHARE,
    CpuShare,
    cpu_share,
    machine_cores,
    reduce_cpu_share,
    starved_warning,
    torch_threads,
)
from chipbench.measure.monitor_samples import SUMMARY_FIELDS, read_samples, summarize  # noqa: F401
from chipbench.measure.samplers import HostSampler
from chipbench.util import safeio

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
