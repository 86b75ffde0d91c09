"""The run folder: creating it, refusing one that holds a run already, and what a resume or a
run's end reads from one (its files are untrusted: links, FIFOs and devices are refused, naming
them; what they hold is checked by their records)."""

import os
import time
from pathlib import Path
from typing import Any, Dict, Optional

from chipbench.errors import UserError, user_os_error
from chipbench.measure.metrics import is_count
from chipbench.run.resultrecord import RunProgress, RunResult
from chipbench.run.runfiles import PROGRESS_FILE, RESULT_FILE, RETURNED_DIR, SPEC_FILE, read_json_dict
from chipbench.run.specrecord import RunSpec
from chipbench.util import safeio


def check_output(output: Optional[str]) -> None:
    """Refuse an ``--output`` that is a file, lies under a file or already holds a run."""
    if not output:
        return
    run_dir = Path(output)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError("--output {} is a file, not a folder".format(run_dir),
                        "give a new folder for the run")
    for parent in run_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError("--output {} lies under {}, which is a file".format(
                    run_dir, parent), "give a folder whose parents are folders")
            break
    if (run_dir / RESULT_FILE).exists() or (run_dir / SPEC_FILE).exists():
        raise UserError("run folder {} already holds a run".format(run_dir),
                        "choose another --output, or continue it with --resume {}".format(run_dir))
    try:
        held = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    except OSError:
        held = []
    if held:  # a stale progress.json would join the new result; a report.md would be replaced
        raise UserError("--output {} is not empty (it holds {}{})".format(
            run_dir, ", ".join(held[:3]), ", ..." if len(held) > 3 else ""),
            "give a new or empty folder for the run")


def make_run_dir(output: Optional[str], case: str, vendor: str) -> Path:
    """Create the run folder; never reuse one that already holds a run."""
    check_output(output)
    if output:
        run_dir = Path(output)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / "{}-{}-{}".format(case, vendor, stamp)
        suffix = 1
        while run_dir.exists():
            suffix += 1
            run_dir = Path("runs") / "{}-{}-{}-{}".format(case, vendor, stamp, suffix)
    try:
        for sub in ("logs", "monitor", "checkpoints"):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        error = user_os_error(exc, "the run folder {}".format(run_dir),
                              "give --output a folder you can write to", verb="create")
        raise (error or UserError("cannot create the run folder {} ({})".format(
            run_dir, exc.strerror or exc), "give --output a folder you can write to")) from None
    return run_dir


RUN_FILES = (SPEC_FILE, RESULT_FILE, PROGRESS_FILE, "report.md", "checkpoints/last.pt")
"""Files of a run folder that ``core run`` reads or replaces whole (each through ``<name>.tmp``)."""
RUN_FOLDERS = ("logs", "monitor", "checkpoints", "errors", RETURNED_DIR, "plots")
"""Folders of a run folder that ``core run`` and its report write into."""


def check_run_folder(run_dir: Path) -> None:
    """Refuse, in one line naming them, a run folder to be resumed that holds what ``core run``
    never writes there and must not write through or read: a symbolic link anywhere (a
    ``result.json.tmp`` or ``logs/rank0.log`` linked to a file elsewhere would be overwritten or
    appended to), a FIFO, a device or a socket, a folder where a file of the run belongs (or a
    file where a folder does). Changes nothing."""
    run_dir = Path(run_dir)
    locks = [p.name for p in run_dir.glob(".lock-node*")]
    files = [n for name in RUN_FILES for n in (name, name + ".tmp")] + locks
    found = safeio.unsafe_entries(run_dir, files, RUN_FOLDERS)
    if found:
        more = " and {} more".format(len(found) - 5) if len(found) > 5 else ""
        raise UserError("run folder {} cannot be resumed safely: {}{}".format(
            run_dir, ", ".join(found[:5]), more),
            "remove them, or restore the folder as `core run` wrote it: chipbench writes only "
            "plain files inside a run folder and follows no link there")


def read_spec(run_dir: Path) -> RunSpec:
    """The ``spec.json`` of a run folder; missing, unreadable or malformed is a one-line error."""
    path = Path(run_dir) / SPEC_FILE
    fix = "give the folder of an earlier `core run`"
    if not Path(run_dir).is_dir():
        raise UserError("{} is not a run folder ({})".format(
            run_dir, "a file" if Path(run_dir).exists() else "it does not exist"), fix)
    if not os.path.lexists(str(path)):
        raise UserError("{} holds no run to resume (no spec.json)".format(run_dir), fix)
    try:
        spec = safeio.read_json(path, safeio.RUN_JSON_LIMIT, what="run file",
                                fix=safeio.FIX_RUN_FOLDER)
    except (OSError, ValueError, RecursionError) as exc:
        raise UserError("{} is unreadable ({})".format(path, exc),
                        "it is truncated or corrupt: restore it, or start a new run") from None
    return RunSpec.from_json(spec, path)


def read_result(run_dir: Path) -> Optional[RunResult]:
    """The ``result.json`` of a run folder to be resumed; None where it is missing, unreadable or
    no JSON object (the resume goes on from spec.json and the checkpoint). A file that is not a
    regular file, or one hand-edited into something ``core run`` never wrote, is refused in one
    line, and nothing is touched."""
    path = Path(run_dir) / RESULT_FILE
    found = read_json_dict(path, strict=True)
    return RunResult.from_json(found, path) if found else None


def read_progress(run_dir: Path, metric: Optional[str] = None) -> Optional[RunProgress]:
    """The ``progress.json`` of a run folder; None where it is missing, unreadable, or holds
    figures a run cannot have written (the caller keeps what it recorded before)."""
    path = Path(run_dir) / PROGRESS_FILE
    found = read_json_dict(path)
    try:
        return RunProgress.from_json(found, path, metric)
    except UserError:
        return None


def memory_peak_sample(run_dir: Path) -> Optional[Dict[str, Any]]:
    """The monitor sample of the run folder (every rank's file) with the most device memory in
    use, samples taken after the last epoch's figures included; None where there is none."""
    from chipbench.measure.monitor_samples import monitor_files

    best: Optional[Dict[str, Any]] = None
    for _, samples in monitor_files(run_dir):
        for sample in samples:
            used = sample.get("mem_used_bytes")
            if is_count(used) and (best is None or used > best["mem_used_bytes"]):
                best = sample
    return best
