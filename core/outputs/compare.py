"""``core compare RUN_DIR... [--baseline RUN_DIR]``: the seed's performance table of several runs
side by side, ratios against a baseline, and loud warnings about what makes the comparison unfair.

Only each run folder's ``result.json`` is needed (``monitor/`` too for the timeline chart), so
folders copied from other machines compare as well as local ones. The work is split by job:
:mod:`chipbench.outputs.compare_runs` loads and labels the runs,
:mod:`chipbench.outputs.compare_fairness` finds what makes them unfair to compare,
:mod:`chipbench.outputs.compare_render` writes the outputs; their public names are this module's too.
"""

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from chipbench.errors import UserError
from chipbench.outputs.compare_fairness import (  # noqa: F401 - chipbench.outputs.compare's names too
    FIX_HP_FACT,
    SKIP_WHEN_MISSING,
    cpu_share_warnings,
    dataset_fact,
    facts,
    fairness_warnings,
    fix_hp_settings,
    fix_hp_warning,
    plugin_warning,
    reached_target,
)
from chipbench.outputs.compare_render import (  # noqa: F401 - chipbench.outputs.compare's names too
    COLUMNS,
    MAP_COLUMN,
    RATIO_COLUMNS,
    as_json,
    as_text,
    columns_for,
    compare_rows,
    write_charts,
)
from chipbench.outputs.compare_runs import (  # noqa: F401 - chipbench.outputs.compare's names too
    RunFolder,
    label_of,
    label_runs,
    load_run,
    metric_of,
)
from chipbench.util.text import shorten


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
    check_distinct(runs, given)
    cases = sorted({r.result.case for r in runs})
    if len(cases) > 1:
        raise UserError("these runs are of different cases ({}): their throughputs count "
                        "different things".format(", ".join(shorten(c, 60) for c in cases)),
                        "compare runs of one case at a time")
    label_runs(runs)
    return runs, baseline, compare_rows(runs, baseline), fairness_warnings(runs, baseline)


def check_distinct(runs: Sequence[RunFolder], given: Sequence[str]) -> None:
    """Refuse a run given twice: the same folder, or two copies of one run (the same start in
    the same run folder)."""
    seen: Dict[Any, str] = {}
    for run, name in zip(runs, given):
        if run.path.resolve() in seen:
            raise UserError("run {} is given twice ({} and {})".format(
                run.path, seen[run.path.resolve()], name), "give each run folder once")
        seen[run.path.resolve()] = name
        started, where = run.result.started_at, run.result.run_dir
        if started is not None and where is not None:
            identity = (str(where), str(started))
            if identity in seen:
                raise UserError("{} and {} are copies of one run (both started at {} in {})".format(
                    seen[identity], name, shorten(started), shorten(where)), "give each run once")
            seen[identity] = name
