"""The ``core`` command: ``vendors``, ``info``, ``doctor``, ``cases`` and ``run``.

Errors are one line on stderr (``error: <problem>; <fix>``) with exit code 2 for bad input; add
``--debug`` for the traceback. ``core --help`` imports neither torch nor any plugin.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, NoReturn, Optional

from chipbench import __version__
from chipbench.errors import (
    EXIT_PIPE_CLOSED,
    EXIT_USER_ERROR,
    ChipbenchError,
    UserError,
    interrupt_exit_code,
    interrupt_on_stop_signals,
    restore_handlers,
    stop_name,
    user_os_error,
)
from chipbench.exiting import exit_now
from chipbench.metrics import is_number
from chipbench.text import VALUE_LIMIT, terminal, terminal_table

if TYPE_CHECKING:
    from chipbench.device import Device


def _print_err(line: str) -> None:
    """One line on stderr (an error, a warning, a note): whatever text of a file or a plugin it
    holds is escaped (:func:`chipbench.text.terminal`), so it stays one line and cannot control
    the terminal."""
    print(terminal(line), file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------------


def cmd_vendors(args: argparse.Namespace) -> int:
    """Table of every vendor plugin: origin, availability, reason, priority, the one auto picks."""
    from chipbench.manager import build_host
    from chipbench.selection import choose_vendor

    host = build_host()
    try:
        chosen = choose_vendor(host, None).name
    except ChipbenchError:
        chosen = None
    rows = []
    for record in host.records:
        if record.extra.get("kind") == "observer":
            continue
        info = record.info
        rows.append({
            "name": record.name,
            "origin": record.origin,
            "available": ("broken" if record.broken or info is None
                          else "yes" if info.available else "no"),
            "priority": "" if info is None else str(info.priority),
            "auto": "<- auto" if chosen == record.name and not record.broken else "",
            "reason": record.error if record.broken or info is None else info.reason,
        })
    if args.json:
        emit(json.dumps(rows, indent=2))
        return 0
    print(terminal_table(rows, ("name", "available", "priority", "origin", "reason", "auto"),
                         2 * VALUE_LIMIT))
    return 0


def _selected(args: argparse.Namespace) -> Device:
    from chipbench.manager import build_host
    from chipbench.selection import select_device

    return select_device(build_host(), args.vendor, announce=_print_err)


def cmd_info(args: argparse.Namespace) -> int:
    """The chosen vendor's environment report (the seed's hardware/software section)."""
    facade = _selected(args)
    report: Dict[str, Any] = {"vendor": facade.vendor}
    hardware = facade.hardware_id()
    report.update({"hardware_label": hardware.label, "config_tag": hardware.config_tag,
                   "collective_backend": facade.collective_backend(),
                   "visible_devices_env": facade.visible_devices_env() or "(none)",
                   "supported_precisions": facade.supported_precisions()})
    # the vendor's facts after chipbench's own, which it cannot overwrite
    report.update({k: v for k, v in facade.environment_report().items() if k not in report})
    if args.json:
        emit(json.dumps(report, indent=2, default=str))
        return 0
    for line in info_lines(report):
        print(line)
    return 0


def info_lines(report: Dict[str, Any]) -> List[str]:
    """``core info``'s lines: ``key: value``, lists and mappings on one line, each device on its
    own. Keys and values are the vendor's answers: escaped and cut
    (:func:`chipbench.text.terminal`), so that each stays on its line."""
    def one(value: Any) -> str:
        if isinstance(value, dict):
            return ", ".join("{}={}".format(terminal(k, VALUE_LIMIT), one(v))
                             for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return ", ".join(one(v) for v in value)
        return terminal(value, VALUE_LIMIT)

    lines = []
    for key, value in report.items():
        if key == "devices" and isinstance(value, list):
            lines.append("devices:")
            lines += ["  " + one(device) for device in value]
        else:
            lines.append("{}: {}".format(terminal(key, VALUE_LIMIT), one(value)))
    return lines


def cmd_doctor(args: argparse.Namespace) -> int:
    """Run the conformance kit on the real device: a table (or JSON) a hardware owner can send;
    exit 1 when any check failed."""
    from chipbench.doctor import as_json, as_table, run_doctor

    facade = _selected(args)
    results = run_doctor(facade, alloc_mib=args.alloc_mib, live=not args.static)
    emit(as_json(facade.vendor, results) if args.json else as_table(facade.vendor, results))
    return 0 if all(r.ok for r in results) else 1


def cmd_cases(args: argparse.Namespace) -> int:
    """Table of every case: name, origin, title, hardware configs found (the case's own and those
    shipped by vendor plugins), broken ones with their reason."""
    from chipbench.case import discover_cases, plugin_config_dirs
    from chipbench.manager import build_host

    host = build_host()
    rows = []
    for record in discover_cases():
        configs: List[str] = []
        if record.case is not None:
            configs = sorted(p.stem for p in record.case.config_dir.glob("*.yaml")
                             if p.stem not in ("defaults", "embedded"))
            problems: List[str] = []  # one bad plugin does not hide the list
            for folder, plugin in plugin_config_dirs(host, record.name, problems):
                configs += ["{} ({})".format(p.stem, plugin)
                            for p in sorted(folder.glob("*.yaml"))]
            configs += ["[{}]".format(problem) for problem in problems]
        rows.append({"name": record.name, "origin": record.origin,
                     "status": "broken" if record.broken else "ok",
                     "title": (record.error if record.broken or record.case is None
                               else record.case.title),
                     "configs": ", ".join(configs) or "none"})
    if args.json:
        emit(json.dumps(rows, indent=2))
        return 0
    print(terminal_table(rows, ("name", "status", "origin", "title", "configs"), 5 * VALUE_LIMIT))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run a case and print the seed's performance table."""
    from chipbench.launcher import Topology
    from chipbench.report import perf_columns, perf_row, text_table
    from chipbench.runner import Run

    topology = Topology(nproc_per_node=args.nproc_per_node, nnodes=args.nnodes,
                        node_rank=args.node_rank, master_addr=args.master_addr,
                        master_port=args.master_port, rdzv_endpoint=args.rdzv_endpoint,
                        join_timeout_s=args.join_timeout, devices=args.devices)
    if args.resume:
        refuse_with_resume(args)
        run = Run.resume(args.resume, args.vendor, announce=_print_err)
        if run.done:
            _print_err("nothing to resume: {} finished already (left unchanged)".format(
                run.run_dir))
            return 0
        topology = run.topology
    elif args.case:
        run = Run(args.case, args.vendor, topology, config_name=args.config, sets=args.set,
                  data_dir=args.data_dir, precision=args.precision, output=args.output,
                  announce=_print_err)
    else:
        raise UserError("core run needs a case (e.g. cases/retinanet) or --resume RUN_DIR",
                        "see core run --help")
    _print_err("run folder: {}".format(run.run_dir))
    result = run.execute()
    if result.get("note"):
        print(terminal(result["note"]))
    else:
        print(text_table([perf_row(result)], perf_columns(result)))
        metrics = result["metrics"]
        metric = result.get("target_metric", "mAP")
        value, target = metrics.get(metric), result.get("target")
        print("converged: {}  ({}, reached {})".format(
            str(bool(metrics.get("converged"))).lower(),
            "target {} {}".format(metric, target) if target is not None else "no target",
            "{:.4f}".format(value) if is_number(value) else "no " + metric))
        print("result: {}/result.json  report: {}/report.md".format(run.run_dir, run.run_dir))
    return 0


RESUME_FIXED = {"case": "a case", "config": "--config", "data_dir": "--data-dir", "set": "--set",
                "precision": "--precision", "output": "--output",
                "nproc_per_node": "--nproc-per-node", "devices": "--devices", "nnodes": "--nnodes",
                "node_rank": "--node-rank", "master_addr": "--master-addr",
                "master_port": "--master-port", "rdzv_endpoint": "--rdzv-endpoint",
                "join_timeout": "--join-timeout"}
"""What ``--resume`` takes from the run folder's spec.json: giving any of them with it is refused
(the run continues exactly as it started, and its result says what it ran)."""


def refuse_with_resume(args: argparse.Namespace) -> None:
    """Refuse ``--resume`` combined with settings that the resumed run would not apply."""
    defaults = vars(build_parser().parse_args(["run"]))
    given = [flag for dest, flag in RESUME_FIXED.items()
             if getattr(args, dest, None) != defaults.get(dest)]
    if given:
        raise UserError("--resume continues a run with the settings it started with; "
                        "{} cannot be combined with it".format(", ".join(given)),
                        "drop {0}, or start a new run with {0}".format(
                            "it" if len(given) == 1 else "them"))


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare run folders: the seed's table with ratios and the fairness warnings."""
    from chipbench.compare import as_json, as_text, comparison, metric_of, write_charts

    if args.plots and Path(args.plots).exists() and not Path(args.plots).is_dir():
        raise UserError("--plots {} is a file".format(args.plots),
                        "give a folder for the charts (it is created if missing)")
    runs, baseline, rows, warnings = comparison(args.runs, args.baseline)
    if args.json:
        emit(json.dumps(as_json(runs, baseline, rows, warnings), indent=2, default=str,
                         allow_nan=False))
    else:
        print(as_text(rows, warnings, markdown=args.markdown,
                      metric=metric_of(baseline.result)))
    if args.plots:
        try:
            written = write_charts(runs, args.plots)
        except OSError as exc:
            raise UserError("cannot write the charts to {} ({})".format(
                args.plots, exc.strerror or exc), "give --plots a folder you can write") from None
        for path in written:
            _print_err("chart: {}".format(path))
    return 0


# --------------------------------------------------------------------------------------------------
# parser and entry point
# --------------------------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse whose errors are chipbench's one line (``error: ...; see core run --help``)."""

    def error(self, message: str) -> NoReturn:
        raise UserError(message, "see {} --help".format(self.prog))


def _text(value: str) -> str:
    """A non-empty option value (an empty --output or --data-dir, from an unset shell variable,
    would otherwise mean "not given")."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def _endpoint(value: str) -> str:
    """``HOST:PORT`` (or ``HOST``: torchrun's default port), the port a number in 1..65535."""
    host, colon, port = _text(value).rpartition(":")
    if not colon:
        return value
    if not host.strip("[]"):
        raise argparse.ArgumentTypeError("{!r} names no host before the port".format(value))
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError("port {!r} of {!r} is not a number in 1..65535".format(
            port, value))
    return value


def _ranged(low: int, high: int) -> Callable[[str], int]:
    """An integer option value from ``low`` to ``high``."""
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError("{!r} is not an integer".format(value)) from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError("{} is not between {} and {}".format(
                number, low, high))
        return number
    parse.__name__ = "integer"
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="core", description="chipbench: the same AI training benchmark on any accelerator.")
    parser.add_argument("--version", action="version", version="chipbench " + __version__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks of errors")

    vendors = sub.add_parser("vendors", parents=[common],
                             help="list vendor plugins and which would be chosen")
    vendors.add_argument("--json", action="store_true", help="print JSON")
    vendors.set_defaults(func=cmd_vendors)

    info = sub.add_parser("info", parents=[common], help="print the chosen vendor's environment report")
    info.add_argument("--vendor", type=_text, help="vendor name (default: auto-detect)")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=cmd_info)

    doctor = sub.add_parser("doctor", parents=[common],
                            help="run the vendor conformance checks on the real device")
    doctor.add_argument("--vendor", type=_text, help="vendor name (default: auto-detect)")
    doctor.add_argument("--json", action="store_true", help="print JSON")
    doctor.add_argument("--static", action="store_true",
                        help="only checks that run no work on the device and start no process")
    doctor.add_argument("--alloc-mib", type=_ranged(1, 2**20), default=64, help="test allocation (MiB)")
    doctor.set_defaults(func=cmd_doctor)

    cases = sub.add_parser("cases", parents=[common],
                           help="list benchmark cases (bundled and from installed packages)")
    cases.add_argument("--json", action="store_true", help="print JSON")
    cases.set_defaults(func=cmd_cases)

    run = sub.add_parser("run", parents=[common], help="run a benchmark case (e.g. cases/retinanet)")
    run.add_argument("case", nargs="?", type=_text, help="case name or folder: retinanet, cases/retinanet")
    run.add_argument("--resume", metavar="RUN_DIR", type=_text,
                     help="continue that run folder from its last epoch checkpoint")
    run.add_argument("--vendor", type=_text, help="vendor name (default: $CHIPBENCH_VENDOR, else auto)")
    run.add_argument("--config", type=_text, help="hardware config name (C500x1x8) or YAML path "
                                      "(default: chosen from vendor and topology)")
    run.add_argument("--data-dir", type=_text, help="COCO2017 root (default: the embedded synthetic set)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set train.lr=0.02 (repeatable)")
    run.add_argument("--precision", type=_text, help="fp32, amp, fp16 or bf16")
    run.add_argument("--output", type=_text, help="run folder (default: runs/<case>-<vendor>-<time>)")
    run.add_argument("--nproc-per-node", type=int, default=1, help="processes on this node")
    run.add_argument("--devices", metavar="LIST",
                     help="devices this node's workers may use, e.g. 4,5,6,7 (set through the "
                          "vendor's visible-devices variable)")
    run.add_argument("--nnodes", type=int, default=1, help="number of nodes")
    run.add_argument("--node-rank", type=int, default=0, help="this node's rank")
    run.add_argument("--master-addr", type=_text, default="127.0.0.1", help="rank-0 node address")
    run.add_argument("--master-port", type=_ranged(1, 65535), default=29500, help="rank-0 node port")
    run.add_argument("--rdzv-endpoint", type=_endpoint, help="c10d rendezvous HOST:PORT instead of a master")
    run.add_argument("--join-timeout", type=_ranged(1, 7 * 86400), default=600, metavar="SECONDS",
                     help="how long the nodes wait for each other to join (default 600)")
    run.set_defaults(func=cmd_run)

    compare = sub.add_parser("compare", parents=[common],
                             help="compare run folders: table, ratios, fairness warnings")
    compare.add_argument("runs", nargs="+", metavar="RUN_DIR", type=_text, help="run folders (copies work)")
    compare.add_argument("--baseline", metavar="RUN_DIR", type=_text, help="the run the ratios are against "
                                                              "(default: the first)")
    form = compare.add_mutually_exclusive_group()
    form.add_argument("--markdown", action="store_true", help="print a paste-ready table")
    form.add_argument("--json", action="store_true", help="print JSON")
    compare.add_argument("--plots", metavar="DIR", type=_text, help="write SVG charts (p_core per run, loss "
                                                       "and mAP curves, monitor timelines) there")
    compare.set_defaults(func=cmd_compare)
    return parser


def console_main() -> None:
    """The ``core`` and ``chipbench`` console scripts (and ``python -m chipbench``): :func:`main`,
    then a quick exit (:func:`chipbench.exiting.exit_now`)."""
    exit_now(main())


_RESULT_STREAMS: List[Any] = []


def emit(text: str) -> None:
    """Print a command's result: to the real stdout, also while :func:`results_only_on_stdout`
    sends everything else written there to stderr."""
    print(text, file=_RESULT_STREAMS[-1] if _RESULT_STREAMS else sys.stdout)


@contextlib.contextmanager
def results_only_on_stdout() -> Iterator[None]:
    """While a ``--json`` command runs, whatever else writes to stdout (a plugin's print, a native
    library's banner on file descriptor 1, a leftover detection thread) goes to stderr, so that
    stdout holds the JSON alone; :func:`emit` writes to the real stdout."""
    real = sys.stdout
    saved = None
    try:
        real.flush()
        fd = real.fileno()
        saved = os.dup(fd)
        os.dup2(sys.stderr.fileno(), fd)
        stream: Any = os.fdopen(os.dup(saved), "w", encoding=getattr(real, "encoding", None))
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):  # not a real file
        if saved is not None:
            os.dup2(saved, fd)
            os.close(saved)
            saved = None
        stream = real
    _RESULT_STREAMS.append(stream)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _RESULT_STREAMS.pop()
        if saved is not None:
            try:
                stream.close()  # flushes the JSON
            finally:
                sys.stdout.flush()
                os.dup2(saved, fd)
                os.close(saved)


STANDARD_STREAMS = ((0, "stdin", os.O_RDONLY, "r"), (1, "stdout", os.O_WRONLY, "w"),
                    (2, "stderr", os.O_WRONLY, "w"))


def open_standard_streams() -> None:
    """Give this process a stdin, stdout and stderr whatever its parent left it (``2>&-``, a
    daemon that starts programs with them closed): a descriptor 0-2 that is closed is opened on
    the null device, and Python's stream for it, None when it was closed at start, made anew.
    Otherwise the first file opened would get that number, and a print, a native library's
    message or a child process's output would land in it; and every ``sys.stderr.isatty()``
    would fail."""
    for fd, name, flags, mode in STANDARD_STREAMS:
        try:
            os.fstat(fd)
        except OSError:  # closed: the lowest free number, so this one (0 to 2 in order)
            opened = os.open(os.devnull, flags)
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)
        if getattr(sys, name) is None:
            stream = open(fd, mode, closefd=False,
                          errors="backslashreplace" if name == "stderr" else None)
            setattr(sys, name, stream)
            if getattr(sys, "__{}__".format(name)) is None:
                setattr(sys, "__{}__".format(name), stream)


def check_working_folder() -> None:
    """Refuse, in one line and before torch is imported (whose import fails on it with a fatal
    native error), to run in a working folder that no longer exists."""
    try:
        os.getcwd()
    except FileNotFoundError:
        raise UserError("the current folder no longer exists (it was deleted or moved after "
                        "the shell entered it)", "cd into a folder that exists and run the "
                        "command again") from None
    except OSError as exc:
        raise UserError("the current folder cannot be read ({})".format(exc.strerror or exc),
                        "cd into a folder you may read and run the command again") from None


def main(argv: Optional[List[str]] = None) -> int:
    """The ``core`` command; returns the exit code."""
    open_standard_streams()
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    previous = interrupt_on_stop_signals()
    try:
        check_working_folder()
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            _print_err("error: no command given; run one of the commands above (core COMMAND "
                       "--help says more)")
            return EXIT_USER_ERROR
        if getattr(args, "json", False):
            with results_only_on_stdout():
                return int(args.func(args))
        return int(args.func(args))
    except ChipbenchError as exc:
        if debug:
            traceback.print_exc()
        _print_err("error: " + exc.one_line())
        return exc.exit_code
    except KeyboardInterrupt as exc:
        how = stop_name(exc)
        _print_err("interrupted" + (" ({})".format(how) if how != "Ctrl-C" else ""))
        return interrupt_exit_code(exc)
    except BrokenPipeError:  # the reader went away (`core compare ... | head`): stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a real file (captured)
            pass
        return EXIT_PIPE_CLOSED
    except Exception as exc:  # a bug: still one line unless --debug
        if debug:
            traceback.print_exc()
        error = user_os_error(exc)
        if error is not None:
            _print_err("error: " + error.one_line())
            return error.exit_code
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _print_err("error: internal error {}: {}; rerun with --debug and report it".format(
            type(exc).__name__, first))
        return 1
    finally:
        restore_handlers(previous)
