"""Background device monitor: samples memory and util/power/temperature through the hooks.

Samples go to a JSON-lines file; the peak of device-wide used memory is the seed's ``mem`` figure.
"""

import json
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional

from chipbench.device import Device


class DeviceMonitor:
    """Samples ``device`` every ``interval_s`` seconds on a daemon thread until :meth:`stop`."""

    def __init__(self, facade: Device, device: Any, path: Path, interval_s: float = 2.0) -> None:
        self.facade = facade
        self.device = device
        self.path = Path(path)
        self.interval_s = max(float(interval_s), 0.05)
        self.peak_used: Optional[int] = None
        self.total: Optional[int] = None
        self.samples = 0
        self.errors = 0
        self.source = ""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="chipbench-monitor", daemon=True)

    def start(self) -> "DeviceMonitor":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sample("start")
        self._thread.start()
        return self

    def sample(self, event: str = "") -> Dict[str, Any]:
        """Take one sample now (also called at epoch ends) and append it to the file."""
        record: Dict[str, Any] = {"time": time.time()}
        if event:
            record["event"] = event
        try:
            memory = self.facade.memory_query(self.device)
            record.update({"mem_used_bytes": memory.used_bytes,
                           "mem_total_bytes": memory.total_bytes, "mem_source": memory.source})
            record.update(self.facade.sample(self.device))
        except Exception as exc:  # a monitor never takes the run down
            record["error"] = str(exc)
        with self._lock:
            if "error" in record:
                self.errors += 1
            else:
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
        with self._lock:
            return {"mem_used_peak_bytes": self.peak_used, "mem_total_bytes": self.total,
                    "mem_source": self.source, "monitor_samples": self.samples,
                    "monitor_errors": self.errors}
