"""``core run --profile``: a few training iterations recorded by ``torch.profiler``.

The profiler skips the first iterations (allocator and autotuning warm-up), warms up for one, then
records :data:`ACTIVE_ITERATIONS`. Each rank writes a Chrome trace (open it in Perfetto or
chrome://tracing) into the run folder's ``profile/``; rank 0's operators, ranked by their own
device time (host time where the device has no profiler activity), become the report's top-ops
table. It needs no vendor code: the device's activity is the one torch's profiler has for the
device type (or for the PrivateUse1 backend), where it has one, and the host's activity is always
recorded.

A profiled run's throughput includes the profiler's overhead for those iterations: the report and
``core compare`` say so.
"""

import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from chipbench.run.resultrecord import RunResult
from chipbench.util import safeio

PROFILE_DIR = "profile"
"""The run folder's sub-folder of traces."""
SUMMARY_FILE = PROFILE_DIR + "/summary.json"
"""Rank 0's summary (:meth:`StepProfiler.close`), which result.json's ``profile`` holds."""
SKIP_ITERATIONS = 2
"""Iterations left alone before the profiler warms up (first-touch allocation, autotuning)."""
WARMUP_ITERATIONS = 1
"""Iterations the profiler runs without recording (its own start-up cost)."""
ACTIVE_ITERATIONS = 3
"""Iterations recorded."""
TOP_OPS = 15
"""Rows of the top-operators table."""


def device_activity(device_type: str) -> Any:
    """torch.profiler's activity for ``device_type``, or None where torch has none for it."""
    from torch.profiler import ProfilerActivity

    if device_type == "cpu":
        return None
    named = getattr(ProfilerActivity, device_type.upper(), None)
    if named is not None:
        return named
    try:
        import torch

        if device_type == torch._C._get_privateuse1_backend_name():
            return getattr(ProfilerActivity, "PrivateUse1", None)
    except (AttributeError, RuntimeError):  # torch 2.0 has no PrivateUse1 profiling
        pass
    return None


def _milliseconds(event: Any, *names: str) -> float:
    """The first of ``names`` that ``event`` has, in ms (torch gives microseconds)."""
    for name in names:
        value = getattr(event, name, None)
        if isinstance(value, (int, float)):
            return float(value) / 1000.0
    return 0.0


def _device_ms(event: Any, own: bool) -> float:
    """``event``'s (own) device time in ms, whatever torch calls it: ``device_time_total`` from
    torch 2.4, the device type's own name before (``<type>_time_total``); 0 where none."""
    prefix = "self_" if own else ""
    names = ["{}device_time_total".format(prefix)] + sorted(
        n for n in dir(event) if n.endswith("_time_total") and n.startswith(prefix)
        and "cpu" not in n and n.count("_") == prefix.count("_") + 2)
    return _milliseconds(event, *names)


def top_operators(events: Any, by_device: bool, limit: int = TOP_OPS) -> List[Dict[str, Any]]:
    """The ``limit`` operators of ``events`` (``profile.key_averages()``) with the most own time
    on the device (``by_device``) or on the host: name, calls and times in ms."""
    rows: List[Dict[str, Any]] = []
    for event in events:
        if str(event.key).startswith("ProfilerStep"):  # the profiler's own span of each step
            continue
        rows.append({
            "op": str(event.key),
            "calls": int(event.count),
            "self_host_ms": _milliseconds(event, "self_cpu_time_total"),
            "host_ms": _milliseconds(event, "cpu_time_total"),
            "self_device_ms": _device_ms(event, own=True),
            "device_ms": _device_ms(event, own=False),
        })
    key = "self_device_ms" if by_device else "self_host_ms"
    rows.sort(key=lambda row: float(row[key]), reverse=True)
    return rows[:limit]


class StepProfiler:
    """``torch.profiler.profile`` driven by the training loop's :meth:`step` calls."""

    def __init__(self, run_dir: Path, rank: int, device_type: str) -> None:
        import torch.profiler as tp

        self.folder = safeio.ensure_folder(Path(run_dir) / PROFILE_DIR)
        self.rank = rank
        self.trace = self.folder / "trace-rank{}.json".format(rank)
        self.activity = device_activity(device_type)
        activities = [tp.ProfilerActivity.CPU] + ([self.activity] if self.activity else [])
        self.steps = 0
        self.summary: Optional[Dict[str, Any]] = None
        self._profile = tp.profile(
            activities=activities,
            schedule=tp.schedule(wait=SKIP_ITERATIONS, warmup=WARMUP_ITERATIONS,
                                 active=ACTIVE_ITERATIONS, repeat=1),
            on_trace_ready=self._ready, record_shapes=False, with_stack=False)
        self._profile.__enter__()
        self._open = True

    def step(self) -> None:
        """One training iteration ended."""
        if self._open:
            self.steps += 1
            self._profile.step()

    def _ready(self, profile: Any) -> None:
        if self.steps < SKIP_ITERATIONS + WARMUP_ITERATIONS + ACTIVE_ITERATIONS:
            return  # the run ended while recording: a partial profile is no profile
        tmp = self.trace.with_name(self.trace.name + ".tmp")
        os.close(safeio.create_exclusive(tmp, "profiler trace"))
        profile.export_chrome_trace(str(tmp))
        os.replace(str(tmp), str(self.trace))
        events = list(profile.key_averages())  # aggregated anew on every call: once here
        by_device = self.activity is not None and any(_device_ms(e, own=True) > 0 for e in events)
        first = SKIP_ITERATIONS + WARMUP_ITERATIONS + 1
        self.summary = {
            "iterations": [first, first + ACTIVE_ITERATIONS - 1],
            "trace": "{}/{}".format(PROFILE_DIR, self.trace.name),
            "sorted_by": "own device time" if by_device else "own host time",
            "device_activity": str(self.activity).split(".")[-1] if self.activity else None,
            "top_ops": top_operators(events, by_device),
        }

    def close(self) -> Dict[str, Any]:
        """Stop profiling; what was recorded (``result.json``'s ``profile``), or why nothing."""
        if self._open:
            self._open = False
            self._profile.__exit__(None, None, None)
        if self.summary is not None:
            return self.summary
        needed = SKIP_ITERATIONS + WARMUP_ITERATIONS + ACTIVE_ITERATIONS
        return {"error": "{} training iteration(s) ended through ctx.core_step; profiling needs {} "
                         "(the first {} are skipped, {} warms the profiler up)".format(
                             self.steps, needed, SKIP_ITERATIONS, WARMUP_ITERATIONS)}


PROFILED_NOTE = ("profiled run: p_whole, p_train and p_core include the profiler's overhead on "
                 "iterations {}-{}; compare throughput only with unprofiled runs")


def profile_warning(result: RunResult) -> Optional[str]:
    """The report's and ``core compare``'s warning for a profiled run, None for another."""
    return None if result.profile is None else PROFILED_NOTE.format(*result.profile.span)


def profile_lines(result: RunResult) -> List[str]:
    """report.md's profile section: where the trace is and the top operators (every text of the
    result escaped as one Markdown cell)."""
    from chipbench.util.text import markdown_cell as cell

    profile = result.profile
    if profile is None:
        return []
    lines = ["", "## Profile (`core run --profile`)", ""]
    if profile.error:
        return lines + ["- not recorded: " + cell(profile.error, 400)]
    span = profile.span
    lines += ["- iterations {}-{} recorded by torch.profiler; device activity: {}".format(
                  cell(span[0]), cell(span[1]), cell(profile.device_activity or
                                                     "none (host only)")),
              "- trace: `{}` (open it in https://ui.perfetto.dev or chrome://tracing)".format(
                  cell(profile.trace, 200)),
              "- top operators by {}:".format(cell(profile.sorted_by)), "",
              "| operator | calls | own device ms | own host ms | host ms |",
              "| --- | --- | --- | --- | --- |"]
    on_host = not profile.device_activity
    for row in profile.top_ops or []:
        if not isinstance(row, dict):
            continue
        if on_host:  # no device activity was recorded: no device time, rather than 0
            row = dict(row, self_device_ms=None)
        lines.append("| {} | {} | {} | {} | {} |".format(*(cell(_figure(row.get(key)), 200) for key in (
            "op", "calls", "self_device_ms", "self_host_ms", "host_ms"))))
    return lines


def _figure(value: Any) -> str:
    if isinstance(value, float):
        return "{:.3f}".format(value)
    return "/" if value is None else str(value)
