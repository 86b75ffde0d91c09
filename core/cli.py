"""The ``core`` command: ``vendors``, ``info``, ``doctor``, ``cases`` and ``run``.

Errors are one line on stderr (``error: <problem>; <fix>``) with exit code 2 for bad input; add
``--debug`` for the traceback. ``core --help`` imports neither torch nor any plugin.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import TYPE_CHECKING, Callable, List, NoReturn, Optional

from chipbench import __version__
from chipbench.commands import (
    cmd_cases,
    cmd_compare,
    cmd_doctor,
    cmd_info,
    cmd_run,
    cmd_vendors,
)
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
from chipbench.util.exiting import exit_now
from chipbench.util.streams import (  # noqa: F401 - emit: chipbench.cli's name too
    check_working_folder,
    emit,
    open_standard_streams,
    print_err,
    results_only_on_stdout,
)

if TYPE_CHECKING:
    pass


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
                        help="only the checks that need no device, run no work and start no "
                             "process (the others are listed as not run)")
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
    run.add_argument("--profile", action="store_true",
                     help="record a few iterations after warm-up with torch.profiler: a trace in "
                          "profile/ and the top operators in report.md")
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
    then a quick exit (:func:`chipbench.util.exiting.exit_now`)."""
    exit_now(main())


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
            print_err("error: no command given; run one of the commands above (core COMMAND "
                       "--help says more)")
            return EXIT_USER_ERROR
        if getattr(args, "json", False):
            with results_only_on_stdout():
                return int(args.func(args))
        return int(args.func(args))
    except ChipbenchError as exc:
        if debug:
            traceback.print_exc()
        print_err("error: " + exc.one_line())
        return exc.exit_code
    except KeyboardInterrupt as exc:
        how = stop_name(exc)
        print_err("interrupted" + (" ({})".format(how) if how != "Ctrl-C" else ""))
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
            print_err("error: " + error.one_line())
            return error.exit_code
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print_err("error: internal error {}: {}; rerun with --debug and report it".format(
            type(exc).__name__, first))
        return 1
    finally:
        restore_handlers(previous)
