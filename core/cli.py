"""The ``core`` command: ``vendors``, ``info``, ``doctor`` and ``run``.

Errors are one line on stderr (``error: <problem>; <fix>``) with exit code 2 for bad input; add
``--debug`` for the traceback. ``core --help`` imports neither torch nor any plugin.
"""

import argparse
import json
import sys
import traceback
from typing import List, Optional

from chipbench import __version__
from chipbench.errors import EXIT_USER_ERROR, ChipbenchError, UserError


def _print_err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


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
            "available": "broken" if record.broken else ("yes" if info.available else "no"),
            "priority": "" if info is None else str(info.priority),
            "auto": "<- auto" if chosen == record.name else "",
            "reason": record.error if record.broken else info.reason,
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = ("name", "available", "priority", "origin", "reason", "auto")
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in columns).rstrip())
    return 0


def _selected(args: argparse.Namespace):
    from chipbench.manager import build_host
    from chipbench.selection import select_device

    return select_device(build_host(), args.vendor, announce=_print_err)


def cmd_info(args: argparse.Namespace) -> int:
    """The chosen vendor's environment report (the seed's hardware/software section)."""
    facade = _selected(args)
    report = {"vendor": facade.vendor}
    hardware = facade.hardware_id()
    report.update({"hardware_label": hardware.label, "config_tag": hardware.config_tag,
                   "collective_backend": facade.collective_backend(),
                   "visible_devices_env": facade.visible_devices_env() or "(none)",
                   "supported_precisions": facade.supported_precisions()})
    report.update(facade.environment_report())
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    for key, value in report.items():
        if key == "devices" and isinstance(value, list):
            print("devices:")
            for device in value:
                print("  " + ", ".join("{}={}".format(k, v) for k, v in device.items()))
            continue
        if isinstance(value, (list, tuple)):
            value = ", ".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = ", ".join("{}={}".format(k, v) for k, v in value.items())
        print("{}: {}".format(key, value))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Call every hook on the real device and print a pass/fail list a hardware owner can send."""
    from chipbench.doctor import run_doctor

    facade = _selected(args)
    checks = run_doctor(facade, alloc_mib=args.alloc_mib)
    print("chipbench {} doctor, vendor {}".format(__version__, facade.vendor))
    for check in checks:
        print("{} {:<28} {}".format("PASS" if check.ok else "FAIL", check.name, check.detail))
    failed = sum(not c.ok for c in checks)
    print("{} passed, {} failed".format(len(checks) - failed, failed))
    return 0 if failed == 0 else 1


def cmd_run(args: argparse.Namespace) -> int:
    """Run a case and print the seed's performance table."""
    from chipbench.launcher import Topology
    from chipbench.report import perf_row, text_table
    from chipbench.runner import Run

    topology = Topology(nproc_per_node=args.nproc_per_node, nnodes=args.nnodes,
                        node_rank=args.node_rank, master_addr=args.master_addr,
                        master_port=args.master_port, rdzv_endpoint=args.rdzv_endpoint,
                        join_timeout_s=args.join_timeout, devices=args.devices)
    if args.resume:
        run = Run.resume(args.resume, args.vendor, announce=_print_err)
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
        print(result["note"])
    else:
        print(text_table([perf_row(result)]))
        metrics = result["metrics"]
        print("converged: {}  (target mAP {}, reached {:.4f})".format(
            str(bool(metrics.get("converged"))).lower(), result.get("target"),
            metrics.get("mAP") or 0.0))
        print("result: {}/result.json  report: {}/report.md".format(run.run_dir, run.run_dir))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare run folders: the seed's table with ratios and the fairness warnings."""
    from chipbench.compare import as_json, as_text, comparison, write_charts

    runs, baseline, rows, warnings = comparison(args.runs, args.baseline)
    if args.json:
        print(json.dumps(as_json(runs, baseline, rows, warnings), indent=2, default=str))
    else:
        print(as_text(rows, warnings, markdown=args.markdown))
    if args.plots:
        for path in write_charts(runs, args.plots):
            _print_err("chart: {}".format(path))
    return 0


# --------------------------------------------------------------------------------------------------
# parser and entry point
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="core", description="chipbench: the same AI training benchmark on any accelerator.")
    parser.add_argument("--version", action="version", version="chipbench " + __version__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks of errors")

    vendors = sub.add_parser("vendors", parents=[common],
                             help="list vendor plugins and which would be chosen")
    vendors.add_argument("--json", action="store_true", help="print JSON")
    vendors.set_defaults(func=cmd_vendors)

    info = sub.add_parser("info", parents=[common], help="print the chosen vendor's environment report")
    info.add_argument("--vendor", help="vendor name (default: auto-detect)")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=cmd_info)

    doctor = sub.add_parser("doctor", parents=[common], help="exercise every hook on the real device")
    doctor.add_argument("--vendor", help="vendor name (default: auto-detect)")
    doctor.add_argument("--alloc-mib", type=int, default=256, help="test allocation (MiB)")
    doctor.set_defaults(func=cmd_doctor)

    run = sub.add_parser("run", parents=[common], help="run a benchmark case (e.g. cases/retinanet)")
    run.add_argument("case", nargs="?", help="case name or folder: retinanet, cases/retinanet")
    run.add_argument("--resume", metavar="RUN_DIR",
                     help="continue that run folder from its last epoch checkpoint")
    run.add_argument("--vendor", help="vendor name (default: $CHIPBENCH_VENDOR, else auto)")
    run.add_argument("--config", help="hardware config name (C500x1x8) or YAML path "
                                      "(default: chosen from vendor and topology)")
    run.add_argument("--data-dir", help="COCO2017 root (default: the embedded synthetic set)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set train.lr=0.02 (repeatable)")
    run.add_argument("--precision", help="fp32, amp, fp16 or bf16")
    run.add_argument("--output", help="run folder (default: runs/<case>-<vendor>-<time>)")
    run.add_argument("--nproc-per-node", type=int, default=1, help="processes on this node")
    run.add_argument("--devices", metavar="LIST",
                     help="devices this node's workers may use, e.g. 4,5,6,7 (set through the "
                          "vendor's visible-devices variable)")
    run.add_argument("--nnodes", type=int, default=1, help="number of nodes")
    run.add_argument("--node-rank", type=int, default=0, help="this node's rank")
    run.add_argument("--master-addr", default="127.0.0.1", help="rank-0 node address")
    run.add_argument("--master-port", type=int, default=29500, help="rank-0 node port")
    run.add_argument("--rdzv-endpoint", help="c10d rendezvous HOST:PORT instead of a master")
    run.add_argument("--join-timeout", type=int, default=600, metavar="SECONDS",
                     help="how long the nodes wait for each other to join (default 600)")
    run.set_defaults(func=cmd_run)

    compare = sub.add_parser("compare", parents=[common],
                             help="compare run folders: table, ratios, fairness warnings")
    compare.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (copies work)")
    compare.add_argument("--baseline", metavar="RUN_DIR", help="the run the ratios are against "
                                                              "(default: the first)")
    compare.add_argument("--markdown", action="store_true", help="print a paste-ready table")
    compare.add_argument("--json", action="store_true", help="print JSON")
    compare.add_argument("--plots", metavar="DIR", help="write SVG charts (p_core per run, loss "
                                                       "and mAP curves, monitor timelines) there")
    compare.set_defaults(func=cmd_compare)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``core`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return args.func(args)
    except ChipbenchError as exc:
        if args.debug:
            traceback.print_exc()
        _print_err("error: " + exc.one_line())
        return exc.exit_code
    except KeyboardInterrupt:
        _print_err("interrupted")
        return 130
    except Exception as exc:  # a bug: still one line unless --debug
        if args.debug:
            traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _print_err("error: internal error {}: {}; rerun with --debug and report it".format(
            type(exc).__name__, first))
        return 1
