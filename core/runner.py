"""``core run``: choose the vendor and config, prepare the case, start the workers, write results.

The run folder holds ``spec.json`` (what the workers run), ``result.json`` (written at the start
with status ``running`` and rewritten at the end, whatever happened), ``report.md``,
``progress.json`` (per-epoch figures as they come), ``logs/``, ``monitor/`` and ``checkpoints/``.
"""

import os
import platform
import re
import shlex
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from chipbench import __version__, safeio
from chipbench.case import Case, case_package, load_case, plugin_config_dirs
from chipbench.config import Config, flatten, load_yaml, parse_set, resolve
from chipbench.context import PROGRESS_FILE, RESULT_FILE, read_json_dict, write_json_atomic
from chipbench.errors import (
    ChipbenchError,
    PluginError,
    RunFailed,
    UserError,
    stop_name,
    user_os_error,
)
from chipbench.hookspecs import PRECISIONS
from chipbench.launcher import Topology, last_exception, launch_workers
from chipbench.manager import build_host
from chipbench.metrics import gib, is_count, mem_text
from chipbench.records import HardwareId
from chipbench.selection import ENV_VENDOR, select_device
from chipbench.sentinel import (
    OOM_ADVICE,
    RunLock,
    check_not_running,
    start_sentinel,
    torchrun_pid_path,
)
from chipbench.worker import RETURNED_DIR, SPEC_FILE, TRACE, returned_ranks, run_worker

ZH_NODES = {1: "单机", 2: "两机", 4: "四机", 8: "八机"}


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------


def _hardware_files(dirs: Sequence[Path]) -> List[str]:
    return sorted({p.stem for d in dirs for p in d.glob("*.yaml")
                   if p.stem not in ("defaults", "embedded")})


def hardware_config_path(case: Case, explicit: Optional[str], hardware: HardwareId,
                         topology: Topology, extra_dirs: Sequence[Path] = ()) -> Optional[Path]:
    """The hardware/topology config: ``--config`` (name or path), else ``<tag>x<N>x<M>.yaml``;
    names are looked up in the case's config folder, then in ``extra_dirs`` (plugins' folders).
    A path that is there but is no regular file (a stream such as ``<(cat a.yaml)``, a FIFO, a
    device, a link that loops) is returned: :func:`chipbench.config.load_yaml` reads a stream
    and refuses the others, saying what they are."""
    dirs = [case.config_dir] + list(extra_dirs)
    if explicit:
        kind = safeio.kind_of(explicit)
        if kind not in (None, "a folder"):
            return Path(explicit)
        for path in [d / name for d in dirs for name in (explicit, explicit + ".yaml")]:
            if path.is_file():
                return path
        if kind == "a folder":
            raise UserError("config '{}' is a folder".format(explicit),
                            "give a YAML file, or one of: {}".format(", ".join(
                                _hardware_files(dirs))))
        raise UserError("config '{}' not found".format(explicit),
                        "give a YAML path or one of: {}".format(", ".join(_hardware_files(dirs))))
    for folder in dirs:
        auto = folder / "{}x{}.yaml".format(hardware.config_tag, topology.label)
        if auto.is_file():
            return auto
    return None


def resolve_run_config(case: Case, explicit_config: Optional[str], hardware: HardwareId,
                       topology: Topology, sets: List[str], flags: Config,
                       extra_dirs: Sequence[Tuple[Path, str]] = (),
                       announce: Optional[Callable[[str], None]] = None
                       ) -> Tuple[Config, List[str]]:
    """Case defaults < hardware file < case overlays < ``--set`` < command-line flags.

    ``extra_dirs`` are ``(folder, plugin)`` pairs of plugin-shipped configs
    (:func:`chipbench.case.plugin_config_dirs`). ``announce`` gets a line naming the files
    layered, and one when no hardware file exists for the tag and topology.
    """
    say = announce or (lambda line: None)
    folders = [folder for folder, _ in extra_dirs]
    defaults_path = case.config_dir / "defaults.yaml"
    defaults = load_yaml(defaults_path)
    base: List[Tuple[str, Config]] = []
    hw_path = hardware_config_path(case, explicit_config, hardware, topology, folders)
    if hw_path is not None:
        shipper = {str(folder): plugin for folder, plugin in extra_dirs}.get(str(hw_path.parent))
        try:
            base.append((str(hw_path), load_yaml(hw_path)))
        except UserError as exc:
            if shipper is None:
                raise
            raise PluginError("{} (shipped by plugin '{}')".format(exc.problem, shipper),
                              "report it to the plugin's authors; meanwhile give --config a "
                              "fixed copy") from None
    else:
        wanted = "{}x{}".format(hardware.config_tag, topology.label)
        names = _hardware_files([case.config_dir] + folders)
        same_tag = [n for n in names if n.startswith(hardware.config_tag + "x")]
        say("no hardware config {}.yaml for tag {} and topology {} (case {} has: {}); using the "
            "case defaults".format(wanted, hardware.config_tag, topology.label, case.name,
                                   ", ".join(same_tag or names) or "none"))
    tail = [("--set", parse_set(sets)), ("command-line flags", flags)]
    provisional = resolve(defaults, base + tail)
    layers = base + case.overlays(provisional) + tail
    origins = {str(folder): plugin for folder, plugin in extra_dirs}
    shown = [str(defaults_path)] + [
        "{} (from plugin {})".format(source, origins[str(Path(source).parent)])
        if str(Path(source).parent) in origins else source
        for source, layer in layers if layer or source not in ("--set", "command-line flags")]
    say("config layers: " + " < ".join(shown))
    return resolve(defaults, layers), [source for source, _ in layers]


def fix_hp(case: Case, config: Config) -> str:
    """Every setting that differs from the case defaults: ``"bs=24, lr=0.04, model.min_size=128"``
    (the case's short names first, then the other keys by their dotted names). Settings that do
    not change what is trained, or that the report shows elsewhere, are left out: ``run.*``, the
    data folder and loader plumbing, the embedded set's sizes (the data facts), the precision
    (its own column) and how often p_core is timed (the report's throughput note)."""
    not_hp = ("run.", "data.dir", "data.num_workers", "data.pin_memory", "data.synthetic.",
              "train.precision", "train.core_every")
    defaults = flatten(load_yaml(case.config_dir / "defaults.yaml"))
    current = flatten(config)
    keys = list(case.fix_hp_keys) + [k for k in current if k not in case.fix_hp_keys
                                     and not k.startswith(not_hp)]
    return ", ".join("{}={}".format(case.fix_hp_keys.get(key, key), current[key]) for key in keys
                     if key in current and current.get(key) != defaults.get(key))


def row_labels(hardware: HardwareId, topology: Topology) -> Tuple[str, str]:
    """The seed's row names: ("ACX1 1 node x 8 cards (1x8)", "ACX1 单机8卡（1x8）")."""
    n, m = topology.nnodes, topology.nproc_per_node
    english = "{} {} node{} x {} card{} ({})".format(
        hardware.label, n, "s" if n > 1 else "", m, "s" if m > 1 else "", topology.label)
    chinese = "{} {}{}卡（{}）".format(hardware.label, ZH_NODES.get(n, "{}机".format(n)), m,
                                      topology.label)
    return english, chinese


# --------------------------------------------------------------------------------------------------
# run folder
# --------------------------------------------------------------------------------------------------


def precheck_config(case: Case, sets: List[str], flags: Config) -> None:
    """Check ``--set`` and the flags over the case defaults before torch or a plugin is loaded:
    they win over every other layer, so a value that is bad here is bad in the run too."""
    defaults = load_yaml(case.config_dir / "defaults.yaml")
    tail = [("--set", parse_set(sets)), ("command-line flags", flags)]
    config = resolve(defaults, case.overlays(resolve(defaults, tail)) + tail)
    case.validate(config, list(PRECISIONS))


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


def command_line() -> str:
    """This process's command as a user would type it again (``core run ...``, not the path of
    ``chipbench/__main__.py`` that ``python -m chipbench`` puts in ``sys.argv[0]``)."""
    argv = sys.argv or ["core"]
    program = "core" if Path(argv[0]).name in ("__main__.py", "chipbench", "core", "") else argv[0]
    return " ".join(shlex.quote(a) for a in [program] + argv[1:])


def versions() -> Dict[str, str]:
    from importlib import metadata

    found = {"chipbench": __version__, "python": platform.python_version()}
    for dist in ("torch", "torchvision", "pluggy", "pycocotools", "faster-coco-eval"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


STOP_SIGNALS = ("SIGTERM", "SIGINT")
"""How torchrun (and a user) stops workers: a rank that died of these is stopped, not a cause."""


def _torchrun_failures(summary: str) -> List[Dict[str, str]]:
    """The entries (``rank``, ``exitcode``, ``time``, ``traceback``) of a torchrun failure
    summary, in the order it lists them (``Failures`` first, the ``Root Cause`` last)."""
    entries = []
    for block in re.split(r"^\s*\[\d+\]:\s*$", summary, flags=re.MULTILINE)[1:]:
        fields = {}
        for key in ("rank", "exitcode", "time", "traceback"):
            match = re.search(r"^\s*{}\s*:\s*(.+)$".format(key), block, re.MULTILINE)
            if match:
                fields[key] = match.group(1).strip()
        if fields:
            entries.append(fields)
    return entries


def _signal_number(entry: Dict[str, str]) -> Optional[int]:
    """The signal that ended a failure entry's rank, from its exit code (``-15 (pid: 7)``, with
    or without the ``(SIGTERM)`` that newer torch versions add) or its ``Signal 15 (SIGTERM)``
    traceback line; None for a rank that exited by itself."""
    match = re.match(r"-(\d+)\b", entry.get("exitcode", "")) or re.match(
        r"Signal (\d+)\b", entry.get("traceback", ""))
    return int(match.group(1)) if match else None


def _killed(entry: Dict[str, str]) -> bool:
    """Whether a failure entry's rank was killed by a signal other than a stop signal."""
    number = _signal_number(entry)
    return number is not None and number not in {
        int(getattr(signal, name)) for name in STOP_SIGNALS}


def torchrun_root_cause(log_file: Path, offset: int = 0) -> str:
    """Why torchrun failed, as one line: the rank its failure summary blames, else the last
    exception line of its log (a rendezvous timeout, say), else ''.

    torchrun's "Root Cause" is the failure it *observed* first, a race: when one rank is killed
    (SIGKILL from the OOM killer or a user, a crash), the others fail in their next collective and
    may exit before torchrun notices the kill. A rank killed by a signal no later than the
    observed root cause is therefore the cause (the other ranks' errors are echoes); ranks that
    torchrun itself stopped (SIGTERM) are not."""
    try:  # its end: the summary is there (a log of gigabytes is not read whole)
        text = safeio.read_tail(log_file, offset).decode("utf-8", "replace")
    except (OSError, safeio.FileRefused):
        return ""
    if "Root Cause" not in text:
        error = last_exception(text)
        return "torchrun failed: " + error if error else ""
    before, root_section = text.rsplit("Root Cause", 1)
    roots = _torchrun_failures(root_section)
    if not roots:
        return ""
    root = roots[0]
    listed = before.rsplit("Failures:", 1)[1] if "Failures:" in before else ""
    if not _killed(root):
        killed = [entry for entry in _torchrun_failures(listed) if _killed(entry)
                  and entry.get("time", "") <= root.get("time", "~")]
        root = killed[0] if killed else root
    return "rank {} died (exit code {}{})".format(
        root.get("rank", "?").split(" ")[0], root.get("exitcode", "?").split(" ")[0],
        ": " + root["traceback"] if root.get("traceback", "").startswith("Signal") else "")


SIGKILLED = re.compile(r"\(exit code -9\b|Signal 9\b")
"""A :func:`torchrun_root_cause` line whose rank was killed by SIGKILL (the OOM killer's signal)."""


PEER_LOSS = re.compile(r"connection|socket|peer|broken pipe|timed out|timeout|remote|network|"
                       r"watchdog|collective|barrier|all_?reduce|broadcast|all_?gather|"
                       r"process group|tcpstore", re.IGNORECASE)
"""What a rank's error says when a peer it was exchanging with went away (in any collective
backend's words: no backend is named here)."""


def early_return(errors: List[Tuple[int, str]], returned: List[int]) -> Optional[str]:
    """Where a rank failed on a lost peer after other ranks had returned from the case's
    ``run()``: one line saying so (the failure alone blames the rank that was left waiting)."""
    lost = [(rank, line) for rank, line in errors
            if rank not in returned and PEER_LOSS.search(line)]
    if not returned or not lost:
        return None
    rank, line = lost[0]
    return ("rank{} {} returned from the case's run() while rank {} was still in a collective, "
            "which then failed: {}".format("s" if len(returned) > 1 else "",
                                           ", ".join(map(str, returned)), rank, line))


def worker_errors(run_dir: Path) -> List[Tuple[int, str]]:
    """``(rank, one-line error)`` that failed workers left behind, rank order."""
    folder = Path(run_dir) / "errors"
    if not folder.is_dir():
        return []
    files = [(int(p.stem[4:]), p) for p in folder.glob("rank*.txt") if p.stem[4:].isdigit()]
    lines = []
    for rank, path in sorted(files):
        try:  # a regular file of a line or two: anything else is no rank's error
            lines.append((rank, safeio.read_text(path, safeio.RUN_TEXT_LIMIT,
                                                 errors="replace").strip()))
        except (OSError, safeio.FileRefused):
            continue
    return [(rank, line) for rank, line in lines if line]


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------


class Run:
    """One ``core run`` on this node, from vendor selection to the final ``result.json``."""

    def __init__(self, case_arg: str, vendor: Optional[str], topology: Topology,
                 config_name: Optional[str] = None, sets: Optional[List[str]] = None,
                 data_dir: Optional[str] = None, precision: Optional[str] = None,
                 output: Optional[str] = None, announce: Callable[[str], None] = print) -> None:
        self.started = time.time()
        self.announce = announce
        self.topology = topology
        self.done = False
        self.case = load_case(case_arg)
        flags: Config = {}
        if data_dir:
            flags["data"] = {"dir": str(Path(data_dir).expanduser())}
        if precision:
            flags["train"] = {"precision": precision}
        precheck_config(self.case, sets or [], flags)  # before torch: a typo fails at once
        check_output(output)
        self.host = build_host()
        self.facade = select_device(self.host, vendor, announce=announce)
        if topology.devices and not self.facade.visible_devices_env():
            raise UserError("vendor '{}' has no way to restrict devices".format(self.facade.vendor),
                            "drop --devices")
        self.hardware = self.facade.hardware_id()
        problems: List[str] = []
        shipped = plugin_config_dirs(self.host, self.case.name, problems)
        for problem in problems:  # another plugin's mistake does not stop this run
            announce("warning: {} (its configs are not used)".format(problem))
        self.config, self.sources = resolve_run_config(
            self.case, config_name, self.hardware, topology, sets or [], flags,
            extra_dirs=shipped, announce=announce)
        self.case.validate(self.config, self.facade.supported_precisions())
        self.run_dir = make_run_dir(output, self.case.name, self.facade.vendor)
        self.result: Dict[str, Any] = {}
        self.previous: Optional[Dict[str, Any]] = None

    @classmethod
    def resume(cls, run_dir: str, vendor: Optional[str] = None,
               announce: Callable[[str], None] = print) -> "Run":
        """A run that continues ``run_dir`` from its last epoch checkpoint, same config.

        ``run.done`` is True (and nothing is touched) when the run finished already.
        """
        self = cls.__new__(cls)
        self.started = time.time()
        self.announce = announce
        self.run_dir = Path(run_dir)
        if self.run_dir.is_dir():  # links, FIFOs, devices in it: refused before anything is read
            check_run_folder(self.run_dir)
        spec = read_spec(self.run_dir)
        node_rank = (spec.get("topology") or {}).get("node_rank", 0)
        check_not_running(self.run_dir, node_rank if isinstance(node_rank, int) else 0)
        self.previous = read_json_dict(self.run_dir / RESULT_FILE, strict=True)
        if self.previous:  # hand-edited into something core run never wrote: refused, untouched
            from chipbench.compare import check_result

            check_result(self.previous, self.run_dir / RESULT_FILE)
        self.done = self.previous.get("status") == "finished"
        if self.done:
            return self
        if spec["topology"].get("node_rank", 0) == 0 and not (
                self.run_dir / "checkpoints" / "last.pt").is_file():
            raise UserError("{} has no checkpoint to resume from".format(run_dir),
                            "a run writes checkpoints/last.pt after each epoch; start a new run")
        if vendor and vendor != spec["vendor"]:
            raise UserError("{} was run on vendor '{}', not '{}'".format(
                run_dir, spec["vendor"], vendor), "resume it without --vendor, or start a new run")
        self.case = load_case(spec["case"])
        self.config = checked_spec_config(self.case, spec, self.run_dir / SPEC_FILE)
        try:
            self.topology = Topology(**spec["topology"])
        except (TypeError, ValueError, UserError) as exc:
            raise UserError("{} has a bad topology ({})".format(self.run_dir / SPEC_FILE, exc),
                            "restore the spec.json that core run wrote, or start a new run"
                            ) from None
        self.host = build_host()
        self.facade = select_device(self.host, spec["vendor"], announce=announce)
        self.case.validate(self.config, self.facade.supported_precisions())
        self.hardware = self.facade.hardware_id()
        check = getattr(self.case, "check_resume", None)
        if check is not None and self.topology.node_rank == 0:
            check(self.run_dir)  # an unreadable or unsafe checkpoint: refused, nothing written
        self.sources = self.previous.get("config_sources", [])
        self.result = {}
        return self

    def execute(self) -> Dict[str, Any]:
        """Prepare, run the workers and write the result; errors are recorded, then re-raised."""
        english, chinese = row_labels(self.hardware, self.topology)
        started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started))
        self.result = {
            "status": "running", "error": None, "case": self.case.name,
            "vendor": self.facade.vendor, "hardware": {"label": self.hardware.label,
                                                       "config_tag": self.hardware.config_tag},
            "topology": self.topology.as_dict(), "row_label": english, "row_label_zh": chinese,
            "precision": self.case.precision(self.config), "target": self.case.target(self.config),
            "target_metric": self.case.metric_name, "sample_unit": self.case.sample_unit,
            "config": self.config, "config_sources": self.sources,
            "command": command_line(),
            "started_at": started_at,
            "run_dir": str(self.run_dir), "metrics": {}, "epochs": [],
        }
        if self.previous is not None:
            # until this attempt records more, result.json keeps what the earlier ones measured
            self.result.update(earlier_record(self.previous))
            resumed = self.previous.get("resumed", 0)
            self.result["resumed"] = (resumed if isinstance(resumed, int) and resumed >= 0
                                      else 0) + 1
            # the run began with the first attempt: its command and start stay; each resume
            # is listed after them
            for key in ("command", "started_at"):
                if isinstance(self.previous.get(key), str):
                    self.result[key] = self.previous[key]
            earlier = self.previous.get("resumes")
            self.result["resumes"] = (earlier if isinstance(earlier, list) else []) + [
                {"command": command_line(), "started_at": started_at}]
        lock = RunLock(self.run_dir, self.topology.node_rank)  # a live run's folder: refused
        if lock.problem:
            self.announce("warning: cannot lock the run folder {}: {}; a run killed outright "
                          "(SIGKILL) will not be recorded, and --resume cannot tell whether it "
                          "is still going".format(self.run_dir, lock.problem))
        self.result.update(pid=os.getpid(), host=platform.node())
        try:
            self._write()
            return self._execute(lock)
        finally:
            lock.release()  # after the final result.json: the sentinel reads it and leaves

    def _execute(self, lock: RunLock) -> Dict[str, Any]:
        try:
            try:  # an earlier attempt's, which the sentinel must not take for this one's
                torchrun_pid_path(self.run_dir, self.topology.node_rank).unlink()
            except OSError:
                pass
            if lock.held:
                start_sentinel(self.run_dir, self.topology.node_rank)
            self.result.update(fix_hp=fix_hp(self.case, self.config),
                               versions=dict(versions(), case=case_package(self.case)),
                               environment=self.facade.environment_report())
            prepared = self.case.prepare(self.config)
            self.result["general"] = {"rows": self.case.general_rows(
                self.config, prepared, self.hardware.label)}
            self.result["dataset_note"] = prepared.get("dataset_note", "")
            spec = {"case": self.case.name, "vendor": self.facade.vendor, "config": self.config,
                    "topology": self.topology.as_dict(), "prepared": prepared,
                    "hardware": self.result["hardware"], "resume": self.previous is not None}
            write_json_atomic(self.run_dir / SPEC_FILE, spec)
            self._write()
            for failure in self.host.notify("on_run_start", run=self._run_info()):
                self.announce("warning: " + failure)
            self._run_workers()
            self.result["status"] = "finished"
        except KeyboardInterrupt as exc:
            self.result.update(status="interrupted",
                               error="interrupted ({})".format(stop_name(exc)))
            raise
        except ChipbenchError as exc:
            self.result.update(status="failed", error=exc.one_line())
            raise
        except OSError as exc:
            error = user_os_error(exc)
            if error is None:
                self._record_failure(exc)
                raise
            self.result.update(status="failed", error=error.one_line())
            raise error from None
        except BaseException as exc:
            self._record_failure(exc)
            raise
        finally:
            self._finish()
        return self.result

    def _record_failure(self, exc: BaseException) -> None:
        TRACE.error("run failed:\n%s", traceback.format_exc())
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        self.result.update(status="failed", error="{}: {}".format(type(exc).__name__, first))

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
        progress = read_json_dict(self.run_dir / PROGRESS_FILE)
        previous = self.previous or {}
        if not isinstance(progress.get("epochs"), list):  # unreadable: keep the earlier record
            progress = earlier_record(previous)
        recorded = progress.get("metrics")
        metrics: Dict[str, Any] = dict(recorded) if isinstance(recorded, dict) else {}
        earlier: Any = (previous.get("metrics") or {}).get("e2e_time")
        metrics["e2e_time"] = time.time() - self.started + (
            earlier if is_count(earlier) else 0.0)  # resumed runs add up
        if metrics.get("mem_used_peak_bytes") is not None:
            metrics["mem"] = mem_text(metrics["mem_used_peak_bytes"], metrics["mem_total_bytes"])
            metrics["mem_used_peak_gib"] = gib(metrics["mem_used_peak_bytes"])
            metrics["mem_total_gib"] = gib(metrics["mem_total_bytes"])
        if metrics.get("allocator_peak_bytes") is not None:
            metrics["allocator_peak_gib"] = gib(metrics["allocator_peak_bytes"])
        self.result["metrics"] = metrics
        self.result["epochs"] = progress.get("epochs", [])
        data = progress.get("data") or (self.previous or {}).get("data")
        if data:
            self.result["data"] = data
        if self.topology.nnodes > 1 and not progress and self.result["status"] == "finished":
            self.result["note"] = ("this node did not hold rank 0: the figures of the run are in "
                                   "the run folder of the node that did; this folder holds this "
                                   "node's logs and monitor samples")
        self.result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._write()
        for failure in self.host.notify("on_run_end", run=self._run_info(), result=self.result):
            self.announce("warning: " + failure)

    def _write(self) -> None:
        write_json_atomic(self.run_dir / RESULT_FILE, self.result)

    def _run_info(self) -> Dict[str, Any]:
        return {"run_dir": str(self.run_dir), "case": self.case.name,
                "vendor": self.facade.vendor, "config": self.config}


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


def read_spec(run_dir: Path) -> Dict[str, Any]:
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
    kinds = {"case": str, "vendor": str, "config": dict, "topology": dict}
    bad = [k for k, kind in kinds.items() if not isinstance(spec, dict)
           or not isinstance(spec.get(k), kind)]
    if bad:
        raise UserError("{} lacks a valid {}".format(path, ", ".join(bad)),
                        "restore the spec.json that core run wrote, or start a new run")
    return spec


def checked_spec_config(case: Case, spec: Dict[str, Any], source: Path) -> Config:
    """The config of a ``spec.json``, checked like a new one (keys, types, values) and complete:
    ``core run`` writes every key, so a key it lacks is refused, never filled in from the
    defaults (a resumed run would train on other settings, or another data set, than the epochs
    it continues)."""
    defaults = load_yaml(case.config_dir / "defaults.yaml")
    missing = missing_keys(defaults, spec["config"])
    if missing:
        raise UserError("{} lacks config key{} {}".format(
            source, "s" if len(missing) > 1 else "", ", ".join(missing[:6]) + (
                " and {} more".format(len(missing) - 6) if len(missing) > 6 else "")),
            "restore the spec.json that core run wrote, or start a new run")
    config = resolve(defaults, [(str(source), spec["config"])])
    try:
        case.validate(config, list(PRECISIONS))
    except UserError as exc:
        raise UserError("{} (in {})".format(exc.problem, source),
                        "restore the spec.json that core run wrote, or start a new run") from None
    return config


def missing_keys(defaults: Config, config: Config, prefix: str = "") -> List[str]:
    """The dotted keys of ``defaults`` (its leaves) that ``config`` does not hold."""
    missing: List[str] = []
    for key, default in defaults.items():
        if key not in config:
            missing.extend(list(flatten(default, prefix + key + "."))
                           if isinstance(default, dict) and default else [prefix + key])
        elif isinstance(default, dict) and isinstance(config[key], dict):  # else a type error
            missing.extend(missing_keys(default, config[key], prefix + key + "."))
    return missing


def earlier_record(previous: Dict[str, Any]) -> Dict[str, Any]:
    """What a resumed run keeps of its earlier attempts' result.json: metrics, epochs, data."""
    return {key: previous[key] for key, kind in (("metrics", dict), ("epochs", list),
                                                  ("data", dict))
            if isinstance(previous.get(key), kind)}


