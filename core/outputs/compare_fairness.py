"""The fairness warnings of ``core compare``: every difference from the baseline that makes the
comparison unfair (data set, precision, hyper-parameters, versions, CPU share, ...), and every
run that did not finish or did not converge."""

import re
from typing import Any, Dict, List, Optional, Sequence

from chipbench.measure.metrics import is_number, reached
from chipbench.measure.profiling import profile_warning
from chipbench.outputs.compare_runs import RunFolder
from chipbench.run.resultrecord import RunResult
from chipbench.util.text import VALUE_LIMIT, number_text, shorten

ERROR_LIMIT = 400
"""Characters of a run's recorded error in its warning."""


def _get(config: Dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def dataset_fact(result: RunResult) -> str:
    """The data set a run trained on, with its image counts where known."""
    config = result.config or {}
    data = result.data or {}
    name = next((row[1] for row in result.general_rows if "dataset" in str(row[0])), "?")
    if data.get("train_images") is not None:
        return "{} ({} train / {} val images)".format(name, data.get("train_images"),
                                                     data.get("val_images"))
    if _get(config, "data.dir") is None and _get(config, "data.synthetic") is not None:
        return "{} ({} train / {} val images, {} px, seed {})".format(
            name, _get(config, "data.synthetic.train_images"),
            _get(config, "data.synthetic.val_images"), _get(config, "data.synthetic.image_size"),
            _get(config, "data.synthetic.seed"))
    return name


def facts(result: RunResult) -> Dict[str, Any]:
    """What must match for two runs to be compared fairly, by name."""
    config = result.config or {}
    versions = result.versions or {}
    return {
        "case": result.case,
        "case version": result.other.get("case_version") or versions.get("case"),
        "data set": dataset_fact(result),
        "precision": result.precision,
        "batch size": _get(config, "train.batch_size"),
        "epochs run": result.metrics.epochs,
        "backbone weights": _get(config, "model.backbone_weights"),
        "image size": "min {} / max {}".format(_get(config, "model.min_size"),
                                               _get(config, "model.max_size")),
        "evaluation backend": result.metrics.value("eval_backend"),
        "target": result.target,
        "hyper-parameters (fix_hp)": result.fix_hp,
        "iteration cap (train.max_iters)": _get(config, "train.max_iters"),
        "chipbench version": versions.get("chipbench"),
        "memory source (the mem column)": result.metrics.mem_source,
    }


def plugin_warning(run: RunFolder, baseline: RunFolder) -> Optional[str]:
    """Two runs of the same vendor whose figures came from different plugin packages or versions
    (runs of different vendors differ in their plugins by design)."""
    mine, theirs = (r.result.versions or {} for r in (run, baseline))
    if run.result.vendor != baseline.result.vendor or not mine.get("vendor") \
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
        profiled = profile_warning(run.result)
        if profiled:
            warnings.append("{}: {}".format(run.label, profiled))
    for run in runs:
        status, error = run.result.status, run.result.error
        if status != "finished":
            warnings.append("{} did not finish (status {}{}): its figures are partial".format(
                run.label, status, ": " + shorten(error, ERROR_LIMIT) if error else ""))
        elif not reached_target(run.result):
            metric = run.result.metric_name
            warnings.append("{} did not converge ({} {} < target {}): its time to target is "
                            "not known".format(run.label, metric,
                                               _show(run.metrics.value(metric)),
                                               _show(run.result.target)))
    return warnings


def cpu_share_warnings(runs: Sequence[RunFolder], baseline: RunFolder) -> List[str]:
    """Runs that got very different shares of the CPU than the baseline (the lower below
    :data:`chipbench.measure.monitor.SHARE_RATIO` of the higher: the throughput ratios then show the
    machines' load), and runs starved of CPU (:func:`chipbench.measure.monitor.starved_warning`). Only
    runs on the CPU device record the compute they got against what they asked for."""
    from chipbench.measure.monitor import SHARE_RATIO, starved_warning

    def share(run: RunFolder) -> Optional[float]:
        value = (run.metrics.cpu_share or {}).get("compute_share")
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
        starved = starved_warning(run.metrics.cpu_share)
        if starved:
            warnings.append("{}: {}".format(run.label, starved))
    return warnings


def reached_target(result: RunResult) -> bool:
    """Whether the run's metric is a number that reached a numeric target: what "converged"
    means, checked on the numbers (a result.json's own flag is not taken on its word)."""
    return result.metrics.converged is not False and reached(
        result.metrics.value(result.metric_name), result.target)


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
