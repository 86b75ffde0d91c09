"""The ``core`` commands: ``vendors``, ``info``, ``doctor``, ``cases``, ``run`` and ``compare``,
each a function of its parsed arguments that returns the exit code."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List

from chipbench.errors import ChipbenchError, UserError
from chipbench.measure.metrics import is_number
from chipbench.util.streams import emit, print_err
from chipbench.util.text import VALUE_LIMIT, terminal, terminal_table

if TYPE_CHECKING:
    from chipbench.host.device import Device


# --------------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------------


def cmd_vendors(args: argparse.Namespace) -> int:
    """Table of every vendor plugin: origin, availability, reason, priority, the one auto picks."""
    from chipbench.host.manager import build_host
    from chipbench.host.selection import choose_vendor

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
    from chipbench.host.manager import build_host
    from chipbench.host.selection import select_device

    return select_device(build_host(), args.vendor, announce=print_err)


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
    (:func:`chipbench.util.text.terminal`), so that each stays on its line."""
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
    from chipbench.host.manager import build_host
    from chipbench.run.caseload import discover_cases, plugin_config_dirs

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
    from chipbench.outputs.report import perf_columns, perf_row, text_table
    from chipbench.run.launcher import Topology
    from chipbench.run.runner import Run, plan_new, plan_resume

    topology = Topology(nproc_per_node=args.nproc_per_node, nnodes=args.nnodes,
                        node_rank=args.node_rank, master_addr=args.master_addr,
                        master_port=args.master_port, rdzv_endpoint=args.rdzv_endpoint,
                        join_timeout_s=args.join_timeout, devices=args.devices)
    if args.resume:
        refuse_with_resume(args)
        plan = plan_resume(args.resume, args.vendor, announce=print_err, profile=args.profile)
        if plan is None:
            print_err("nothing to resume: {} finished already (left unchanged)".format(
                args.resume))
            return 0
        topology = plan.topology
    elif args.case:
        plan = plan_new(args.case, args.vendor, topology, config_name=args.config, sets=args.set,
                        data_dir=args.data_dir, precision=args.precision, output=args.output,
                        announce=print_err, profile=args.profile)
    else:
        raise UserError("core run needs a case (e.g. cases/retinanet) or --resume RUN_DIR",
                        "see core run --help")
    run = Run(plan, announce=print_err)
    print_err("run folder: {}".format(run.run_dir))
    result = run.execute()
    if result.note:
        print(terminal(result.note))
    else:
        print(text_table([perf_row(result)], perf_columns(result)))
        metric = result.metric_name
        value, target = result.metrics.value(metric), result.target
        print("converged: {}  ({}, reached {})".format(
            str(bool(result.metrics.converged)).lower(),
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
    from chipbench.cli import build_parser

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
    from chipbench.outputs.compare import as_json, as_text, comparison, metric_of, write_charts

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
            print_err("chart: {}".format(path))
    return 0
