"""The host's side of every monitor sample: CPU %, memory, and the data-loader workers' CPU, read
through psutil with bookkeeping of its own (vendor plugins may call psutil's module-wide
``cpu_percent`` too, which would reset a shared baseline)."""

from typing import Any, Dict


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
