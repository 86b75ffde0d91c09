"""Where cases come from, and the guard around an outside case (chipbench's internals).

Cases are the packages bundled in ``chipbench.cases`` (``chipbench.cases.retinanet``) and those that
other distributions add through the entry-point group ``chipbench.cases`` (each entry point names
a module with a module-level ``CASE``, or a :class:`chipbench.case.Case` object itself). Loading is
isolated like the vendors': a case that fails to import is listed as broken by ``core cases``, the
others work.

A case is named by its bare name (``retinanet``), by the documented spelling ``cases/<name>``, or by
an existing folder that is a registered case's package; anything else is a one-line error.

Case authors use :mod:`chipbench.case` (the public, versioned API); nothing here is part of it.
"""

import contextlib
import functools
import importlib
import os
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from chipbench.case import Case
from chipbench.errors import (
    PluginError,
    UserError,
    attributed,
    describe_exception,
    is_allocation_failure,
    plugin_fault,
)
from chipbench.hookspecs import PRECISIONS
from chipbench.measure.environment import distribution_names
from chipbench.measure.metrics import is_number, reached
from chipbench.run.resultrecord import RESERVED_FIGURES, bad_figure
from chipbench.util.text import shown

CASE_ENTRY_POINT_GROUP = "chipbench.cases"
"""Entry-point group through which other distributions add cases."""


@dataclass
class CaseRecord:
    """A registered (or broken) case as ``core cases`` lists it."""

    name: str
    origin: str
    case: Optional[Case] = None
    error: str = ""
    shadowed: bool = False
    """A working case of another package took its name first."""

    @property
    def broken(self) -> bool:
        return bool(self.error)


def _case_of(obj: Any) -> Case:
    case = getattr(obj, "CASE", obj)
    if not isinstance(case, Case):
        raise TypeError("{!r} is not a chipbench.case.Case (define CASE = YourCase() in the "
                        "module)".format(case))
    return case


CASE_METHODS = ("overlays", "validate", "prepare", "general_rows", "precision", "target", "run",
                "check_resume", "memory_hint")
"""The methods the runner and the workers call; an outside case's are guarded."""


def contract_problem(case: Case) -> str:
    """What keeps ``case`` from being run at all ("" when nothing): no ``run()``, no config folder
    with a ``defaults.yaml``, names that are not text, a target metric named like one of
    chipbench's own columns, ``packages`` that are not distribution names."""
    if type(case).run is Case.run:
        return "it does not define run()"
    packages = getattr(case, "packages", ())
    if not distribution_names(packages):
        return "its packages {} are not a tuple of distribution names".format(shown(packages))
    for attribute in ("name", "title", "metric_name", "sample_unit"):
        value = getattr(case, attribute, None)
        if not isinstance(value, str) or not value.strip() or "\n" in value:
            return "its {} {} is not a one-line text".format(attribute, shown(value))
    if case.metric_name in RESERVED_FIGURES:
        return ("its metric_name '{}' is one of chipbench's own figures (it would replace that "
                "column); name the metric after what it measures".format(case.metric_name))
    folder = Path(case.config_dir)
    if not folder.is_absolute():
        return "its config_dir '{}' is not an absolute path (set it from __file__)".format(folder)
    if not (folder / "defaults.yaml").is_file():
        return "its config_dir {} holds no defaults.yaml".format(folder)
    return ""


def guard_case(case: Case, origin: str) -> Case:
    """Make a failure inside an outside case's method a one-line :class:`PluginError` naming the
    case and the method (an expected chipbench error, an interruption or an allocation failure
    passes as it is)."""
    if getattr(case, "_chipbench_guarded", False):
        return case
    for name in CASE_METHODS:
        setattr(case, name, _guarded(case, name, getattr(case, name), origin))
    case._chipbench_guarded = True  # type: ignore[attr-defined]
    return case


def _guarded(case: Case, name: str, method: Any, origin: str) -> Any:
    fix = "fix the case or report it to its authors ({})".format(origin)

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            with attributed("case '{}'".format(case.name), name + "()", fix,
                            passing=(MemoryError,)):
                answer = method(*args, **kwargs)
        except PluginError as error:  # run()'s allocation failure: the worker explains it
            cause = error.__cause__
            if name == "run" and cause is not None and is_allocation_failure(cause):
                raise cause from None
            raise
        expected = ANSWERS.get(name)
        if expected is not None and not expected[0](answer):
            raise PluginError("case '{}' returned {} from {}(), expected {}".format(
                case.name, shown(answer), name, expected[1]), fix)
        return answer
    return call


def _overlays_ok(answer: Any) -> bool:
    return isinstance(answer, list) and all(
        isinstance(layer, (tuple, list)) and len(layer) == 2 and isinstance(layer[0], str)
        and isinstance(layer[1], dict) for layer in answer)


def _rows_ok(answer: Any) -> bool:
    return isinstance(answer, (list, tuple)) and all(
        isinstance(row, (tuple, list)) and len(row) == 3
        and all(isinstance(cell, str) or is_number(cell) for cell in row) for row in answer)


ANSWERS: Dict[str, Tuple[Any, str]] = {
    "overlays": (_overlays_ok, "a list of (source, mapping) pairs"),
    "prepare": (lambda answer: isinstance(answer, dict), "a dict of facts"),
    "general_rows": (_rows_ok, "a list of (indicator, value, note) rows of text or numbers"),
    "precision": (lambda answer: answer in PRECISIONS, "one of " + ", ".join(PRECISIONS)),
    "target": (lambda answer: answer is None or is_number(answer),
               "a finite int or float, or None (no target)"),
    "memory_hint": (lambda answer: isinstance(answer, (tuple, list)) and len(answer) == 2
                    and all(isinstance(text, str) and text.strip() for text in answer),
                    "a pair of texts (what did not fit, the settings that make it smaller)"),
}
"""What each launcher-side method of a case must return: (check, what it should be)."""


def checked_metrics(case: Case, metrics: Any, target: Any) -> Dict[str, Any]:
    """The final metrics ``case.run`` returned, checked; ``converged`` is set here, as the case's
    metric reaching ``target`` (where both are numbers). A case that returns something else is a
    one-line :class:`PluginError` naming the case and the metric."""
    fix = "fix the case's run() ({}): it returns a dict of finite numbers (see docs/cases.md)" \
        .format(case_package(case))
    if not isinstance(metrics, dict):
        raise PluginError("case '{}' returned {} from run(), not a dict of metrics".format(
            case.name, type(metrics).__name__), fix)
    bad = bad_figure(metrics, case.metric_name)
    if bad is not None:
        raise PluginError("case '{}' returned {} = {} from run(), expected {}".format(
            case.name, bad[0], shown(bad[1]), bad[2]), fix)
    value = metrics.get(case.metric_name)
    # only chipbench says converged (a case's own "converged", a missing metric or no target
    # never count)
    return dict(metrics, converged=reached(value, target))


def discover_cases() -> List[CaseRecord]:
    """Every case: the bundled ones, then those of the ``chipbench.cases`` entry points, each
    loaded on its own (a failure is a broken record, a name taken twice too)."""
    from chipbench import cases
    from chipbench.host.manager import iter_entry_points

    found: List[Tuple[str, str, Optional[str], Any]] = []  # name, origin, distribution, load
    for module in sorted(m.name for m in pkgutil.iter_modules(cases.__path__) if m.ispkg):
        found.append((module, "built-in", None,
                      lambda m=module: importlib.import_module("chipbench.cases." + m)))
    for ep, dist in iter_entry_points(CASE_ENTRY_POINT_GROUP):
        found.append((ep.name, "entry point '{}' from {}".format(ep.name, dist), dist, ep.load))
    records: List[CaseRecord] = []
    taken = set()
    for name, origin, package, load in found:
        try:
            with contextlib.redirect_stdout(sys.stderr):  # prints must not corrupt `--json`
                case = _case_of(load())
        except BaseException as exc:  # noqa: B902 - sys.exit() and the like too
            if not plugin_fault(exc):
                raise
            records.append(CaseRecord(name, origin, error="cannot load: " +
                                      describe_exception(exc)))
            continue
        if case.name in taken:
            holder = next(r.origin for r in records if r.name == case.name and not r.broken)
            records.append(CaseRecord(case.name, origin, error="case name '{}' is already "
                                      "taken by {}".format(case.name, holder), shadowed=True))
            continue
        problem = contract_problem(case)
        if problem:
            records.append(CaseRecord(case.name, origin, error=problem))
            continue
        taken.add(case.name)
        if package is not None:  # an outside case
            guard_case(case, origin)
            case._chipbench_package = package  # type: ignore[attr-defined]
        records.append(CaseRecord(case.name, origin, case=case))
    return records


def case_package(case: Case) -> str:
    """The distribution and version a case comes from ("chipbench-spirals 0.1.0"); chipbench's
    own for a built-in case."""
    from chipbench import __version__

    return getattr(case, "_chipbench_package", None) or "chipbench {}".format(__version__)


def case_folder(case: Case) -> Path:
    """The folder of the package that defines ``case``."""
    module = importlib.import_module(type(case).__module__)
    assert module.__file__ is not None, "a case's module is a file"
    return Path(module.__file__).resolve().parent


def load_case(argument: str) -> Case:
    """The :class:`Case` named by ``argument``: a bare name ("retinanet"), ``cases/<name>``, or an
    existing folder that is a registered case's package. Anything else is a one-line error (a
    file or a missing path that merely ends in a case name is never taken for that case)."""
    records: Dict[str, CaseRecord] = {}
    shadowed: Dict[str, List[CaseRecord]] = {}
    for record in discover_cases():  # a working case wins over a broken one of the same name
        if record.name not in records or records[record.name].broken:
            records[record.name] = record
        if record.shadowed:
            shadowed.setdefault(record.name, []).append(record)
    working = ", ".join(sorted(n for n, r in records.items() if not r.broken)) or "none"
    text = argument.rstrip("/\\")
    parts = Path(text).parts
    name: Optional[str] = None
    if len(parts) == 1 and os.sep not in text and "/" not in text:
        name = text
    elif len(parts) == 2 and parts[0] == "cases" and not Path(text).is_file():
        name = parts[1]
    elif Path(text).is_dir():
        folder = Path(text).resolve()
        for record in records.values():
            if record.case is not None and case_folder(record.case) == folder:
                return record.case
        raise UserError("folder '{}' is not a registered case's package".format(argument),
                        "name the case instead: {}".format(working))
    else:
        what = "a file" if Path(text).exists() else "a path that does not exist"
        raise UserError("case '{}' is {}".format(argument, what),
                        "name a case ({}), cases/<name>, or its package folder".format(working))
    found = records.get(name) if name is not None else None
    if found is None:
        raise UserError("unknown case '{}'".format(argument), "available cases: " + working)
    if found.broken or found.case is None:
        raise UserError("case '{}' ({}) is broken: {}".format(name, found.origin, found.error),
                        "fix or reinstall it (see `core cases`)")
    for other in shadowed.get(found.name, []):
        sys.stderr.write("warning: case '{}' of {} is not used: {}\n".format(
            found.name, other.origin, other.error))
    return found.case


def plugin_config_dirs(host: Any, case_name: str, problems: Optional[List[str]] = None,
                       only: Optional[Sequence[str]] = None) -> List[Tuple[Path, str]]:
    """``(folder, plugin name)`` for each folder that a plugin ships configs of ``case_name`` in
    (hook ``case_config_dirs``; ``only``: of those plugins alone), each folder once.

    A plugin that fails, or answers anything but a list of existing absolute folders, is a
    one-line :class:`PluginError`; with ``problems`` given, that line goes there instead and the
    other plugins' folders still count (one broken plugin does not stop another vendor's run)."""
    found: List[Tuple[Path, str]] = []
    seen = set()
    for plugin, call in host.callers_by_plugin("case_config_dirs"):
        if only is not None and plugin not in only:
            continue
        try:
            folders = _shipped_folders(plugin, call, case_name)
        except PluginError as exc:
            if problems is None:
                raise
            problems.append(exc.one_line())
            continue
        for folder in folders:
            if folder not in seen:
                seen.add(folder)
                found.append((folder, plugin))
    return found


def _shipped_folders(plugin: str, call: Any, case_name: str) -> List[Path]:
    fix = "report it to the plugin's authors"
    with attributed("plugin '{}'".format(plugin), "hook case_config_dirs", fix):
        answers = call(case_name=case_name)
    folders = answers[0] if answers else []
    if not isinstance(folders, (list, tuple)) or not all(
            isinstance(f, (str, Path)) and Path(f).is_absolute() and Path(f).is_dir()
            for f in folders):
        raise PluginError("plugin '{}' returned {} from case_config_dirs, expected a list of "
                          "existing absolute folders".format(plugin, shown(folders)), fix)
    return [Path(f).resolve() for f in folders]
