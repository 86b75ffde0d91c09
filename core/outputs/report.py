"""Render a run's ``report.md``: the seed's two tables and its hardware/software section.

A built-in observer plugin: it renders on ``on_run_end`` from the result that the runner has
already written to ``result.json`` (blocking the plugin drops the Markdown, never the data).
"""

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from chipbench.hookspecs import hookimpl
from chipbench.measure.metrics import is_count, mem_text
from chipbench.measure.profiling import profile_lines, profile_warning
from chipbench.util import safeio
from chipbench.util.text import VALUE_LIMIT, markdown_cell, terminal_table

PERF_COLUMNS = ("config", "precision", "fix_hp", "e2e_time", "p_whole", "p_train", "p_core",
                "mAP", "mem")


def _fmt(value: Any, digits: int = 2) -> str:
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


def md(value: Any, limit: int = VALUE_LIMIT) -> str:
    """Text of a result as report.md shows it: one Markdown cell, cut to ``limit`` characters."""
    return markdown_cell(value, limit)


def perf_columns(result: Dict[str, Any]) -> Tuple[str, ...]:
    """The table's columns: the seed's, with the case's target metric where the seed has mAP."""
    metric = result.get("target_metric", "mAP")
    return tuple(metric if c == "mAP" else c for c in PERF_COLUMNS)


def perf_row(result: Dict[str, Any]) -> Dict[str, str]:
    """The seed's performance row of one result, as strings (the metric under its own name)."""
    metrics = result.get("metrics", {})
    metric = result.get("target_metric", "mAP")
    return {
        "config": result.get("row_label", "/"),
        "precision": result.get("precision", "/"),
        "fix_hp": result.get("fix_hp") or "/",
        "e2e_time": _fmt(metrics.get("e2e_time"), 1),
        "p_whole": _fmt(metrics.get("p_whole")),
        "p_train": _fmt(metrics.get("p_train")),
        "p_core": _fmt(metrics.get("p_core")),
        metric: _fmt(metrics.get(metric), 4),
        "mem": mem_text(metrics.get("mem_used_peak_bytes"), metrics.get("mem_total_bytes")),
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
    """The performance table aligned for a terminal; every header and cell escaped and cut
    (:func:`chipbench.util.text.terminal_table`)."""
    return terminal_table(rows, columns, VALUE_LIMIT, missing="/")


def flops_lines(metrics: Dict[str, Any]) -> List[str]:
    """FLOPs per image, achieved TFLOP/s and MFU, or "n/a" with the reason (docs/metrics.md).
    The MFU is checked again here (:func:`chipbench.measure.flops.checked_mfu`): one above 100 % is
    never shown as a figure, whatever the file says."""
    from chipbench.measure.flops import checked_mfu

    metrics = checked_mfu(metrics)
    per_image = metrics.get("flops_per_image")
    if not per_image:
        return ["- FLOPs per image (training step): n/a{}; achieved TFLOP/s and MFU: n/a".format(
            " (" + md(metrics["flops_note"], TEXT_LIMIT) + ")" if metrics.get("flops_note") else "")]
    achieved = metrics.get("achieved_tflops")
    lines = ["- FLOPs per image (training step, forward + backward): {:.3g} GFLOP; achieved: {} "
             "TFLOP/s (FLOPs per image x p_core)".format(
                 per_image / 1e9, "/" if achieved is None else "{:.3g}".format(achieved))]
    if metrics.get("mfu_flag"):
        lines.append("- **{}**".format(md(metrics["mfu_flag"], TEXT_LIMIT)))
    elif metrics.get("mfu") is not None:
        lines.append("- MFU: {:.2%} of a peak of {:.3g} TFLOP/s (all devices)".format(
            metrics["mfu"], metrics["peak_tflops"]))
    else:
        lines.append("- MFU: n/a ({})".format(md(metrics.get("peak_note") or "no peak known",
                                                 TEXT_LIMIT)))
    return lines


def cpu_share_lines(metrics: Dict[str, Any]) -> List[str]:
    """The run's own CPU share while training (``metrics.cpu_share``, docs/metrics.md): what the
    process and its loader workers got, against the whole machine's load, and on the CPU device
    against the cores the run asked for."""
    from chipbench.measure.metrics import is_number

    share = metrics.get("cpu_share")
    if not isinstance(share, dict) or not is_number(share.get("own_percent")):
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


def starved_lines(metrics: Dict[str, Any]) -> List[str]:
    """A loud warning where the run was starved of CPU (:func:`chipbench.measure.monitor.starved_warning`,
    one definition with its threshold)."""
    from chipbench.measure.monitor import starved_warning

    warning = starved_warning(metrics.get("cpu_share"))
    return ["", "> **WARNING: {}**".format(md(warning, TEXT_LIMIT))] if warning else []


DATA_WAIT_SHARE = 0.10
"""Share of the training time spent waiting for the data loader above which report.md warns that
the loader, not the device, set p_train (docs/metrics.md)."""


def data_wait(result: Dict[str, Any]) -> Optional[Tuple[float, float]]:
    """``(seconds training waited for data, training seconds)`` of the whole run: the final
    metrics', else the last epoch's that has both (run totals); None for a run that did not
    record its data wait (older chipbench)."""
    records = [result.get("metrics")] + list(reversed(result.get("epochs") or []))
    for record in records:
        if isinstance(record, dict) and is_count(record.get("data_seconds")) \
                and is_count(record.get("train_seconds")) and record["train_seconds"] > 0:
            return float(record["data_seconds"]), float(record["train_seconds"])
    return None


def data_wait_warning(result: Dict[str, Any]) -> str:
    """"p_train is X of p_core; training waited N s (P %) for data: ..." where the wait is over
    :data:`DATA_WAIT_SHARE` of the training time; "" otherwise."""
    wait = data_wait(result)
    if wait is None or wait[0] <= DATA_WAIT_SHARE * wait[1]:
        return ""
    metrics = result.get("metrics") or {}
    p_train, p_core = metrics.get("p_train"), metrics.get("p_core")
    ratio = ""
    if is_count(p_train) and is_count(p_core) and p_core > 0:
        ratio = "p_train is {:.0%} of p_core; ".format(p_train / p_core)
    return ("the data loader held the device back: {}training waited {:.1f} s ({:.0%} of its "
            "{:.1f} s) for data, over the {:.0%} threshold: give the loader more workers, or "
            "faster storage".format(ratio, wait[0], wait[0] / wait[1], wait[1], DATA_WAIT_SHARE))


def epoch_lines(result: Dict[str, Any]) -> List[str]:
    """Per epoch: loss, training time and the data wait in it (seconds and share); only for a run
    that recorded its data wait."""
    from chipbench.outputs.plots import epoch_seconds

    epochs = [e for e in result.get("epochs") or [] if isinstance(e, dict)]
    waits = epoch_seconds(epochs, "data_seconds")
    if not waits:
        return []
    trained = epoch_seconds(epochs, "train_seconds")
    losses = {e["epoch"]: e.get("loss") for e in epochs if is_count(e.get("epoch"))}
    lines = ["", "## Per epoch", "", "| epoch (counted from 1) | loss | train (s) | data wait (s) "
             "| data wait (% of train) |", "| --- | --- | --- | --- | --- |"]
    for epoch in sorted(waits):
        train = trained.get(epoch)
        share = "{:.1f}".format(100 * waits[epoch] / train) if train else "/"
        lines.append("| {} | {} | {} | {:.2f} | {} |".format(
            epoch + 1, md(_fmt(losses.get(epoch), 4)), md(_fmt(train)), waits[epoch], share))
    return lines


def monitor_lines(summary: Optional[Dict[str, List[Dict[str, Any]]]]) -> List[str]:
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


def not_measured_lines(metrics: Dict[str, Any]) -> List[str]:
    """Lines naming each figure a misbehaving vendor hook cost, with the hook's error."""
    failures = metrics.get("monitor_failures") or {}
    lines = []
    for hook in sorted(failures):
        entry = failures[hook]
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


def _fact_text(value: Any) -> str:
    """A data fact as its table cell shows it: lists and dicts as JSON."""
    return json.dumps(value) if isinstance(value, (dict, list)) else _fmt(value)


def data_lines(result: Dict[str, Any]) -> List[str]:
    """The data facts section: the facts the case recorded, known ones under their labels
    (:data:`DATA_FACTS`), the case's others by key; facts without a value are left out, and a
    case's fact that repeats a known one (same label, same value) is shown once."""
    data = result.get("data")
    lines = ["", "## Data", ""]
    facts = [(label, data.get(key)) for key, label in DATA_FACTS] if isinstance(data, dict) else []
    known = {key for key, _ in DATA_FACTS} | {CAVEATS_KEY}
    if isinstance(data, dict):
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


def caveat_lines(data: Dict[str, Any]) -> List[str]:
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


def eval_backend(result: Dict[str, Any]) -> Any:
    """The run's evaluation backend (the resolved one, else the configured one); None without."""
    evaluation = (result.get("config") or {}).get("eval")
    configured = evaluation.get("backend") if isinstance(evaluation, dict) else None
    return (result.get("metrics") or {}).get("eval_backend") or configured


def run_facts_lines(result: Dict[str, Any]) -> List[str]:
    """How the figures were taken: evaluation backend (where the run has one) and time, warm-up
    left out of throughput."""
    metrics = result.get("metrics") or {}
    train = (result.get("config") or {}).get("train") or {}
    metric = result.get("target_metric", "mAP")
    evals = sum(1 for e in result.get("epochs", []) if isinstance(e, dict)
                and e.get(metric) is not None)
    backend = eval_backend(result)
    return ["- {}evaluation time: {} s over {} evaluation(s)".format(
                "evaluation backend: {}; ".format(md(_fmt(backend))) if backend else "",
                md(_fmt(metrics.get("eval_seconds"), 1)), evals),
            "- warm-up iterations left out of p_whole/p_train/p_core: {}".format(
                md(_fmt(train.get("throughput_skip_iters", 0)) if isinstance(train, dict)
                   else "/"))]


def head_lines(result: Dict[str, Any]) -> List[str]:
    """Title, status, the case's one data note (its ``dataset_note``), the warnings and the case's
    caveats: what a reader must know before any figure."""
    metrics = result.get("metrics") or {}
    found = result.get("data")
    lines = ["# {} on {}".format(md(result.get("case", "?")), md(result.get("row_label", "?"))),
             ""]
    lines.append("Status: **{}**{}".format(md(result.get("status", "?")), " ({})".format(
        md(result["error"], TEXT_LIMIT)) if result.get("error") else ""))
    if result.get("dataset_note"):
        lines += ["", "> " + md(result["dataset_note"], TEXT_LIMIT)]
    lines += starved_lines(metrics)
    for warning in (data_wait_warning(result), profile_warning(result)):
        if warning:
            lines += ["", "> **WARNING: {}**".format(md(warning, TEXT_LIMIT))]
    return lines + caveat_lines(found if isinstance(found, dict) else {})


def performance_lines(result: Dict[str, Any]) -> List[str]:
    """The performance table and the figures under it: convergence, counts, memory, times, data
    wait, FLOPs, CPU share and what could not be measured."""
    metrics = result.get("metrics") or {}
    metric, unit = result.get("target_metric", "mAP"), result.get("sample_unit", "images")
    lines = ["", "## Performance indicators", "",
             markdown_table([perf_row(result)], perf_columns(result)), ""]
    lines += [
        "- converged: {} (target {} {}, reached {})".format(
            md(_fmt(metrics.get("converged"))), md(metric), md(_fmt(result.get("target"))),
            md(_fmt(metrics.get(metric), 4))),
        "- {} trained (all ranks): {}; epochs: {}; iterations: {}; throughputs in {}/s".format(
            md(unit), md(_fmt(metrics.get("images"))), md(_fmt(metrics.get("epochs"))),
            md(_fmt(metrics.get("iterations"))), md(unit)),
        "- allocator peak: {} GiB; memory source: {}".format(
            md(_fmt(metrics.get("allocator_peak_gib"))), md(_fmt(metrics.get("mem_source")))),
        "- times (slowest rank): train {} s, evaluation {} s, core {} s".format(
            md(_fmt(metrics.get("train_seconds"), 1)), md(_fmt(metrics.get("eval_seconds"), 1)),
            md(_fmt(metrics.get("core_seconds"), 1)))]
    wait = data_wait(result)
    if wait is not None:
        lines.append("- data wait: training waited {:.1f} s for the data loader, {:.1%} of its "
                     "{:.1f} s (warning above {:.0%})".format(wait[0], wait[0] / wait[1], wait[1],
                                                            DATA_WAIT_SHARE))
    if metrics.get("throughput_note"):
        lines.append("- " + md(metrics["throughput_note"], TEXT_LIMIT))
    return lines + flops_lines(metrics) + cpu_share_lines(metrics) + not_measured_lines(metrics)


def render(result: Dict[str, Any]) -> str:
    """The whole ``report.md`` of one result; every text of the result is escaped for Markdown
    (:func:`md`): a field cannot add a line, a heading or a table row, nor shift a column."""
    general = result.get("general", {})
    env = result.get("environment", {})
    lines = head_lines(result)
    lines += ["", "## General indicators", "", "| indicator | value | note |", "| --- | --- | --- |"]
    for name, value, note in general.get("rows", []):
        lines.append("| {} | {} | {} |".format(md(name), md(value, CELL_LIMIT),
                                               md(note, CELL_LIMIT)))
    lines += performance_lines(result)
    lines += epoch_lines(result)
    lines += data_lines(result)
    lines += profile_lines(result)
    lines += monitor_lines(result.get("monitor_summary"))
    for name in result.get("plots", []):
        lines += ["", "![{}](plots/{})".format(md(name[:-4]), md(name))]
    lines += ["", "## Hardware and software", ""]
    lines += run_facts_lines(result)
    for key in sorted(env):
        value = env[key]
        if isinstance(value, (dict, list)):
            value = json.dumps(value)
        lines.append("- {}: {}".format(md(key), md(value, TEXT_LIMIT)))
    lines += ["", "Per-epoch figures, the resolved config and versions are in result.json.", ""]
    return "\n".join(lines)


def write_report(run_dir: Path, result: Dict[str, Any]) -> Optional[Path]:
    """Write ``report.md`` into ``run_dir``."""
    path = Path(run_dir) / "report.md"
    safeio.write_atomic(path, render(result), what="run file")  # UTF-8, never through a link
    return path


@hookimpl
def on_run_end(run: Dict[str, Any], result: Dict[str, Any]) -> None:
    """Render ``report.md`` (and its SVG plots) next to ``result.json``."""
    from chipbench.measure.monitor import summarize
    from chipbench.outputs.plots import monitor_files, write_plots

    run_dir = Path(run["run_dir"])
    monitor = monitor_files(run_dir)  # read once: for the plots and the summary
    plots = write_plots(run_dir, result.get("epochs", []), result.get("target"),
                        metric=result.get("target_metric", "mAP"), monitor=monitor)
    summary = {name: summarize(samples) for name, samples in monitor if samples}
    write_report(run_dir, dict(result, plots=[p.name for p in plots], monitor_summary=summary))
