"""``core compare RUN_DIR... [--baseline RUN_DIR]``: the seed's performance table of several runs
side by side, ratios against a baseline, and loud warnings about what makes the comparison unfair.

Only each run folder's ``result.json`` is needed (``monitor/`` too for the timeline chart), so
folders copied from other machines compare as well as local ones.
"""

import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from chipbench import safeio
from chipbench.errors import UserError
from chipbench.flops import checked_mfu
from chipbench.metrics import FIGURES, RESERVED_KEYS, finite, is_count, is_number, reached
from chipbench.report import PERF_COLUMNS, markdown_table, perf_row, text_table
from chipbench.text import VALUE_LIMIT, markdown_cell, number_text, shorten, shown, terminal

RATIO_COLUMNS = (("p_whole", "p_whole x"), ("p_train", "p_train x"), ("p_core", "p_core x"),
                 ("e2e_time", "e2e_time x"), ("mem_used_peak_bytes", "mem x"))
MAP_COLUMN = "mAP diff"
COLUMNS = PERF_COLUMNS + tuple(c for _, c in RATIO_COLUMNS) + (MAP_COLUMN,)
"""The columns of a comparison of a case whose target metric is mAP; other cases show their own
metric in its place (:func:`columns_for`)."""

STATUSES = ("running", "finished", "failed", "interrupted")
NUMBER_METRICS = FIGURES + ("e2e_time",)
"""Metrics the comparison reads: each None or a finite number >= 0."""
OPTIONAL_FIELDS: Dict[str, Tuple[type, ...]] = {
    "row_label": (str,), "precision": (str,), "fix_hp": (str,), "target_metric": (str,),
    "sample_unit": (str,), "error": (str,), "general": (dict,), "versions": (dict,),
    "topology": (dict,), "hardware": (dict,), "config": (dict,), "data": (dict,),
    "epochs": (list,), "target": (int, float)}
"""Fields of result.json the comparison reads, with their types (each may also be absent or
null)."""
FIX_RESULT = "restore the result.json that `core run` wrote, or leave that run out"


def check_result(result: Dict[str, Any], file: Path) -> None:
    """Refuse, in one line naming the file and the field, a result.json that `core run` did not
    write as it stands (hand-edited, truncated to another file's shape, or another file)."""
    def bad(field: str, value: Any, expected: str) -> UserError:
        return UserError("{}: {} is {}, not {}".format(file, field, shown(value), expected),
                         FIX_RESULT)

    if not isinstance(result.get("case"), str) or "status" not in result \
            or "metrics" not in result:
        raise UserError("{} is not a chipbench result (no case, status and metrics)".format(file),
                        "give run folders written by `core run`, or their result.json")
    if result["status"] not in STATUSES:
        raise bad("status", result["status"], "one of " + ", ".join(STATUSES))
    for field, kinds in OPTIONAL_FIELDS.items():
        value = result.get(field)
        if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
            raise bad(field, value, "a " + " or ".join(k.__name__ for k in kinds))
    metrics = result["metrics"]
    if not isinstance(metrics, dict):
        raise bad("metrics", metrics, "a dict")
    target = result.get("target")
    if target is not None and not is_number(target):
        raise bad("target", target, "a finite number")
    metric = result.get("target_metric") or "mAP"
    if metric in RESERVED_KEYS:
        raise bad("target_metric", metric, "a metric of the case's own (it names one of "
                  "chipbench's columns)")
    for key in NUMBER_METRICS + (metric,):
        value = metrics.get(key)
        if value is not None and not is_count(value):
            raise bad("metrics." + key, value, "a finite number >= 0")
    if metrics.get("converged") is not None and not isinstance(metrics["converged"], bool):
        raise bad("metrics.converged", metrics["converged"], "true or false")
    rows = (result.get("general") or {}).get("rows", [])
    if not isinstance(rows, list) or not all(isinstance(r, (list, tuple)) and len(r) == 3
                                             for r in rows):
        raise bad("general.rows", rows, "a list of [indicator, value, note] rows")
    if not all(isinstance(e, dict) for e in result.get("epochs") or []):
        raise bad("epochs", result.get("epochs"), "a list of per-epoch dicts")


def metric_of(result: Dict[str, Any]) -> str:
    """The case's target metric ("mAP", "accuracy", ...)."""
    return result.get("target_metric") or "mAP"


def columns_for(metric: str) -> Tuple[str, ...]:
    """The comparison's columns, with ``metric`` where the seed shows mAP."""
    return tuple(metric if c == "mAP" else "{} diff".format(metric) if c == MAP_COLUMN else c
                 for c in COLUMNS)


LABEL_LIMIT = 100
"""Characters of a run's label (its row_label, or its folder's name) in rows and warnings."""
ERROR_LIMIT = 400
"""Characters of a run's recorded error in its warning."""
FIX_HP_LIMIT = 1000
"""Characters of fix_hp listed under the terminal table (it lists every changed setting)."""


def label_of(result: Dict[str, Any], path: Path) -> str:
    """A run's label as read: its row_label, or its folder's name; long ones cut in the middle
    (text from the file: each output escapes it for where it goes)."""
    return shorten(result.get("row_label") or path.name, LABEL_LIMIT)


class RunFolder:
    """One run folder's result, with the label it gets in the comparison."""

    def __init__(self, path: Path, result: Dict[str, Any]) -> None:
        self.path = path
        self.result = result
        self.label = label_of(result, path)
        self.folder_name = path.name
        """As much of the folder's path as tells it apart from the other runs' (label_runs)."""

    @property
    def chart_label(self) -> str:
        """Short and distinct for chart legends: folder, hardware, topology, precision."""
        topology = (self.result.get("topology") or {})
        return "{}: {} {}x{} {}".format(
            self.folder_name, *(shorten(part, 40) for part in (
                (self.result.get("hardware") or {}).get("label", "?"),
                topology.get("nnodes", "?"), topology.get("nproc_per_node", "?"),
                self.result.get("precision", "?"))))

    @property
    def metrics(self) -> Dict[str, Any]:
        return self.result.get("metrics") or {}


def load_run(path: str) -> RunFolder:
    """Read and check ``result.json`` of a run folder (or the file itself). Only a regular file
    is read, at most :data:`chipbench.safeio.RUN_JSON_LIMIT` bytes, and a ``result.json`` in a
    folder not through a link: a FIFO, a device or a link is refused in one line, never
    waited on or read without end."""
    folder = Path(path)
    kind = safeio.kind_of(folder)
    if kind is None:
        raise UserError("{} does not exist".format(path),
                        "give run folders written by `core run` (copy the whole folder)")
    in_folder = kind == "a folder"
    file = folder / "result.json" if in_folder else folder
    try:
        result = safeio.read_json(file, safeio.RUN_JSON_LIMIT, follow=not in_folder,
                                  what="result file", fix=FIX_RESULT)
    except FileNotFoundError:
        raise UserError("{} holds no result.json".format(path),
                        "give run folders written by `core run` (copy the whole folder)") from None
    except OSError as exc:
        raise UserError("cannot read {} ({})".format(file, exc.strerror or exc),
                        "give run folders written by `core run` you can read") from None
    except (ValueError, RecursionError) as exc:
        raise UserError("{} is not valid JSON ({})".format(file, exc),
                        "give run folders written by `core run`") from None
    if not isinstance(result, dict):
        raise UserError("{} is not a chipbench result".format(file),
                        "give run folders written by `core run`")
    check_result(result, file)
    # the MFU rule of every output (a figure above 100 % written before it, or by hand, is flagged)
    result["metrics"] = checked_mfu(result["metrics"])
    return RunFolder(file.parent, result)


def label_runs(runs: List[RunFolder]) -> None:
    """Runs that share a row label get their folder added (as much of its path as tells them
    apart), so every row can be told apart; chart legends name each folder the same way."""
    def base(run: RunFolder) -> str:
        return label_of(run.result, run.path)

    for run in runs:
        same = [r for r in runs if base(r) == base(run)]
        if len(same) < 2:
            continue
        run.label = "{} [{}]".format(base(run), _tail(run.path, _telling_depth(same)))
    depth = _telling_depth(runs)
    for run in runs:
        run.folder_name = _tail(run.path, depth)


def _telling_depth(runs: Sequence[RunFolder]) -> int:
    """The fewest trailing path parts that tell the folders of ``runs`` apart."""
    longest = max(len(r.path.resolve().parts) for r in runs)
    depth = 1
    while depth < longest and len({_tail(r.path, depth) for r in runs}) < len(runs):
        depth += 1
    return depth


def _tail(path: Path, depth: int) -> str:
    return "/".join(path.resolve().parts[-depth:])


def _get(config: Dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def dataset_fact(result: Dict[str, Any]) -> str:
    """The data set a run trained on, with its image counts where known."""
    config = result.get("config") or {}
    found = result.get("data")
    data: Dict[str, Any] = found if isinstance(found, dict) else {}
    name = next((row[1] for row in (result.get("general") or {}).get("rows", [])
                 if "dataset" in str(row[0])), "?")
    if data.get("train_images") is not None:
        return "{} ({} train / {} val images)".format(name, data.get("train_images"),
                                                     data.get("val_images"))
    if _get(config, "data.dir") is None and _get(config, "data.synthetic") is not None:
        return "{} ({} train / {} val images, {} px, seed {})".format(
            name, _get(config, "data.synthetic.train_images"),
            _get(config, "data.synthetic.val_images"), _get(config, "data.synthetic.image_size"),
            _get(config, "data.synthetic.seed"))
    return name


def facts(result: Dict[str, Any]) -> Dict[str, Any]:
    """What must match for two runs to be compared fairly, by name."""
    config = result.get("config") or {}
    versions = result.get("versions") or {}
    return {
        "case": result.get("case"),
        "case version": result.get("case_version") or versions.get("case"),
        "data set": dataset_fact(result),
        "precision": result.get("precision"),
        "batch size": _get(config, "train.batch_size"),
        "epochs run": (result.get("metrics") or {}).get("epochs"),
        "backbone weights": _get(config, "model.backbone_weights"),
        "image size": "min {} / max {}".format(_get(config, "model.min_size"),
                                               _get(config, "model.max_size")),
        "evaluation backend": (result.get("metrics") or {}).get("eval_backend"),
        "target": result.get("target"),
        "hyper-parameters (fix_hp)": result.get("fix_hp"),
        "iteration cap (train.max_iters)": _get(config, "train.max_iters"),
        "chipbench version": versions.get("chipbench"),
        "memory source (the mem column)": (result.get("metrics") or {}).get("mem_source"),
    }


def plugin_warning(run: RunFolder, baseline: RunFolder) -> Optional[str]:
    """Two runs of the same vendor whose figures came from different plugin packages or versions
    (runs of different vendors differ in their plugins by design)."""
    mine, theirs = (r.result.get("versions") or {} for r in (run, baseline))
    if run.result.get("vendor") != baseline.result.get("vendor") or not mine.get("vendor") \
            or not theirs.get("vendor") or mine["vendor"] == theirs["vendor"]:
        return None
    return "different vendor plugin: {} ran on {}, baseline {} on {}".format(
        run.label, _show(mine["vendor"]), baseline.label, _show(theirs["vendor"]))


SKIP_WHEN_MISSING = ("evaluation backend", "memory source (the mem column)")
"""Facts a run records only once it got that far (a run stopped before its first evaluation has
no backend): compared only where both runs have them."""


def fairness_warnings(runs: Sequence[RunFolder], baseline: RunFolder) -> List[str]:
    """Every difference from the baseline that makes the comparison unfair, and every run that
    did not finish or did not converge."""
    warnings = []
    base = facts(baseline.result)
    for run in runs:
        if run is baseline:
            continue
        mine = facts(run.result)
        for name, value in mine.items():
            if name in SKIP_WHEN_MISSING and (value is None or base[name] is None):
                continue
            if value == base[name] or (value is None and base[name] is None):
                continue
            if name == FIX_HP_FACT:
                warnings.append(fix_hp_warning(run, value, baseline, base[name]))
                continue
            warnings.append("different {}: {} has {}, baseline {} has {}".format(
                name, run.label, _show(value), baseline.label, _show(base[name])))
        plugin = plugin_warning(run, baseline)
        if plugin:
            warnings.append(plugin)
    warnings += cpu_share_warnings(runs, baseline)
    for run in runs:
        status = run.result.get("status", "?")
        if status != "finished":
            error = run.result.get("error")
            warnings.append("{} did not finish (status {}{}): its figures are partial".format(
                run.label, status, ": " + shorten(error, ERROR_LIMIT) if error else ""))
        elif not reached_target(run.result):
            metric = metric_of(run.result)
            warnings.append("{} did not converge ({} {} < target {}): its time to target is "
                            "not known".format(run.label, metric, _show(run.metrics.get(metric)),
                                               _show(run.result.get("target"))))
    return warnings


def cpu_share_warnings(runs: Sequence[RunFolder], baseline: RunFolder) -> List[str]:
    """Runs that got very different shares of the CPU than the baseline (the lower below
    :data:`chipbench.monitor.SHARE_RATIO` of the higher: the throughput ratios then show the
    machines' load), and runs starved of CPU (:func:`chipbench.monitor.starved_warning`). Only
    runs on the CPU device record the compute they got against what they asked for."""
    from chipbench.monitor import SHARE_RATIO, starved_warning

    def share(run: RunFolder) -> Optional[float]:
        found = run.metrics.get("cpu_share")
        value = found.get("compute_share") if isinstance(found, dict) else None
        return float(value) if is_number(value) and value >= 0 else None

    warnings = []
    base = share(baseline)
    for run in runs:
        mine = share(run)
        if run is baseline or mine is None or base is None:
            continue
        if min(mine, base) < SHARE_RATIO * max(mine, base):
            warnings.append("different CPU share: {} got {:.0%} of the cores it asked for, "
                            "baseline {} got {:.0%}: its ratios may measure the machines' load, "
                            "not the runs".format(run.label, mine, baseline.label, base))
    for run in runs:
        starved = starved_warning(run.metrics.get("cpu_share"))
        if starved:
            warnings.append("{}: {}".format(run.label, starved))
    return warnings


def reached_target(result: Dict[str, Any]) -> bool:
    """Whether the run's metric is a number that reached a numeric target: what "converged"
    means, checked on the numbers (a result.json's own flag is not taken on its word)."""
    metrics = result.get("metrics") or {}
    return metrics.get("converged") is not False and reached(metrics.get(metric_of(result)),
                                                             result.get("target"))


FIX_HP_FACT = "hyper-parameters (fix_hp)"
FIX_HP_SETTING = re.compile(r"(?:^|, )([A-Za-z_][\w.-]*)=")
"""Where a setting starts in fix_hp (``bs=24, lr=0.04, model.min_size=128``)."""
FIX_HP_KEYS_SHOWN = 12


def fix_hp_settings(text: Any) -> Optional[Dict[str, str]]:
    """fix_hp ``"bs=24, lr=0.04, model.min_size=128"`` as ``{"bs": "24", ...}``; None where it is
    not written that way (then it is compared whole)."""
    if not isinstance(text, str):
        return None
    found = list(FIX_HP_SETTING.finditer(text))
    if not text or not found or found[0].start() != 0:
        return {} if not text else None
    ends = [m.start() for m in found[1:]] + [len(text)]
    return {m.group(1): text[m.end():end] for m, end in zip(found, ends)}


def fix_hp_warning(run: RunFolder, mine: Any, baseline: RunFolder, theirs: Any) -> str:
    """The fix_hp difference between a run and the baseline, naming each setting that differs
    (``eval.batch_size``) with both values; a setting one of them lacks is the case's default."""
    prefix = "different {}: ".format(FIX_HP_FACT)
    ours, base = fix_hp_settings(mine), fix_hp_settings(theirs)
    if ours is None or base is None:
        return prefix + "{} has {}, baseline {} has {}".format(
            run.label, _show(mine), baseline.label, _show(theirs))
    keys = [k for k in list(ours) + [k for k in base if k not in ours]
            if ours.get(k) != base.get(k)]

    def values(settings: Dict[str, str]) -> str:
        listed = ", ".join("{}={}".format(shorten(k, 60), shorten(settings[k], 60))
                           if k in settings else "{} (default)".format(shorten(k, 60))
                           for k in keys[:FIX_HP_KEYS_SHOWN])
        more = len(keys) - FIX_HP_KEYS_SHOWN
        return listed + (" and {} more".format(more) if more > 0 else "")

    return prefix + "{} has {}; baseline {} has {}".format(run.label, values(ours),
                                                          baseline.label, values(base))


def _show(value: Any) -> str:
    """A fact's value in a warning: numbers whole, text cut to :data:`VALUE_LIMIT` characters."""
    if value is None:
        return "(not recorded)"
    if value == "":
        return "(none)"
    if isinstance(value, float):
        return "{:.4g}".format(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return number_text(value)
    return shorten(value, VALUE_LIMIT)


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
            row[column] = _ratio(run.metrics.get(key), base.get(key))
        metric = metric_of(run.result)
        mine, theirs = run.metrics.get(metric), base.get(metric)
        row["{} diff".format(metric)] = ("{:+.4f}".format(mine - theirs)
                                         if isinstance(mine, (int, float))
                                         and isinstance(theirs, (int, float)) else "/")
        rows.append(row)
    return rows


def comparison(paths: Sequence[str], baseline_path: Optional[str] = None
               ) -> Tuple[List[RunFolder], RunFolder, List[Dict[str, str]], List[str]]:
    """Load the runs (the baseline first when it is given apart) and compare them."""
    if not paths:
        raise UserError("core compare needs at least one run folder", "core compare RUN_DIR...")
    given = list(paths)
    runs = [load_run(p) for p in given]
    baseline = runs[0]
    if baseline_path:
        wanted = Path(baseline_path).resolve()
        found = [r for r in runs if r.path.resolve() == wanted
                 or r.path.resolve() == wanted.parent]
        if found:
            baseline = found[0]
        else:
            baseline = load_run(baseline_path)
            runs.insert(0, baseline)
            given.insert(0, baseline_path)
    seen: Dict[Any, str] = {}
    for run, name in zip(runs, given):
        if run.path.resolve() in seen:
            raise UserError("run {} is given twice ({} and {})".format(
                run.path, seen[run.path.resolve()], name), "give each run folder once")
        seen[run.path.resolve()] = name
        started, where = run.result.get("started_at"), run.result.get("run_dir")
        if started is not None and where is not None:
            identity = (str(where), str(started))
            if identity in seen:
                raise UserError("{} and {} are copies of one run (both started at {} in {})".format(
                    seen[identity], name, shorten(started), shorten(where)), "give each run once")
            seen[identity] = name
    cases = sorted({r.result["case"] for r in runs})
    if len(cases) > 1:
        raise UserError("these runs are of different cases ({}): their throughputs count "
                        "different things".format(", ".join(shorten(c, 60) for c in cases)),
                        "compare runs of one case at a time")
    label_runs(runs)
    return runs, baseline, compare_rows(runs, baseline), fairness_warnings(runs, baseline)


def as_json(runs: Sequence[RunFolder], baseline: RunFolder, rows: List[Dict[str, str]],
            warnings: List[str]) -> Dict[str, Any]:
    """The comparison as data: rows as shown, raw metrics, warnings."""
    return finite({
        "baseline": baseline.label, "warnings": warnings,
        "columns": list(columns_for(metric_of(baseline.result))),
        "runs": [{"label": r.label, "run_dir": str(r.path), "status": r.result.get("status"),
                  "row": row, "metrics": r.metrics, "facts": facts(r.result)}
                 for r, row in zip(runs, rows)]})


def as_text(rows: List[Dict[str, str]], warnings: List[str], markdown: bool = False,
            metric: str = "mAP") -> str:
    """The table (terminal or Markdown) followed by the fairness warnings, loudly. Text read from
    the run folders is escaped for where it goes (:mod:`chipbench.text`): it can neither colour
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
    from chipbench.plots import bar_chart, epochs_chart, monitor_files, timeline_chart

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "compare-p_core.svg", folder / "compare-curves.svg"]
    safeio.write_atomic(written[0], bar_chart("p_core per run", [r.chart_label for r in runs],
                                              [r.metrics.get("p_core") for r in runs],
                                              "p_core ({}/s, all devices)".format(
                                                  runs[0].result.get("sample_unit") or "images")),
                        what="chart")
    safeio.write_atomic(written[1], epochs_chart([(r.chart_label, r.result.get("epochs") or [])
                                                  for r in runs],
                                                 runs[0].result.get("target"),
                                                 runs[0].result.get("target_metric", "mAP")),
                        what="chart")
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
