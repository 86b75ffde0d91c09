"""The monitor's JSON-lines files read back: samples as a run folder holds them (untrusted: bounded
reads, bad lines skipped) and the mean and maximum of each sampled figure for the report."""

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from chipbench.measure.metrics import is_number
from chipbench.util import safeio


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


def monitor_files(run_dir: Path) -> List[Tuple[str, List[Dict[str, Any]]]]:
    """Every rank's monitor samples of a run folder, rank order."""
    paths = sorted((Path(run_dir) / "monitor").glob("rank*.jsonl"),
                   key=lambda p: int(p.stem[4:] or 0) if p.stem[4:].isdigit() else 0)
    return [(p.stem, read_samples(p)) for p in paths]


def memory_source(files: Sequence[Tuple[str, List[Dict[str, Any]]]]) -> str:
    """Where the sampled memory figures came from, as the samples record it (the vendor's
    ``MemoryInfo.source``: "cudaMemGetInfo", "psutil (process RSS / machine total)"); several
    joined by "; ", "" where no sample says."""
    found: List[str] = []
    for _, samples in files:
        for sample in samples:
            source = sample.get("mem_source")
            if isinstance(source, str) and source and source not in found:
                found.append(source)
    return "; ".join(found)


def memory_names(source: str) -> Tuple[str, str]:
    """What the memory figures are, for an axis and for the total's line, from the recorded
    ``source``: a process's resident memory (RSS) against the machine or its cgroup limit, or the
    device-wide used memory against the device total (what the vendor contract asks for)."""
    if not source:
        return "memory used", "total"
    if "RSS" in source:
        return "process resident memory, RSS", ("cgroup memory limit" if "cgroup" in source
                                                else "machine total")
    return "device-wide memory used", "device total"


SUMMARY_FIELDS = (("util_percent", "util", "%", 1.0), ("power_w", "power", "W", 1.0),
                  ("temperature_c", "temperature", "°C", 1.0),
                  ("mem_used_bytes", "device memory", "GiB", 2.0**30),
                  ("host_cpu_percent", "host CPU (whole machine)", "%", 1.0),
                  ("proc_cpu_percent", "run's own CPU (this process, % of one core)", "%", 1.0),
                  ("workers_cpu_percent", "data-loader workers CPU", "%", 1.0),
                  ("host_mem_used_bytes", "host memory", "GiB", 2.0**30))
"""What the report summarises: (sample key, figure, unit, divisor)."""


def summarize(samples: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Mean and maximum of every sampled figure: rows of (figure, unit, mean, max, samples)."""
    rows = []
    memory = memory_names(memory_source([("", samples)]))[0]
    for key, label, unit, scale in SUMMARY_FIELDS:
        if key == "mem_used_bytes" and memory != "memory used":
            label = memory  # the device's, or a process's RSS on the CPU vendor: as recorded
        values = [s[key] / scale for s in samples if isinstance(s.get(key), (int, float))]
        if values:
            rows.append({"figure": label, "unit": unit, "mean": sum(values) / len(values),
                         "max": max(values), "samples": len(values)})
    return rows
