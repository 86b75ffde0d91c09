"""pytest front end of the conformance kit: ``pytest --pyargs chipbench.conformance --vendor X``.

A pytest plugin registered under the ``pytest11`` entry point (a conftest.py inside an installed
package is not read for ``--pyargs``, so its options would be unknown). Importing it is cheap.

Being a ``pytest11`` plugin, it is loaded in every pytest session of an environment where
chipbench is installed, a vendor's own test suite included. So its options have names no one else
uses: ``--chipbench-vendor`` (default: ``$CHIPBENCH_VENDOR``, else auto-detection),
``--chipbench-static`` (only the checks that need no device; the others are listed as not run) and
``--chipbench-alloc-mib``. The short names ``--vendor``, ``--static`` and ``--alloc-mib`` are added
too, after the project's own conftest.py files have added theirs, and only where they are free: a
suite whose conftest.py has its own ``--vendor`` keeps it. The checks run once per session;
:mod:`chipbench.conformance.test_contract` has one test per check.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any, Dict, Generator, List, Optional, Set, Tuple

import pytest

if TYPE_CHECKING:
    from chipbench.conformance.checks import Result

GROUP = "chipbench conformance"
MAX_ALLOC_MIB = 2**20


def _alloc_mib(text: str) -> int:
    """``--alloc-mib``: a whole number of MiB in 1..2**20 (as ``core doctor`` takes it)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("{!r} is not a whole number of MiB".format(text)) from None
    if not 1 <= value <= MAX_ALLOC_MIB:
        raise argparse.ArgumentTypeError("{} is not in 1..{}".format(value, MAX_ALLOC_MIB))
    return value


OPTIONS: Tuple[Tuple[str, str, Dict[str, Any]], ...] = (
    ("vendor", "chipbench_vendor",
     dict(default=None, metavar="NAME", help="vendor plugin to check (default: auto)")),
    ("static", "chipbench_static",
     dict(action="store_true", help="only the checks that need no device (the others are "
          "listed as not run)")),
    ("alloc-mib", "chipbench_alloc_mib",
     dict(type=_alloc_mib, default=64, metavar="MIB", help="test allocation in MiB")),
)
"""``(short name, dest, argparse attributes)`` of each option; the long name is
``--chipbench-<short name>``."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(GROUP)
    for short, dest, attrs in OPTIONS:
        group.addoption("--chipbench-" + short, dest=dest, **attrs)


def _option_names(parser: pytest.Parser) -> Set[str]:
    """Every option string added so far (pytest's own, plugins', conftest.py files')."""
    groups: List[Any] = [getattr(parser, "_anonymous", None)] + list(getattr(parser, "_groups", []))
    names: Set[str] = set()
    for group in groups:
        for option in getattr(group, "options", ()):
            names.update(option.names())
    return names


@pytest.hookimpl(hookwrapper=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser,
                                  args: List[str]) -> Generator[None, None, None]:
    """After the initial conftest.py files added their options: the short names still free."""
    yield
    taken = _option_names(parser)
    group = parser.getgroup(GROUP)
    for short, dest, attrs in OPTIONS:
        if "--" + short in taken:
            continue
        try:
            group.addoption("--" + short, dest=dest, **dict(attrs, help="same as --chipbench-" + short))
        except (ValueError, argparse.ArgumentError):  # taken after all (a pytest we cannot read)
            pass


def pytest_report_header(config: pytest.Config) -> Optional[str]:
    """Which vendor the kit checks, where the kit runs (a suite's own ``--vendor`` may have taken
    the short name; then ``--chipbench-vendor`` or ``$CHIPBENCH_VENDOR`` say)."""
    if not any("chipbench.conformance" in str(arg) or "conformance" in str(arg)
               for arg in config.invocation_params.args):
        return None
    vendor = config.getoption("chipbench_vendor") or os.environ.get("CHIPBENCH_VENDOR") \
        or "auto-detected"
    return "chipbench conformance: vendor {}{}".format(
        vendor, " (static checks only)" if config.getoption("chipbench_static") else "")


@pytest.fixture(scope="session")
def conformance_results(request: pytest.FixtureRequest) -> Dict[str, Result]:
    """Every check's :class:`chipbench.conformance.Result`, by check name."""
    from chipbench.conformance import run_checks
    from chipbench.errors import ChipbenchError
    from chipbench.host.manager import build_host
    from chipbench.host.selection import select_device

    try:
        facade = select_device(build_host(), request.config.getoption("chipbench_vendor"))
    except ChipbenchError as exc:
        pytest.fail("cannot select the vendor: " + exc.one_line(), pytrace=False)
    results = run_checks(facade, live=not request.config.getoption("chipbench_static"),
                         alloc_mib=request.config.getoption("chipbench_alloc_mib"))
    request.config.stash[CHECKED] = facade.vendor
    return {r.check: r for r in results}


CHECKED = pytest.StashKey[str]()
"""The vendor the checks ran on, for the session's last line."""


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Name the vendor that was checked (also under -q: the kit may have auto-detected it)."""
    vendor = config.stash.get(CHECKED, None)
    if vendor is not None:
        terminalreporter.write_line("chipbench conformance: checked vendor '{}'".format(vendor))
