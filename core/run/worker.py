"""One worker process of a run: ``python -m chipbench.run.worker RUN_DIR`` (torchrun starts it per rank).

Reads the run's ``spec.json``, selects the same vendor, initialises its device for the local rank
and the process group with the vendor's collective backend, then runs the case. A worker that
fails writes its one-line error to ``errors/rank<N>.txt`` so the launcher can report it.
"""

import datetime
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from chipbench.errors import (
    TRACE,
    ChipbenchError,
    PluginError,
    RunFailed,
    UserError,
    describe_exception,
    interrupt_on_stop_signals,
    is_allocation_failure,
    user_os_error,
)
from chipbench.run.context import RunContext
from chipbench.run.resultrecord import Metrics
from chipbench.run.runfiles import RETURNED_DIR, write_json_atomic
from chipbench.run.runfolder import read_spec
from chipbench.util import safeio
from chipbench.util.exiting import exit_now, threads_owned_by

if TYPE_CHECKING:
    from chipbench.case import Case
    from chipbench.host.device import Device
    from chipbench.host.manager import PluginHost
    from chipbench.measure.profiling import StepProfiler

TRACE.addHandler(logging.NullHandler())


def setup_logging(run_dir: Path, rank: int, to_console: bool) -> logging.Logger:
    """Log this rank to ``logs/rank<N>.log`` (and the console for rank 0)."""
    log = logging.getLogger("chipbench")
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    safeio.ensure_folder(run_dir / "logs", what="run folder")
    file_handler = RunLogHandler(run_dir / "logs" / "rank{}.log".format(rank))
    file_handler.setFormatter(logging.Formatter("%(asctime)s rank{} %(message)s".format(rank)))
    log.addHandler(file_handler)
    for handler in list(TRACE.handlers):
        TRACE.removeHandler(handler)
    TRACE.addHandler(file_handler)
    if to_console:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(console)
    return log


class RunLogHandler(logging.FileHandler):
    """``logging.FileHandler`` that appends to a regular file and never through a link
    (:func:`chipbench.util.safeio.open_for_append`)."""

    def _open(self) -> Any:
        return safeio.open_for_append(self.baseFilename, encoding=self.encoding, what="run file")


def run_worker(run_dir: Path, host: Optional["PluginHost"] = None,
               facade: Optional["Device"] = None) -> Optional[Metrics]:
    """Run the case of ``run_dir`` on this process's rank; rank 0 records the case's final
    metrics (progress.json) and returns them, the other ranks return None (their figures are
    rank 0's to record)."""
    from chipbench.measure.monitor import DeviceMonitor
    from chipbench.run.caseload import checked_metrics, load_case

    run_dir = Path(run_dir)
    spec = read_spec(run_dir)
    config = spec.config
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    log = setup_logging(run_dir, rank, to_console=(rank == 0))
    log.info("worker pid %d: rank %d of %d, local rank %d", os.getpid(), rank, world_size,
             local_rank)
    if facade is None:
        from chipbench.host.manager import build_host
        from chipbench.host.selection import select_device

        host = build_host()
        facade = select_device(host, spec.vendor)
    host = host or facade.host
    visible = facade.visible_devices_env()
    if visible:
        log.info("%s=%s", visible, os.environ.get(visible, "(unset: all devices)"))
    check_local_device(facade, local_rank)
    check_devices_restricted(facade, spec.topology.get("devices"))
    device = facade.init_backend(local_rank)
    if world_size > 1:
        import torch.distributed as dist

        dist.init_process_group(
            backend=facade.process_group_backend(),
            timeout=datetime.timedelta(seconds=float(config["run"]["timeout_s"])))
    monitor = DeviceMonitor(facade, device, run_dir / "monitor" / "rank{}.jsonl".format(rank),
                            interval_s=config["run"]["monitor_interval_s"]).start()
    ctx = RunContext(spec=spec.to_json(), config=config, run_dir=run_dir, host=host, facade=facade,
                     device=device, rank=rank, local_rank=local_rank, world_size=world_size,
                     log=log, monitor=monitor)
    case = load_case(spec.case)
    profiler = None
    try:
        profiler = start_profiler(run_dir, rank, device, ctx) if spec.profile else None
        try:
            with threads_owned_by("case '{}'".format(case.name)):  # named if one hangs the exit
                metrics = case.run(ctx)
        except (RuntimeError, MemoryError) as exc:
            if not is_allocation_failure(exc):
                raise
            raise allocation_error(case, config, exc) from None
        if world_size > 1:
            record_returned(run_dir, rank)
        if not ctx.is_main:
            return None
        final = final_metrics(case, checked_metrics(case, metrics, spec_target(case, config)))
        ctx.save_progress(final=True, metrics=final.to_json())
        return final
    finally:
        if profiler is not None:
            finish_profiler(profiler, run_dir, rank, log)
        monitor.stop()
        if world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def start_profiler(run_dir: Path, rank: int, device: Any, ctx: RunContext) -> "StepProfiler":
    """``--profile``: a :class:`chipbench.measure.profiling.StepProfiler` stepped by the case's
    ``ctx.core_step`` (through ``ctx.on_step``)."""
    from chipbench.measure.profiling import StepProfiler

    profiler = StepProfiler(run_dir, rank, getattr(device, "type", "cpu"))
    ctx.on_step = profiler.step
    return profiler


def finish_profiler(profiler: "StepProfiler", run_dir: Path, rank: int, log: logging.Logger) -> None:
    """Stop profiling; rank 0 writes what it recorded to ``profile/summary.json`` (the runner
    puts it into result.json). A failure here (a full disk, a link in the run folder) is
    recorded as the profile's error and logged: it never replaces the run's own outcome."""
    from chipbench.measure.profiling import SUMMARY_FILE

    try:
        summary = profiler.close()
    except Exception as exc:  # noqa: BLE001 - the trace export: disk, links, torch
        summary = {"error": "the profile could not be written: {}".format(
            describe_exception(exc))}
    if rank != 0:
        return
    try:
        write_json_atomic(run_dir / SUMMARY_FILE, summary)
    except (OSError, ChipbenchError) as exc:
        log.warning("warning: the profile summary could not be written: %s", exc)


def check_local_device(facade: "Device", local_rank: int) -> None:
    """Refuse, in one line, a local rank beyond the devices this process sees (more processes per
    node than devices, or ``--devices`` naming devices that do not exist). Processes of a vendor
    whose torch device type is ``cpu`` share the host's one CPU device, so any number may run."""
    if facade.info.device_type == "cpu":
        return
    count = facade.count()
    if local_rank < count:
        return
    visible = facade.visible_devices_env()
    shown_env = " ({}={})".format(visible, os.environ[visible]) if visible and visible in os.environ \
        else ""
    raise UserError("local rank {} has no device: vendor '{}' sees {} device(s) on this node{}".format(
        local_rank, facade.vendor, count, shown_env),
        "run at most {} process(es) per node (--nproc-per-node), or list devices that exist "
        "with --devices".format(max(count, 1)))


def check_devices_restricted(facade: "Device", devices: Optional[str]) -> None:
    """With ``--devices``, refuse in one line a vendor whose visible-devices variable did not
    restrict what this process sees (its ranks would run on devices the user did not list).
    Processes of a ``cpu``-type vendor share the host's one CPU device: nothing to tell there."""
    visible = facade.visible_devices_env()
    if not devices or not visible or facade.info.device_type == "cpu":
        return
    listed = len(str(devices).split(","))
    count = facade.count()
    if count != listed:
        raise PluginError(
            "vendor '{}' names {} as the variable that restricts devices, but with {}={} this "
            "process sees {} device(s), not {}".format(facade.vendor, visible, visible,
                                                      os.environ.get(visible, devices), count,
                                                      listed),
            "report it to the plugin's authors (visible_devices_env); run without --devices "
            "meanwhile")


def final_metrics(case: "Case", metrics: Dict[str, Any]) -> Metrics:
    """The case's final ``metrics`` (checked by ``checked_metrics``) as the record result.json
    keeps; a figure of chipbench's of another kind (``mem_source`` a number, ``cpu_share`` a
    list) is one line naming the case, as a plugin's fault."""
    try:
        return Metrics.from_json(metrics, "case '{}' run()".format(case.name), strict=True)
    except UserError as exc:
        raise PluginError(exc.problem, "fix the case's run(): chipbench's own figures keep "
                          "their kinds (see docs/cases.md)") from None


def spec_target(case: "Case", config: Dict[str, Any]) -> Any:
    """The case's target for ``config`` (None where the case has none or cannot say)."""
    try:
        return case.target(config)
    except ChipbenchError:
        return None


def allocation_error(case: "Case", config: Dict[str, Any], exc: BaseException) -> UserError:
    """A failed host or device allocation as one line naming the sizes and what to lower."""
    hint = getattr(case, "memory_hint", None)
    what, settings = hint(config) if hint is not None else ("the run", "the input or batch size")
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return UserError("cannot allocate memory for {} ({})".format(what, first),
                     "lower {}; the finished epochs are kept".format(settings))


def record_error(run_dir: Path, rank: int, message: str) -> None:
    """Leave this rank's one-line error where the launcher looks for it."""
    try:
        errors = safeio.ensure_folder(Path(run_dir) / "errors", what="run folder")
        safeio.write_atomic(errors / "rank{}.txt".format(rank), message + "\n", what="run file")
    except (OSError, UserError):
        pass


def record_returned(run_dir: Path, rank: int) -> None:
    """Note that this rank's ``case.run()`` returned."""
    try:
        folder = safeio.ensure_folder(Path(run_dir) / RETURNED_DIR, what="run folder")
        safeio.write_atomic(folder / "rank{}.returned".format(rank),
                            "{:.3f}\n".format(time.time()), what="run file")
    except (OSError, UserError):
        pass


def returned_ranks(run_dir: Path) -> List[int]:
    """The ranks whose ``case.run()`` returned, in order."""
    folder = Path(run_dir) / RETURNED_DIR
    if not folder.is_dir():
        return []
    ranks = (p.name[4:-len(".returned")] for p in folder.glob("rank*.returned"))
    return sorted(int(r) for r in ranks if r.isdigit())


def main(argv: Optional[list] = None) -> int:
    """Entry point of a torchrun worker."""
    argv = sys.argv[1:] if argv is None else argv
    run_dir = Path(argv[0])
    rank = int(os.environ.get("RANK", "0"))
    interrupt_on_stop_signals(("SIGINT",))  # a plugin's own KeyboardInterrupt: its failure
    try:
        run_worker(run_dir)
    except (ChipbenchError, OSError) as exc:
        error = exc if isinstance(exc, ChipbenchError) else user_os_error(exc)
        if error is None:
            return _failed(run_dir, rank, exc)
        record_error(run_dir, rank, error.one_line())
        TRACE.error("error: %s\n%s", error.one_line(), traceback.format_exc())
        return error.exit_code
    except BaseException as exc:  # noqa: B902 - every failure must reach the launcher
        return _failed(run_dir, rank, exc)
    return 0


def _failed(run_dir: Path, rank: int, exc: BaseException) -> int:
    text = "{}: {}".format(type(exc).__name__, str(exc).strip().splitlines()[0]
                           if str(exc).strip() else "")
    record_error(run_dir, rank, "rank {} failed: {}".format(rank, text))
    TRACE.error("rank %d failed: %s\n%s", rank, text, traceback.format_exc())
    return RunFailed.exit_code


if __name__ == "__main__":
    exit_now(main())  # torchrun waits for every worker: skip the interpreter's slow teardown
