"""The charts of runs: per-epoch loss, metric and data wait, memory, the monitor timeline, and
the charts of ``core compare`` (drawn by :mod:`chipbench.outputs.svgchart`).

Memory axes run from 0 to the total of the memory source the run recorded and are named after it.
Phases of the training (evaluation, checkpoint) are shaded on one run's timeline; where several
runs are overlaid each run's phases get a lane of their own.
"""

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from chipbench.measure.metrics import is_count, is_number
from chipbench.measure.monitor_samples import memory_names, memory_source, monitor_files, read_samples  # noqa: F401
from chipbench.outputs.svgchart import (  # noqa: F401 (the drawing primitives, importable from here too)
    COLOURS,
    LEFT,
    PHASE_COLOURS,
    RIGHT,
    WIDTH,
    Lane,
    Panel,
    Series,
    bar_chart,
    chart,
    nice_ticks,
    short,
    tick_text,
)
from chipbench.run.resultrecord import EpochRecord
from chipbench.util import safeio

# -- the charts of a run ----------------------------------------------------------------------------


def _per_epoch(epochs: Sequence[EpochRecord], key: str) -> List[Tuple[float, float]]:
    """``(epoch counted from 1, value of key)`` of the epochs that hold numbers for both."""
    return [(e.epoch + 1, e.value(key)) for e in epochs
            if e.epoch is not None and is_number(e.epoch) and is_number(e.value(key))]


def epoch_seconds(epochs: Sequence[EpochRecord], key: str) -> Dict[int, float]:
    """Seconds of ``key`` (``train_seconds``, ``data_seconds``) spent in each epoch alone, by epoch
    number (from 0). An epoch's record holds the run's totals so far, so an epoch's own time is its
    total less the previous epoch's; an epoch whose previous record lacks the figure is left out."""
    totals = {int(e.epoch): float(e.value(key)) for e in epochs
              if e.epoch is not None and is_count(e.epoch) and e.epoch == int(e.epoch)
              and is_count(e.value(key))}
    found = {}
    for epoch in sorted(totals):
        before = 0.0 if epoch == 0 else totals.get(epoch - 1)
        if before is not None and totals[epoch] >= before:
            found[epoch] = totals[epoch] - before
    return found


def epochs_chart(runs: Sequence[Tuple[str, Sequence[EpochRecord]]], target: Optional[float],
                 metric: str = "mAP") -> str:
    """Loss (top) and the case's quality ``metric`` (0..1, target line) per epoch of one run or
    several; below them, where a run recorded its data wait, each epoch's training time and the
    part of it spent waiting for the data loader (dashed)."""
    loss, scores, times = [], [], []
    for index, (name, epochs) in enumerate(runs):
        colour = COLOURS[index % len(COLOURS)]
        loss.append(Series(name, colour, _per_epoch(epochs, "loss")))
        scores.append(Series(name, colour, _per_epoch(epochs, metric)))
        waits = epoch_seconds(epochs, "data_seconds")
        if waits:
            trained = epoch_seconds(epochs, "train_seconds")
            times.append(Series(name + ": train", colour,
                                [(e + 1, v) for e, v in sorted(trained.items())]))
            times.append(Series(name + ": data wait", colour,
                                [(e + 1, v) for e, v in sorted(waits.items())], dashed=True))
    top = max([y for s in scores for _, y in s.points] + [target or 0.0, 0.05])
    hlines = [(float(target), "target {} {:g}".format(metric, target))] if target is not None else []
    label = "mAP (COCO bbox AP@[.50:.95])" if metric == "mAP" else metric
    panels = [Panel("training loss (mean of the epoch)", loss),
              Panel(label, scores, y_range=(0.0, min(1.0, top * 1.1)), hlines=hlines)]
    if times:
        panels.append(Panel("time per epoch (s)", times))
    return chart("training loss and {} per epoch".format(metric), "epoch (counted from 1)", panels,
                 integer_x=True)


def phase_bands(samples: List[Dict[str, Any]], start: float) -> List[Tuple[float, float, str]]:
    """Consecutive samples of one phase as shaded ranges (the training phase stays unshaded)."""
    bands: List[Tuple[float, float, str]] = []
    for sample, following in zip(samples, samples[1:] + samples[-1:]):
        phase = sample.get("phase", "")
        if phase in ("", "train"):
            continue
        x0, x1 = sample["time"] - start, following["time"] - start
        if bands and bands[-1][2] == phase and abs(bands[-1][1] - x0) < 1e-9:
            bands[-1] = (bands[-1][0], x1, phase)
        else:
            bands.append((x0, x1, phase))
    return bands


def memory_chart(files: Sequence[Tuple[str, List[Dict[str, Any]]]]) -> str:
    """Used memory per rank over time, from 0 to the total; title and axis name the memory source
    that the samples record (:func:`memory_names`)."""
    series, total = [], 0.0
    start = min((s[0]["time"] for _, s in files if s), default=0.0)
    for index, (name, samples) in enumerate(files):
        points = [(s["time"] - start, s["mem_used_bytes"] / 2**30) for s in samples
                  if is_number(s.get("mem_used_bytes"))]
        total = max([total] + [s["mem_total_bytes"] / 2**30 for s in samples
                               if is_count(s.get("mem_total_bytes"))])
        series.append(Series(name, COLOURS[index % len(COLOURS)], points))
    source = memory_source(files)
    what, total_name = memory_names(source)
    hlines = [(total, "{} {:.1f} GiB".format(total_name, total))] if total else []
    title = "memory used, source: {}".format(source or "not recorded")
    return chart(title, "time since start (s)",
                 [Panel("{} (GiB)".format(what), series,
                        y_range=(0.0, total * 1.02) if total else None, hlines=hlines)])


TIMELINE_PANELS = (("util_percent", "device util (%)", 1.0, (0.0, 100.0)),
                   ("power_w", "device power (W)", 1.0, None),
                   ("temperature_c", "device temperature (°C)", 1.0, None),
                   ("mem_used_bytes", "", 2.0**30, None),  # named after the memory source
                   ("host_cpu_percent", "host CPU (%)", 1.0, (0.0, 100.0)),
                   ("workers_cpu_percent", "data-loader workers CPU (% of one core)", 1.0, None),
                   ("host_mem_used_bytes", "host memory used (GiB)", 2.0**30, None))


def timeline_chart(runs: Sequence[Tuple[str, List[Dict[str, Any]]]], title: str) -> str:
    """The monitor timeline: one panel per sampled figure, each run (or rank) a line. One run's
    evaluation and checkpoint phases are shaded in every panel; several runs each get a lane of
    their own in a phases panel on top (each run's time counted from its own start)."""
    runs = [(name, samples) for name, samples in runs if samples]
    panels = []
    lanes = [Lane(name, COLOURS[index % len(COLOURS)],
                  (0.0, samples[-1]["time"] - samples[0]["time"]),
                  phase_bands(samples, samples[0]["time"]))
             for index, (name, samples) in enumerate(runs)]
    bands = lanes[0].bands if len(lanes) == 1 else []
    if len(lanes) > 1:
        panels.append(Panel("phases of each run", [], lanes=lanes))
    for key, label, scale, y_range in TIMELINE_PANELS:
        series = []
        for index, (name, samples) in enumerate(runs):
            start = samples[0]["time"]
            points = [(s["time"] - start, s[key] / scale) for s in samples
                      if isinstance(s.get(key), (int, float))]
            if points:
                series.append(Series(name, COLOURS[index % len(COLOURS)], points))
        if series:
            label = label or "{} (GiB)".format(memory_names(memory_source(runs))[0])
            panels.append(Panel(label, series, y_range=y_range, bands=bands))
    if not panels:
        panels.append(Panel("no samples", []))
    return chart(title, "time since start (s)", panels)


def write_plots(run_dir: Path, epochs: Sequence[EpochRecord], target: Optional[float] = None,
                metric: str = "mAP",
                monitor: Optional[List[Tuple[str, List[Dict[str, Any]]]]] = None) -> List[Path]:
    """Write ``plots/epochs.svg``, ``plots/memory.svg`` and ``plots/timeline.svg`` (those that
    have data); returns the files written. ``monitor`` is :func:`monitor_files` of the run
    where the caller has read it already."""
    folder = Path(run_dir) / "plots"
    safeio.ensure_folder(folder, what="run folder")
    written = []
    if epochs:
        safeio.write_atomic(folder / "epochs.svg", epochs_chart([("this run", epochs)], target,
                                                                metric), what="run file")
        written.append(folder / "epochs.svg")
    if monitor is None:
        monitor = monitor_files(run_dir)
    files = [(name, samples) for name, samples in monitor if samples]
    if files:
        safeio.write_atomic(folder / "memory.svg", memory_chart(files), what="run file")
        safeio.write_atomic(folder / "timeline.svg", timeline_chart(files, "monitor timeline"),
                            what="run file")
        written += [folder / "memory.svg", folder / "timeline.svg"]
    return written
