"""The outputs of ``core compare``: the seed's table with ratios against the baseline (terminal
text or Markdown), the comparison as JSON, and its SVG charts. Text read from the run folders is
escaped for where it goes (:mod:`chipbench.util.text`)."""

from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from chipbench.measure.metrics import finite, is_number
from chipbench.outputs.compare_fairness import facts
from chipbench.outputs.compare_runs import RunFolder
from chipbench.outputs.report import PERF_COLUMNS, markdown_table, perf_row, text_table
from chipbench.util import safeio
from chipbench.util.text import markdown_cell, terminal

RATIO_COLUMNS = (("p_whole", "p_whole x"), ("p_train", "p_train x"), ("p_core", "p_core x"),
                 ("e2e_time", "e2e_time x"), ("mem_used_peak_bytes", "mem x"))
MAP_COLUMN = "mAP diff"
COLUMNS = PERF_COLUMNS + tuple(c for _, c in RATIO_COLUMNS) + (MAP_COLUMN,)
"""The columns of a comparison of a case whose target metric is mAP; other cases show their own
metric in its place (:func:`columns_for`)."""
FIX_HP_LIMIT = 1000
"""Characters of fix_hp listed under the terminal table (it lists every changed setting)."""


def columns_for(metric: str) -> Tuple[str, ...]:
    """The comparison's columns, with ``metric`` where the seed shows mAP."""
    return tuple(metric if c == "mAP" else "{} diff".format(metric) if c == MAP_COLUMN else c
                 for c in COLUMNS)


def _ratio(value: Any, base: Any) -> str:
    if not is_number(value) or not is_number(base) or not base:
        return "/"
    ratio = value / base
    return "{:.2f}x".format(ratio) if abs(ratio) < 1e6 else "{:.3g}x".format(ratio)


def compare_rows(runs: Sequence[RunFolder], baseline: RunFolder) -> List[Dict[str, str]]:
    """The seed's row of every run plus its ratios against the baseline and its mAP difference."""
    rows = []
    base = baseline.metrics
    for run in runs:
        row = perf_row(run.result)
        row["config"] = run.label + (" (baseline)" if run is baseline else "")
        for key, column in RATIO_COLUMNS:
            row[column] = _ratio(run.metrics.value(key), base.value(key))
        metric = run.result.metric_name
        mine, theirs = run.metrics.value(metric), base.value(metric)
        row["{} diff".format(metric)] = ("{:+.4f}".format(mine - theirs)
                                         if isinstance(mine, (int, float))
                                         and isinstance(theirs, (int, float)) else "/")
        rows.append(row)
    return rows


def as_json(runs: Sequence[RunFolder], baseline: RunFolder, rows: List[Dict[str, str]],
            warnings: List[str]) -> Dict[str, Any]:
    """The comparison as data: rows as shown, raw metrics, warnings."""
    return finite({
        "baseline": baseline.label, "warnings": warnings,
        "columns": list(columns_for(baseline.result.metric_name)),
        "runs": [{"label": r.label, "run_dir": str(r.path), "status": r.result.status,
                  "row": row, "metrics": r.metrics.to_json(), "facts": facts(r.result)}
                 for r, row in zip(runs, rows)]})


def as_text(rows: List[Dict[str, str]], warnings: List[str], markdown: bool = False,
            metric: str = "mAP") -> str:
    """The table (terminal or Markdown) followed by the fairness warnings, loudly. Text read from
    the run folders is escaped for where it goes (:mod:`chipbench.util.text`): it can neither colour
    nor control the terminal, nor add a line, a row or a column."""
    columns = columns_for(metric)
    if markdown:
        lines = [markdown_table(rows, columns), ""]
    else:  # fix_hp is long: listed under the table
        lines = [text_table(rows, [c for c in columns if c != "fix_hp"]), ""]
        lines += ["fix_hp of {}: {}".format(terminal(row["config"]),
                                            terminal(row["fix_hp"], FIX_HP_LIMIT))
                  for row in rows]
        lines.append("")
    if warnings:
        head = "**WARNING: this comparison is not fair:**" if markdown else \
            "WARNING: this comparison is not fair:"
        lines.append(head)
        lines += ["- " + markdown_cell(w) if markdown else "  ! " + terminal(w)
                  for w in warnings]
    else:
        lines.append("No fairness warnings: same data set, precision, hyper-parameters, "
                     "epochs, weights, image size, evaluation backend and versions; every run "
                     "finished and converged.")
    return "\n".join(lines)


def write_charts(runs: Sequence[RunFolder], folder: Any) -> List[Path]:
    """``compare-p_core.svg`` (bars), ``compare-curves.svg`` (loss and mAP of every run overlaid)
    and ``compare-timeline.svg`` (rank 0's monitor samples overlaid, where the folders have them)."""
    from chipbench.measure.monitor_samples import monitor_files
    from chipbench.outputs.plots import bar_chart, epochs_chart, timeline_chart

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "compare-p_core.svg", folder / "compare-curves.svg"]
    first = runs[0].result
    safeio.write_atomic(written[0], bar_chart("p_core per run", [r.chart_label for r in runs],
                                              [r.metrics.p_core for r in runs],
                                              "p_core ({}/s, all devices)".format(
                                                  first.sample_unit or "images")),
                        what="chart")
    safeio.write_atomic(written[1], epochs_chart(
        [(r.chart_label, r.result.epochs or []) for r in runs],
        first.target, first.target_metric or "mAP"), what="chart")
    timelines = []
    for run in runs:
        files = monitor_files(run.path)
        if files and files[0][1]:
            timelines.append((run.chart_label, files[0][1]))
    if timelines:
        path = folder / "compare-timeline.svg"
        safeio.write_atomic(path, timeline_chart(timelines, "monitor timelines (rank 0 of each "
                                                       "run)"), what="chart")
        written.append(path)
    return written
