"""Render a run's ``report.md``: the seed's two tables and its hardware/software section.

A built-in observer plugin: it renders on ``on_run_end`` from the result that the runner has
already written to ``result.json`` (blocking the plugin drops the Markdown, never the data).
"""

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from chipbench.errors import UserError
from chipbench.hookspecs import hookimpl
from chipbench.measure.metrics import is_count, is_number, mem_text
from chipbench.measure.profiling import profile_lines, profile_warning
from chipbench.run.resultrecord import Metrics, RunResult
from chipbench.util import safeio
from chipbench.util.text import VALUE_LIMIT, markdown_cell, terminal_table

PERF_COLUMNS = ("config", "precision", "fix_hp", "e2e_time", "p_whole", "p_train", "p_core",
                "mAP", "mem")
MonitorSummary = Dict[str, List[Dict[str, Any]]]
"""Each rank's mean and maximum of every sampled figure (:func:`chipbench.measure.monitor.summarize`)."""


def _fmt(value: object, digits: int = 2) -> str:
    """A figure as a table shows it: ``/`` where missing, floats to ``digits`` places; text as it
    is (each output escapes it for where it goes)."""
    if value is None or value == "":
        return "/"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isfinite(value) and abs(value) >= 1e12:  # no 300-digit cells
            return "{:.4g}".format(value)
        return "{:.{}f}".format(value, digits)
    return str(value)


CELL_LIMIT = 1000
"""Characters of one table cell (fix_hp lists every changed setting; a row_label may be long)."""
TEXT_LIMIT = 2000
"""Characters of one other text of a result in report.md (a recorded error, a note)."""


def md(value: object, limit: int = VALUE_LIMIT) -> str:
    """Text of a result as report.md shows it: one Markdown cell, cut to ``limit`` characters."""
    return markdown_cell(value, limit)


def perf_columns(result: RunResult) -> Tuple[str, ...]:
    """The table's columns: the seed's, with the case's target metric where the seed has mAP."""
    metric = result.metric_name
    return tuple(metric if c == "mAP" else c for c in PERF_COLUMNS)


def perf_row(record: RunResult) -> Dict[str, str]:
    """The seed's performance row of one result, as strings (the metric under its own name)."""
    metrics = record.metrics
    return {
        "config": "/" if record.row_label is None else record.row_label,
        "precision": "/" if record.precision is None else record.precision,
        "fix_hp": record.fix_hp or "/",
        "e2e_time": _fmt(metrics.e2e_time, 1),
        "p_whole": _fmt(metrics.p_whole),
        "p_train": _fmt(metrics.p_train),
        "p_core": _fmt(metrics.p_core),
        record.metric_name: _fmt(metrics.value(record.metric_name), 4),
        "mem": mem_text(metrics.mem_used_peak_bytes, metrics.mem_total_bytes),
    }


def markdown_table(rows: List[Dict[str, str]], columns: Sequence[str] = PERF_COLUMNS) -> str:
    """The performance table in Markdown; every header and cell escaped (:func:`md`), so no
    text of a result can add a row or shift the columns."""
    lines = ["| " + " | ".join(md(c, CELL_LIMIT) for c in columns) + " |",
             "|" + "|".join(" --- " for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(md(row.get(c, "/"), CELL_LIMIT) for c in columns) + " |")
    return "\n".join(lines)


def text_table(rows: List[Dict[str, str]], columns: Sequence[str] = PERF_COLUMNS) -> str:
    """The performance table aligned for a terminal; every header and cell escaped and cut."""
    return terminal_table(rows, columns, VALUE_LIMIT, missing="/")


def flops_lines(metrics: Metrics) -> List[str]:
    """FLOPs per image, achieved TFLOP/s and MFU, or "n/a" with the reason (docs/metrics.md).
    The MFU is checked again here (:func:`chipbench.measure.flops.checked_mfu`): one above 100 % is
    never shown as a figure, whatever the file says."""
    from chipbench.measure.flops import checked_mfu

    metrics = Metrics.from_json(checked_mfu(metrics.to_json()), "result.json")
    if not metrics.flops_per_image:
        return ["- FLOPs per image (training step): n/a{}; achieved TFLOP/s and MFU: n/a".format(
            " (" + md(metrics.flops_note, TEXT_LIMIT) + ")" if metrics.flops_note else "")]
    achieved = metrics.achieved_tflops
    lines = ["- FLOPs per image (training step, forward + backward): {:.3g} GFLOP; achieved: {} "
             "TFLOP/s (FLOPs per image x p_core)".format(
                 metrics.flops_per_image / 1e9, "/" if achieved is None else "{:.3g}".format(achieved))]
    if metrics.mfu_flag:
        lines.append("- **{}**".format(md(metrics.mfu_flag, TEXT_LIMIT)))
    elif metrics.mfu is not None:
        peak = metrics.peak_tflops  # none recorded beside an MFU: "?" (it raised before)
        lines.append("- MFU: {:.2%} of a peak of {} TFLOP/s (all devices)".format(
            metrics.mfu, "?" if peak is None else "{:.3g}".format(peak)))
    else:
        lines.append("- MFU: n/a ({})".format(md(metrics.peak_note or "no peak known", TEXT_LIMIT)))
    return lines


def cpu_share_lines(metrics: Metrics) -> List[str]:
    """The run's own CPU share while training (``metrics.cpu_share``, docs/metrics.md): what the
    process and its loader workers got, against the whole machine's load, and on the CPU device
    against the cores the run asked for."""
    share = metrics.cpu_share
    if share is None or not is_number(share.get("own_percent")):
        return []
    line = ("- run's own CPU while training: {:.0f} % of one core (process and loader workers; "
            "the whole machine {} % busy over {} core(s))".format(
                share["own_percent"], md(_fmt(share.get("host_percent"), 0)),
                md(_fmt(share.get("cores")))))
    if is_number(share.get("compute_share")):
        line += "; its compute got {:.0%} of the {} core(s) its {} thread(s) asked for " \
                "(the process alone: {} % of one core)".format(
                    share["compute_share"], md(_fmt(share.get("asked_cores"), 1)),
                    md(_fmt(share.get("threads"))), md(_fmt(share.get("process_percent"), 0)))
    return [line]


def starved_lines(metrics: Metrics) -> List[str]:
    """A loud warning where the run was starved of CPU (:func:`chipbench.measure.monitor.starved_warning`)."""
    from chipbench.measure.monitor import starved_warning

    warning = starved_warning(metrics.cpu_share)
    return ["", "> **WARNING: {}**".format(md(warning, TEXT_LIMIT))] if warning else []


DATA_WAIT_SHARE = 0.10
"""Share of the training time spent waiting for the data loader above which report.md warns that
the loader, not the device, set p_train (docs/metrics.md)."""


def data_wait(result: RunResult) -> Optional[Tuple[float, float]]:
    """``(seconds training waited for data, training seconds)`` of the whole run: the final
    metrics', else the last epoch's that has both (run totals); None for a run that did not
    record its data wait (older chipbench)."""
    records: List[Metrics] = [result.metrics] + list(reversed(result.epochs or []))
    for record in records:
        waited, trained = record.data_seconds, record.train_seconds
        if is_count(waited) and is_count(trained) and trained > 0:
            return float(waited), float(trained)
    return None


def data_wait_warning(result: RunResult) -> str:
    """"p_train is X of p_core; training waited N s (P %) for data: ..." where the wait is over
    :data:`DATA_WAIT_SHARE` of the training time; "" otherwise."""
    wait = data_wait(result)
    if wait is None or wait[0] <= DATA_WAIT_SHARE * wait[1]:
        return ""
    p_train, p_core = result.metrics.p_train, result.metrics.p_core
    ratio = "p_train is {:.0%} of p_core; ".format(p_train / p_core) \
        if is_count(p_train) and is_count(p_core) and p_core > 0 else ""
    return ("the data loader held the device back: {}training waited {:.1f} s ({:.0%} of its "
            "{:.1f} s) for data, over the {:.0%} threshold: give the loader more workers, or "
            "faster storage".format(ratio, wait[0], wait[0] / wait[1], wait[1], DATA_WAIT_SHARE))


def epoch_lines(result: RunResult) -> List[str]:
    """Per epoch: loss, training time and the data wait in it (seconds and share); only for a run
    that recorded its data wait."""
    from chipbench.outputs.plots import epoch_seconds

    waits = epoch_seconds(result.epochs or [], "data_seconds")
    if not waits:
        return []
    trained = epoch_seconds(result.epochs or [], "train_seconds")
    losses = {e.epoch: e.value("loss") for e in result.epochs or [] if is_count(e.epoch)}
    lines = ["", "## Per epoch", "", "| epoch (counted from 1) | loss | train (s) | data wait (s) "
             "| data wait (% of train) |", "| --- | --- | --- | --- | --- |"]
    for epoch in sorted(waits):
        train = trained.get(epoch)
        share = "{:.1f}".format(100 * waits[epoch] / train) if train else "/"
        lines.append("| {} | {} | {} | {:.2f} | {} |".format(
            epoch + 1, md(_fmt(losses.get(epoch), 4)), md(_fmt(train)), waits[epoch], share))
    return lines


def monitor_lines(summary: Optional[MonitorSummary]) -> List[str]:
    """Mean and maximum of every sampled figure, per rank (one rank per device)."""
    if not summary:
        return []
    lines = ["", "## Monitor", "", "Sampled every `run.monitor_interval_s` through the vendor's "
             "hooks (device) and psutil (host); the timeline plot shades the evaluation, "
             "checkpoint and data-wait phases.", "", "| rank | figure | mean | max | samples |",
             "| --- | --- | --- | --- | --- |"]
    for rank in sorted(summary, key=lambda r: int(r[4:]) if r[4:].isdigit() else 0):
        for row in summary[rank]:
            lines.append("| {} | {} ({}) | {:.1f} | {:.1f} | {} |".format(
                md(rank), md(row["figure"]), md(row["unit"]), row["mean"], row["max"],
                md(row["samples"])))
    return lines


def not_measured_lines(metrics: Metrics) -> List[str]:
    """Lines naming each figure a misbehaving vendor hook cost, with the hook's error."""
    failures = metrics.value("monitor_failures")
    lines: List[str] = []
    if not isinstance(failures, dict):  # none, or a hand-edited file's other kind
        return lines
    for hook in sorted(failures, key=str):
        entry = failures[hook] if isinstance(failures[hook], dict) else {}
        lines.append("- **not measured: {}**: hook {} of the vendor failed {} time(s) during the "
                     "run: {}".format(md(entry.get("lost", hook)), md(hook),
                                      md(entry.get("count", "?")),
                                      md(entry.get("error", "?"), TEXT_LIMIT)))
    return lines


DATA_FACTS = (("train_images", "train images"), ("val_images", "val images"),
              ("train_annotations", "train annotations (boxes)"),
              ("val_annotations", "val annotations (boxes)"),
              ("train_images_dropped", "train images dropped (no annotations)"),
              ("boxes_dropped", "boxes dropped (invalid)"), ("num_classes", "classes"),
              ("min_size", "input min_size (px)"), ("max_size", "input max_size (px)"))
"""Data facts chipbench knows by name, with their labels; a case's other facts show by key."""
CAVEATS_KEY = "caveats"
"""The key of ``result.json``'s ``data`` that holds the case's caveats (one-line texts)."""
CAVEATS_SHOWN = 50
"""Caveats listed at most (a forged file may hold any number)."""


def _fact_text(value: object) -> str:
    """A data fact as its table cell shows it: lists and dicts as JSON."""
    return json.dumps(value) if isinstance(value, (dict, list)) else _fmt(value)


def data_lines(result: RunResult) -> List[str]:
    """The data facts section: the facts the case recorded, known ones under their labels
    (:data:`DATA_FACTS`), the case's others by key; facts without a value are left out, and a
    case's fact that repeats a known one (same label, same value) is shown once."""
    data = result.data or {}
    lines = ["", "## Data", ""]
    known = {key for key, _ in DATA_FACTS} | {CAVEATS_KEY}
    facts = [(label, data.get(key)) for key, label in DATA_FACTS]
    facts += [(key, data[key]) for key in sorted(data, key=str) if key not in known]
    rows: List[Tuple[str, str]] = []
    for label, value in facts:
        row = (md(label), md(_fact_text(value), CELL_LIMIT))
        if value is not None and value != "" and row not in rows:
            rows.append(row)
    if not rows:
        return lines + ["Data facts were not recorded by this run (older chipbench, or the case "
                        "does not report them)."]
    return lines + ["| fact | value |", "| --- | --- |"] + ["| {} | {} |".format(*r) for r in rows]


def caveat_lines(data: Mapping[str, object]) -> List[str]:
    """The case's caveats (``data.caveats``: what the figures rest on, e.g. a small or overlapping
    data set, random initial weights), each verbatim on its own escaped line; none: no section."""
    found = data.get(CAVEATS_KEY)
    caveats = [found] if isinstance(found, str) else found if isinstance(found, list) else []
    caveats = [c for c in caveats if c is not None and c != ""]
    if not caveats:
        return []
    lines = ["", "## What these figures rest on", "", "As the case states it:", ""]
    lines += ["- " + md(c, TEXT_LIMIT) for c in caveats[:CAVEATS_SHOWN]]
    if len(caveats) > CAVEATS_SHOWN:
        lines.append("- ... and {} more (result.json)".format(len(caveats) - CAVEATS_SHOWN))
    return lines


def eval_backend(result: RunResult) -> object:
    """The run's evaluation backend (the resolved one, else the configured one); None without."""
    evaluation = (result.config or {}).get("eval")
    configured = evaluation.get("backend") if isinstance(evaluation, dict) else None
    return result.metrics.value("eval_backend") or configured


def run_facts_lines(result: RunResult) -> List[str]:
    """How the figures were taken: evaluation backend (where the run has one) and time, warm-up
    left out of throughput."""
    train = (result.config or {}).get("train") or {}
    evals = sum(1 for e in result.epochs or [] if e.value(result.metric_name) is not None)
    backend = eval_backend(result)
    return ["- {}evaluation time: {} s over {} evaluation(s)".format(
                "evaluation backend: {}; ".format(md(_fmt(backend))) if backend else "",
                md(_fmt(result.metrics.eval_seconds, 1)), evals),
            "- warm-up iterations left out of p_whole/p_train/p_core: {}".format(
                md(_fmt(train.get("throughput_skip_iters", 0)) if isinstance(train, dict)
                   else "/"))]


def head_lines(result: RunResult) -> List[str]:
    """Title, status, the run's note (a node without rank 0, a rebuilt record), the case's one
    data note (its ``dataset_note``), the warnings and the case's caveats: what a reader must know
    before any figure."""
    lines = ["# {} on {}".format(md(result.case), md("?" if result.row_label is None
                                                      else result.row_label)), ""]
    lines.append("Status: **{}**{}".format(md(result.status), " ({})".format(
        md(result.error, TEXT_LIMIT)) if result.error else ""))
    if result.note:
        lines += ["", "> **Note: {}**".format(md(result.note, TEXT_LIMIT))]
    if result.dataset_note:
        lines += ["", "> " + md(result.dataset_note, TEXT_LIMIT)]
    lines += starved_lines(result.metrics)
    for warning in (data_wait_warning(result), profile_warning(result)):
        if warning:
            lines += ["", "> **WARNING: {}**".format(md(warning, TEXT_LIMIT))]
    return lines + caveat_lines(result.data or {})


def performance_lines(result: RunResult) -> List[str]:
    """The performance table and the figures under it: convergence, counts, memory, times, data
    wait, FLOPs, CPU share and what could not be measured."""
    metrics = result.metrics
    metric, unit = result.metric_name, "images" if result.sample_unit is None else result.sample_unit
    lines = ["", "## Performance indicators", "",
             markdown_table([perf_row(result)], perf_columns(result)), ""]
    lines += [
        "- converged: {} (target {} {}, reached {})".format(
            md(_fmt(metrics.converged)), md(metric), md(_fmt(result.target)),
            md(_fmt(metrics.value(metric), 4))),
        "- {} trained (all ranks): {}; epochs: {}; iterations: {}; throughputs in {}/s".format(
            md(unit), md(_fmt(metrics.images)), md(_fmt(metrics.epochs)),
            md(_fmt(metrics.iterations)), md(unit)),
        "- allocator peak: {} GiB; memory source: {}".format(
            md(_fmt(metrics.allocator_peak_gib)), md(_fmt(metrics.mem_source))),
        "- times (slowest rank): train {} s, evaluation {} s, core {} s".format(
            md(_fmt(metrics.train_seconds, 1)), md(_fmt(metrics.eval_seconds, 1)),
            md(_fmt(metrics.core_seconds, 1)))]
    wait = data_wait(result)
    if wait is not None:
        lines.append("- data wait: training waited {:.1f} s for the data loader, {:.1%} of its "
                     "{:.1f} s (warning above {:.0%})".format(wait[0], wait[0] / wait[1], wait[1],
                                                            DATA_WAIT_SHARE))
    if metrics.value("throughput_note"):
        lines.append("- " + md(metrics.value("throughput_note"), TEXT_LIMIT))
    return lines + flops_lines(metrics) + cpu_share_lines(metrics) + not_measured_lines(metrics)


def render(record: RunResult, plots: Sequence[str] = (),
           monitor_summary: Optional[MonitorSummary] = None) -> str:
    """The whole ``report.md`` of one result, with its ``plots`` (file names in ``plots/``) and
    its monitor summary; every text of the result is escaped for Markdown (:func:`md`): a field
    cannot add a line, a heading or a table row, nor shift a column."""
    lines = head_lines(record)
    lines += ["", "## General indicators", "", "| indicator | value | note |", "| --- | --- | --- |"]
    for name, value, note in record.general_rows:
        lines.append("| {} | {} | {} |".format(md(name), md(value, CELL_LIMIT), md(note, CELL_LIMIT)))
    lines += performance_lines(record) + epoch_lines(record) + data_lines(record)
    lines += profile_lines(record) + monitor_lines(monitor_summary)
    for name in plots:
        lines += ["", "![{}](plots/{})".format(md(name[:-4]), md(name))]
    lines += ["", "## Hardware and software", ""]
    lines += run_facts_lines(record)
    env = record.environment or {}
    for key in sorted(env):
        value = json.dumps(env[key]) if isinstance(env[key], (dict, list)) else env[key]
        lines.append("- {}: {}".format(md(key), md(value, TEXT_LIMIT)))
    lines += ["", "Per-epoch figures, the resolved config and versions are in result.json.", ""]
    return "\n".join(lines)


def write_report(run_dir: Path, result: RunResult, plots: Sequence[str] = (),
                 monitor_summary: Optional[MonitorSummary] = None) -> Optional[Path]:
    """Write ``report.md`` into ``run_dir`` (UTF-8, never through a link)."""
    path = Path(run_dir) / "report.md"
    safeio.write_atomic(path, render(result, plots, monitor_summary), what="run file")
    return path


@hookimpl
def on_run_end(run: Dict[str, Any], result: Dict[str, Any]) -> None:
    """Render ``report.md`` (and its SVG plots) next to ``result.json``; a result that cannot be
    read gets a report saying so and why."""
    from chipbench.measure.monitor import summarize
    from chipbench.measure.monitor_samples import monitor_files
    from chipbench.outputs.plots import write_plots

    run_dir = Path(run["run_dir"])
    try:
        record = RunResult.from_json(result, run_dir / "result.json")
    except UserError as error:  # not core run's (a hook's caller may hand any): say so and why
        safeio.write_atomic(run_dir / "report.md", "# Run report\n\nThe run's result could not be "
                            "read: {}\n".format(md(error.one_line(), TEXT_LIMIT)), what="run file")
        return
    monitor = monitor_files(run_dir)  # read once: for the plots and the summary
    plots = write_plots(run_dir, record.epochs or [], record.target,
                        metric=record.metric_name, monitor=monitor)
    summary = {name: summarize(samples) for name, samples in monitor if samples}
    write_report(run_dir, record, [p.name for p in plots], summary)
