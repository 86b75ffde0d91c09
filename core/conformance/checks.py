"""The contract checks of a vendor plugin: one copy, behind ``core doctor``, the pytest entry
(``pytest --pyargs chipbench.conformance --vendor X``) and chipbench's own contract tests.

A check is a function of a :class:`Subject` that returns what it saw (a short string) when the
plugin honours the contract, raises :class:`CheckFailed` (expected, got) when it does not, and
:class:`CheckSkipped` when the check cannot apply here. This module holds the list of checks, in
the order they run, and runs them; the checks themselves are grouped by what they ask of the
vendor (:mod:`~chipbench.conformance.answer_checks`, :mod:`~chipbench.conformance.device_checks`,
:mod:`~chipbench.conformance.process_checks`, :mod:`~chipbench.conformance.config_checks`,
:mod:`~chipbench.conformance.overhead_check`).

Static mode (``live=False``, ``core doctor --static``) runs only the checks that need no device:
each of the others is listed as "not run: static mode (needs the device)", never run, so that a
machine without the device or its driver (a simulated one, a vendor's CI) fails no check for it.
A device that is the host's CPU is always there: only the checks that run work on it or start
processes are left out (:mod:`chipbench.conformance.subject`).
"""

import traceback
from typing import Any, Callable, List, Optional, Sequence, Tuple

from chipbench.conformance.answer_checks import (
    check_collective_backend,
    check_device_name,
    check_init_backend,
    check_optional_hooks,
    check_vendor_detect,
    returns,
)
from chipbench.conformance.config_checks import check_shipped_configs
from chipbench.conformance.device_checks import check_memory_peak, check_synchronize
from chipbench.conformance.overhead_check import OVERHEAD_LIMIT_US, check_overhead  # noqa: F401
from chipbench.conformance.process_checks import check_collective, check_visible_devices
from chipbench.conformance.subject import (  # noqa: F401 - chipbench.conformance.checks' names too
    DEVICE_FREE_HOOKS,
    NOT_RUN_STATIC,
    NOT_RUN_STATIC_WORK,
    CheckFailed,
    CheckSkipped,
    Result,
    Subject,
    device_free,
    needs_device,
    runs_work,
)
from chipbench.errors import describe_exception, plugin_fault
from chipbench.host.contract import DEVICE_HOOKS

CHECKS: Tuple[Tuple[str, Callable[[Subject], str]], ...] = (
    ("vendor_detect", check_vendor_detect),
) + tuple(("returns:" + hook, returns(hook)) for hook in DEVICE_HOOKS) + (
    ("device_init_backend", check_init_backend),
    ("device_name", check_device_name),
    ("collective_backend", check_collective_backend),
    ("device_memory_peak", check_memory_peak),
    ("device_synchronize", check_synchronize),
    ("visible_devices_env", check_visible_devices),
    ("collective_all_reduce", check_collective),
    ("shipped_configs", check_shipped_configs),
    ("optional_hooks", check_optional_hooks),
    ("call_overhead", check_overhead),
)
"""Every check, in the order they run: (name, function)."""

CHECK_NAMES = tuple(name for name, _ in CHECKS)


def _expectation(fn: Callable[[Subject], str]) -> str:
    """The first paragraph of a check's docstring, as one line: what the check expects."""
    paragraph = (fn.__doc__ or "").strip().split("\n\n")[0]
    text = " ".join(line.strip() for line in paragraph.splitlines()).rstrip(".")
    return text[0].lower() + text[1:] if text[1:2].islower() else text


def run_check(subject: Subject, name: str, fn: Callable[[Subject], str]) -> Result:
    """Run one check; whatever it raises becomes a one-line :class:`Result`. In static mode a
    check that needs the device is not called: its result says so."""
    vendor = subject.info.name
    not_run = subject.not_run(fn)
    if not_run:
        return Result(vendor, name, "skip", _expectation(fn), not_run)
    try:
        got = fn(subject)
    except CheckFailed as exc:
        if _broken_elsewhere(subject, name, exc.hook):
            return Result(vendor, name, "skip", _expectation(fn), _needs(exc.hook))
        if name == "returns:" + exc.hook:
            subject.broken_rules.add(exc.hook)
        return Result(vendor, name, "fail", exc.expected, exc.got)
    except CheckSkipped as exc:
        return Result(vendor, name, "skip", _expectation(fn), str(exc))
    except BaseException as exc:  # noqa: B902 - the plugin raised (sys.exit() too): a failure
        if not plugin_fault(exc):
            raise
        hook = getattr(exc, "hook", "")  # a run's PluginError names the hook that broke its rule
        if _broken_elsewhere(subject, name, hook):
            return Result(vendor, name, "skip", _expectation(fn), _needs(hook))
        frames = traceback.extract_tb(exc.__traceback__)
        where = " (in {})".format(frames[-1].name) if frames else ""
        kind, _, text = describe_exception(exc).partition(": ")
        return Result(vendor, name, "fail", _expectation(fn), "{}{}: {}".format(kind, where, text))
    return Result(vendor, name, "pass", _expectation(fn), got)


def _broken_elsewhere(subject: Subject, check: str, hook: str) -> bool:
    """Whether ``check`` failed only on an answer of ``hook`` that its own rule check has
    already failed (one wrong answer is one FAIL line, not one per check that uses it)."""
    return bool(hook) and hook in subject.broken_rules and check != "returns:" + hook


def _needs(hook: str) -> str:
    return "cannot check: {}'s answer breaks its rule (see returns:{})".format(hook, hook)


def run_checks(facade: Any, live: bool = True, alloc_mib: int = 64,
               only: Optional[Sequence[str]] = None) -> List[Result]:
    """Run the checks (all, or those named in ``only``) on the vendor of ``facade``."""
    subject = Subject(facade, live=live, alloc_mib=alloc_mib)
    return [run_check(subject, name, fn) for name, fn in CHECKS if only is None or name in only]
