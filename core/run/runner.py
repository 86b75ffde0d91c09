"""``core run``: choose the vendor and config, prepare the case, start the workers, write results.

The run folder holds ``spec.json`` (what the workers run), ``result.json`` (written at the start
with status ``running`` and rewritten at the end, whatever happened), ``report.md``,
``progress.json`` (per-epoch figures as they come), ``logs/``, ``monitor/`` and ``checkpoints/``.
"""

import os
import platform
import shlex
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from chipbench.case import Case
from chipbench.errors import (
    TRACE,
    ChipbenchError,
    RunFailed,
    UserError,
    stop_name,
    user_os_error,
)
from chipbench.host.device import Device
from chipbench.host.manager import PluginHost, build_host
from chipbench.host.selection import ENV_VENDOR, select_device
from chipbench.measure.environment import versions
from chipbench.records import HardwareId
from chipbench.run.caseload import case_package, load_case, plugin_config_dirs
from chipbench.run.config import Config
from chipbench.run.launcher import Topology, launch_workers
from chipbench.run.layers import (  # noqa: F401 - resolve_run_config: chipbench.run.runner's name too
    checked_spec_config,
    fix_hp,
    precheck_config,
    resolve_run_config,
)
from chipbench.run.resultrecord import Metrics, ProfileSummary, RunResult
from chipbench.run.runfiles import (
    CHECKPOINT_FILE,
    RESULT_FILE,
    RETURNED_DIR,
    SPEC_FILE,
    read_json_dict,
    write_json_atomic,
)
from chipbench.run.runfolder import (  # noqa: F401 - check_run_folder: chipbench.run.runner's name too
    check_output,
    check_run_folder,
    make_run_dir,
    memory_peak_sample,
    read_progress,
    read_result,
    read_spec,
)
from chipbench.run.sentinel import (
    OOM_ADVICE,
    RunLock,
    check_not_running,
    start_sentinel,
    torchrun_pid_path,
)
from chipbench.run.specrecord import RunSpec
from chipbench.run.torchrun_log import (  # noqa: F401 - torchrun_root_cause: chipbench.run.runner's too
    SIGKILLED,
    early_return,
    torchrun_root_cause,
    worker_errors,
)
from chipbench.run.worker import returned_ranks, run_worker

ZH_NODES = {1: "单机", 2: "两机", 4: "四机", 8: "八机"}


def row_labels(hardware: HardwareId, topology: Topology) -> Tuple[str, str]:
    """The seed's row names: ("ACX1 1 node x 8 cards (1x8)", "ACX1 单机8卡（1x8）")."""
    n, m = topology.nnodes, topology.nproc_per_node
    english = "{} {} node{} x {} card{} ({})".format(
        hardware.label, n, "s" if n > 1 else "", m, "s" if m > 1 else "", topology.label)
    chinese = "{} {}{}卡（{}）".format(hardware.label, ZH_NODES.get(n, "{}机".format(n)), m,
                                      topology.label)
    return english, chinese


def command_line() -> str:
    """This process's command as a user would type it again (``core run ...``, not the path of
    ``chipbench/__main__.py`` that ``python -m chipbench`` puts in ``sys.argv[0]``)."""
    argv = sys.argv or ["core"]
    program = "core" if Path(argv[0]).name in ("__main__.py", "chipbench", "core", "") else argv[0]
    return " ".join(shlex.quote(a) for a in [program] + argv[1:])


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------


@dataclass
class RunPlan:
    """What a run is decided from, before it writes anything: the case, the chosen vendor, the
    config and where it came from, the topology and the run folder; for a resumed run, the
    record of its earlier attempts."""

    case: Case
    host: PluginHost
    facade: Device
    hardware: HardwareId
    topology: Topology
    config: Config
    sources: List[str]
    run_dir: Path
    started: float
    resuming: bool = False
    """Whether this attempt continues an earlier one from its checkpoint."""
    previous: Optional[RunResult] = None
    """The earlier attempts' ``result.json`` (a resumed run whose folder holds one)."""
    profile: bool = False
    """``--profile``: the workers record a few iterations with torch.profiler."""


def plan_new(case_arg: str, vendor: Optional[str], topology: Topology,
             config_name: Optional[str] = None, sets: Optional[List[str]] = None,
             data_dir: Optional[str] = None, precision: Optional[str] = None,
             output: Optional[str] = None, announce: Callable[[str], None] = print,
             profile: bool = False) -> RunPlan:
    """The plan of a new run (``core run CASE ...``); the run folder is created last, once every
    input was checked."""
    started = time.time()
    case = load_case(case_arg)
    flags: Config = {}
    if data_dir:
        flags["data"] = {"dir": str(Path(data_dir).expanduser())}
    if precision:
        flags["train"] = {"precision": precision}
    precheck_config(case, sets or [], flags)  # before torch: a typo fails at once
    check_output(output)
    host = build_host()
    facade = select_device(host, vendor, announce=announce)
    if topology.devices and not facade.visible_devices_env():
        raise UserError("vendor '{}' has no way to restrict devices".format(facade.vendor),
                        "drop --devices")
    hardware = facade.hardware_id()
    problems: List[str] = []
    shipped = plugin_config_dirs(host, case.name, problems)
    for problem in problems:  # another plugin's mistake does not stop this run
        announce("warning: {} (its configs are not used)".format(problem))
    config, sources = resolve_run_config(case, config_name, hardware, topology, sets or [], flags,
                                         extra_dirs=shipped, announce=announce)
    case.validate(config, facade.supported_precisions())
    run_dir = make_run_dir(output, case.name, facade.vendor)
    return RunPlan(case, host, facade, hardware, topology, config, sources, run_dir, started,
                   profile=profile)


def plan_resume(run_dir: str, vendor: Optional[str] = None,
                announce: Callable[[str], None] = print, profile: bool = False
                ) -> Optional[RunPlan]:
    """The plan that continues ``run_dir`` from its last epoch checkpoint with the settings it
    started with; None (and nothing touched) when it finished already. Everything the folder
    holds is checked before anything is written: it may come from someone else."""
    started = time.time()
    folder = Path(run_dir)
    if folder.is_dir():  # links, FIFOs, devices in it: refused before anything is read
        check_run_folder(folder)
    spec = read_spec(folder)
    node_rank = spec.topology.get("node_rank", 0)
    check_not_running(folder, node_rank if isinstance(node_rank, int) else 0)
    previous = read_result(folder)  # hand-edited into something core run never wrote: refused
    if previous is not None and previous.status == "finished":
        return None
    if node_rank == 0 and not (
            folder / CHECKPOINT_FILE).is_file():
        raise UserError("{} has no checkpoint to resume from".format(run_dir),
                        "a run writes checkpoints/last.pt after each epoch; start a new run")
    if vendor and vendor != spec.vendor:
        raise UserError("{} was run on vendor '{}', not '{}'".format(
            run_dir, spec.vendor, vendor), "resume it without --vendor, or start a new run")
    case = load_case(spec.case)
    config = checked_spec_config(case, spec.config, folder / SPEC_FILE)
    try:
        topology = Topology(**spec.topology)
    except (TypeError, ValueError, UserError) as exc:
        raise UserError("{} has a bad topology ({})".format(folder / SPEC_FILE, exc),
                        "restore the spec.json that core run wrote, or start a new run") from None
    host = build_host()
    facade = select_device(host, spec.vendor, announce=announce)
    case.validate(config, facade.supported_precisions())
    hardware = facade.hardware_id()
    check = getattr(case, "check_resume", None)
    if check is not None and topology.node_rank == 0:
        check(folder)  # an unreadable or unsafe checkpoint: refused, nothing written
    sources = (previous.config_sources if previous is not None else None) or []
    return RunPlan(case, host, facade, hardware, topology, config, sources, folder, started,
                   True, previous, profile=profile)


class Run:
    """One ``core run`` on this node, from its plan to the final ``result.json``."""

    def __init__(self, plan: RunPlan, announce: Callable[[str], None] = print) -> None:
        self.plan = plan
        self.announce = announce
        self.started = plan.started
        self.case, self.host, self.facade = plan.case, plan.host, plan.facade
        self.hardware, self.topology, self.run_dir = plan.hardware, plan.topology, plan.run_dir
        self.config, self.sources, self.previous = plan.config, plan.sources, plan.previous
        self.resuming = plan.resuming
        self.result = RunResult()

    def execute(self) -> RunResult:
        """Prepare, run the workers and write the result; errors are recorded, then re-raised.
        Returns the final record (what ``result.json`` holds)."""
        english, chinese = row_labels(self.hardware, self.topology)
        started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started))
        self.result = RunResult(
            status="running", error=None, case=self.case.name, vendor=self.facade.vendor,
            hardware={"label": self.hardware.label, "config_tag": self.hardware.config_tag},
            topology=self.topology.as_dict(), row_label=english, row_label_zh=chinese,
            precision=self.case.precision(self.config), target=self.case.target(self.config),
            target_metric=self.case.metric_name, sample_unit=self.case.sample_unit,
            config=self.config, config_sources=self.sources, command=command_line(),
            started_at=started_at, run_dir=str(self.run_dir), metrics=Metrics(), epochs=[])
        if self.previous is not None:
            self.result = self.result.continuing(self.previous, command_line(), started_at)
        elif self.resuming:  # an earlier attempt that left no readable result.json
            self.result = self.result.continuing(RunResult(), command_line(), started_at)
        lock = RunLock(self.run_dir, self.topology.node_rank)  # a live run's folder: refused
        if lock.problem:
            self.announce("warning: cannot lock the run folder {}: {}; a run killed outright "
                          "(SIGKILL) will not be recorded, and --resume cannot tell whether it "
                          "is still going".format(self.run_dir, lock.problem))
        self.result = replace(self.result, pid=os.getpid(), host=platform.node())
        try:
            self._write()
            return self._execute(lock)
        finally:
            lock.release()  # after the final result.json: the sentinel reads it and leaves

    def _execute(self, lock: RunLock) -> RunResult:
        try:
            try:  # an earlier attempt's, which the sentinel must not take for this one's
                torchrun_pid_path(self.run_dir, self.topology.node_rank).unlink()
            except OSError:
                pass
            if lock.held:
                start_sentinel(self.run_dir, self.topology.node_rank)
            self.result = replace(
                self.result, fix_hp=fix_hp(self.case, self.config),
                versions=dict(versions(self.case.packages), case=case_package(self.case),
                              vendor=self.host.vendor_package(self.facade.vendor)),
                environment=self.facade.environment_report())
            prepared = self.case.prepare(self.config)
            self.result = replace(
                self.result, general={"rows": self.case.general_rows(
                    self.config, prepared, self.hardware.label)},
                dataset_note=prepared.get("dataset_note", ""))
            spec = RunSpec(self.case.name, self.facade.vendor, self.config,
                           self.topology.as_dict(), prepared, self.result.hardware or {},
                           self.resuming, self.plan.profile)
            write_json_atomic(self.run_dir / SPEC_FILE, spec.to_json())
            self._write()
            for failure in self.host.notify("on_run_start", run=self._run_info()):
                self.announce("warning: " + failure)
            self._run_workers()
            self.result = replace(self.result, status="finished")
        except KeyboardInterrupt as exc:
            self._record("interrupted", "interrupted ({})".format(stop_name(exc)))
            raise
        except ChipbenchError as exc:
            self._record("failed", exc.one_line())
            raise
        except OSError as exc:
            error = user_os_error(exc)
            if error is None:
                self._record_failure(exc)
                raise
            self._record("failed", error.one_line())
            raise error from None
        except BaseException as exc:
            self._record_failure(exc)
            raise
        finally:
            self._finish()
        return self.result

    def _record(self, status: str, error: str) -> None:
        self.result = replace(self.result, status=status, error=error)

    def _record_failure(self, exc: BaseException) -> None:
        TRACE.error("run failed:\n%s", traceback.format_exc())
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        self._record("failed", "{}: {}".format(type(exc).__name__, first))

    def _run_workers(self) -> None:
        """One process in place; more, or a device restriction, through torchrun (a device
        runtime reads its visible-devices variable once, when a process starts)."""
        if self.topology.world_size == 1 and not self.topology.devices:
            run_worker(self.run_dir, self.host, self.facade)
            return
        env = {ENV_VENDOR: self.facade.vendor}
        if self.topology.devices:
            env[self.facade.visible_devices_env()] = self.topology.devices
        for folder in ("errors", RETURNED_DIR):  # a resumed run's old ones
            shutil.rmtree(self.run_dir / folder, ignore_errors=True)
        log_file = self.run_dir / "logs" / "torchrun-node{}.log".format(self.topology.node_rank)
        offset = log_file.stat().st_size if log_file.exists() else 0
        code = launch_workers(self.topology, self.run_dir, env)
        if code != 0:
            ranked = worker_errors(self.run_dir)
            errors = [line for _, line in ranked]
            cause = torchrun_root_cause(log_file, offset)
            # a rank killed by a signal leaves no error file: the others' errors are echoes
            if cause and ("Signal" in cause or not errors):
                errors, ranked = [cause], []
            first = errors[0] if errors else "torchrun exited with code {}".format(code)
            user_error = errors and all(not e.startswith(("rank ", "torchrun ")) for e in errors)
            error_type = UserError if user_error else RunFailed
            logs = "see {}/logs for every rank's log".format(self.run_dir)
            if SIGKILLED.search(first):
                logs = OOM_ADVICE + "; " + logs
            early = early_return(ranked, returned_ranks(self.run_dir))
            if early:
                raise error_type(early, "every rank must run the same collectives: does run() "
                                 "return early on some ranks? " + logs)
            raise error_type(first, logs)

    def _finish(self) -> None:
        """The final result.json: the figures of progress.json (where unreadable, what the
        earlier attempts recorded), the end-to-end time of every attempt, and the memory peak
        of every monitor sample (those after the last epoch's figures too)."""
        previous = self.previous or RunResult()
        progress = read_progress(self.run_dir)
        metrics = progress.metrics if progress is not None else previous.metrics
        epochs = progress.epochs if progress is not None else list(previous.epochs or [])
        earlier = previous.metrics.e2e_time or 0.0  # resumed runs add up
        metrics = replace(metrics.with_memory_sample(memory_peak_sample(self.run_dir)),
                          e2e_time=time.time() - self.started + earlier)
        self.result = replace(self.result, metrics=metrics.with_memory_columns(), epochs=epochs,
                              data=(progress.data if progress is not None else None)
                              or previous.data or self.result.data,
                              finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self.result = replace(self.result, profile=self._profile())
        if self.topology.nnodes > 1 and progress is None and self.previous is None \
                and self.result.status == "finished":
            self.result = replace(self.result, note=(
                "this node did not hold rank 0: the figures of the run are in the run folder of "
                "the node that did; this folder holds this node's logs and monitor samples"))
        self._write()
        for failure in self.host.notify("on_run_end", run=self._run_info(),
                                        result=self.result.to_json()):
            self.announce("warning: " + failure)

    def _profile(self) -> Optional[ProfileSummary]:
        """result.json's ``profile``: this attempt's (``--profile``), else an earlier attempt's
        (a resumed run's throughput still counts the profiled iterations); None where no attempt
        profiled, or on a node without rank 0 (that node's folder holds no figures)."""
        from chipbench.measure.profiling import SUMMARY_FILE

        if self.topology.node_rank != 0:
            return None
        if self.plan.profile:
            return ProfileSummary.from_json(read_json_dict(self.run_dir / SUMMARY_FILE) or {
                "error": "no profile was recorded: the workers ended before they wrote one"},
                self.run_dir / SUMMARY_FILE)
        return self.previous.profile if self.previous is not None else None

    def _write(self) -> None:
        write_json_atomic(self.run_dir / RESULT_FILE, self.result.to_json())

    def _run_info(self) -> Dict[str, Any]:
        return {"run_dir": str(self.run_dir), "case": self.case.name,
                "vendor": self.facade.vendor, "config": self.config}


