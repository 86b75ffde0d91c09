"""The seed's throughput and memory figures, with FlagPerf's defects fixed (docs/metrics.md).

Per rank, a :class:`RunMeter` counts the images actually processed and three times: training
(without evaluation), evaluation, and *core* (forward + backward + optimizer step only, each
interval opened and closed by the vendor's synchronize hook). Over ranks, images are summed and
times taken from the slowest rank:

- ``p_whole = images / (train + eval seconds)``
- ``p_train = images / train seconds``
- ``p_core  = core images / core seconds``

The core interval may be timed on 1 in N iterations only (a case's choice: each timed interval
makes the host wait for the device twice); ``core images`` are the images of the timed iterations,
all of them when every iteration is timed.

``data_seconds`` is the part of the training time that the loop waited for its batches (blocked
in ``next()`` on the loader, ``RunContext.batches``): over ranks the slowest rank's, like the
training time. A large share of ``train_seconds`` says the input pipeline, not the device, set
``p_train``.
"""

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional

if TYPE_CHECKING:
    from typing_extensions import TypeGuard

FIGURES = ("p_whole", "p_train", "p_core", "images", "core_images", "iterations", "epochs",
           "train_seconds", "eval_seconds", "core_seconds", "data_seconds", "mem_used_peak_bytes",
           "mem_total_bytes", "allocator_peak_bytes")
"""The counts, times, rates and sizes a run reports in its final metrics: each None or a
:func:`is_count`."""


def is_number(value: Any) -> "TypeGuard[float]":
    """A finite int or float (a bool is not a number here; nor is an int beyond a float's range,
    which no figure can be turned into)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int of hundreds of digits
        return False


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None, so that it is strict JSON (jq, browsers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def is_count(value: Any) -> "TypeGuard[float]":
    """A finite number >= 0."""
    return is_number(value) and value >= 0


def reached(value: Any, target: Any) -> bool:
    """Whether a metric ``value`` reached ``target``: both numbers, and value >= target (what
    "converged" means; a case's or a result file's own flag is not taken on its word)."""
    return bool(is_number(value) and is_number(target) and value >= target)


RESERVED_KEYS = FIGURES + (
    "e2e_time", "converged", "mem", "mfu", "achieved_tflops", "peak_tflops", "flops_per_image",
    "flops_note", "peak_note", "ranks", "monitor_errors", "throughput_note", "mem_used_peak_gib",
    "mfu_flag", "cpu_share", "mem_total_gib", "allocator_peak_gib", "config", "precision",
    "fix_hp", "loss", "lr", "epoch")
"""Keys chipbench itself writes into a run's metrics or shows as columns: no case's target
metric may be named like one (it would replace that column)."""

SUMMED = ("images", "iterations", "monitor_errors")
MAXED = ("train_seconds", "eval_seconds", "core_seconds", "data_seconds", "mem_used_peak_bytes",
         "mem_total_bytes", "allocator_peak_bytes")


@dataclass
class RunMeter:
    """Counters of one rank. Iterations before ``skip_iters`` are run but not counted."""

    skip_iters: int = 0
    iterations: int = 0
    seen_iterations: int = 0
    images: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    core_seconds: float = 0.0
    core_images: int = 0
    data_seconds: float = 0.0
    """Of ``train_seconds``: the time the loop waited for batches (counted iterations only)."""

    @classmethod
    def from_state(cls, state: Dict[str, Any]) -> "RunMeter":
        """The meter :meth:`state` saved (one saved before ``core_images`` existed timed every
        iteration; one saved before ``data_seconds`` existed measured no wait: 0.0)."""
        state = dict(state)
        state.setdefault("core_images", state.get("images", 0))
        state.setdefault("data_seconds", 0.0)
        return cls(**state)

    def counting(self) -> bool:
        """Whether the current iteration counts towards throughput."""
        return self.seen_iterations >= self.skip_iters

    def add_iteration(self, images: int, core_seconds: Optional[float]) -> None:
        """Record one training iteration of ``images`` images; ``core_seconds`` is None when its
        forward + backward + step was not timed."""
        if self.counting():
            self.iterations += 1
            self.images += images
            if core_seconds is not None:
                self.core_images += images
                self.core_seconds += core_seconds
        self.seen_iterations += 1

    def add_data_wait(self, seconds: float) -> None:
        """Record the time spent waiting for the batch of the coming iteration (counted only
        where that iteration counts)."""
        if self.counting():
            self.data_seconds += max(0.0, seconds)

    def state(self) -> Dict[str, Any]:
        """The counters as plain data (a checkpoint's ``meter``; :meth:`from_state` reads it)."""
        return asdict(self)


def reduce_ranks(per_rank: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Combine the counters of every rank: counts summed, times and memory from the maximum."""
    reduced: Dict[str, Any] = {}
    for key in SUMMED:
        reduced[key] = sum(int(r.get(key, 0)) for r in per_rank)
    for key in MAXED:
        values = [r[key] for r in per_rank if r.get(key) is not None]
        reduced[key] = max(values) if values else None
    # counters from before core_images existed timed every iteration
    reduced["core_images"] = sum(int(r.get("core_images", r.get("images", 0))) for r in per_rank)
    reduced["whole_seconds"] = max(
        (r.get("train_seconds", 0.0) + r.get("eval_seconds", 0.0) for r in per_rank), default=0.0)
    reduced["ranks"] = len(per_rank)
    reduced["monitor_failures"] = merge_failures(r.get("monitor_failures") or {} for r in per_rank)
    reduced["mem_source"] = per_rank[0].get("mem_source", "") if per_rank else ""
    from chipbench.measure.monitor import reduce_cpu_share  # the monitor defines the share

    reduced["cpu_share"] = reduce_cpu_share([r.get("cpu_share") for r in per_rank])
    return reduced


def merge_failures(parts: Iterable[Dict[str, Dict[str, Any]]]) -> Dict[str, Dict[str, Any]]:
    """Failed monitor hooks of every rank: counts summed, the first error kept."""
    merged: Dict[str, Dict[str, Any]] = {}
    for part in parts:
        for hook, entry in part.items():
            if hook in merged:
                merged[hook]["count"] += int(entry.get("count", 0))
            else:
                merged[hook] = dict(entry)
    return merged


def _rate(images: int, seconds: Optional[float]) -> Optional[float]:
    return images / seconds if seconds else None


def throughput(reduced: Dict[str, Any]) -> Dict[str, Optional[float]]:
    """``p_whole``, ``p_train`` and ``p_core`` in images per second from reduced counters."""
    images = reduced["images"]
    return {"p_whole": _rate(images, reduced.get("whole_seconds")),
            "p_train": _rate(images, reduced.get("train_seconds")),
            "p_core": _rate(reduced.get("core_images", images), reduced.get("core_seconds"))}


def gib(value: Optional[float]) -> Optional[float]:
    return None if value is None else value / 2**30


def mem_text(used_bytes: Optional[float], total_bytes: Optional[float]) -> str:
    """The seed's ``mem`` cell: ``37.5/64.0`` (GiB)."""
    if used_bytes is None or total_bytes is None:
        return "/"
    return "{:.1f}/{:.1f}".format(used_bytes / 2**30, total_bytes / 2**30)
