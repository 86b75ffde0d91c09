"""pytest front end of the conformance kit: ``pytest --pyargs chipbench.conformance --vendor X``.

A pytest plugin registered under the ``pytest11`` entry point (a conftest.py inside an installed
package is not read for ``--pyargs``, so its options would be unknown). Importing it is cheap.
Adds ``--vendor`` (default: ``$CHIPBENCH_VENDOR``, else auto-detection), ``--static`` (leave out
the checks that run work on the device or start processes) and ``--alloc-mib``. The checks run
once per session; :mod:`chipbench.conformance.test_contract` has one test per check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict

import pytest

if TYPE_CHECKING:
    from chipbench.conformance.checks import Result


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("chipbench conformance")
    group.addoption("--vendor", default=None, help="vendor plugin to check (default: auto)")
    group.addoption("--static", action="store_true",
                    help="only checks that run no work on the device and start no process")
    group.addoption("--alloc-mib", type=int, default=64, help="test allocation in MiB")


@pytest.fixture(scope="session")
def conformance_results(request: pytest.FixtureRequest) -> Dict[str, Result]:
    """Every check's :class:`chipbench.conformance.Result`, by check name."""
    from chipbench.conformance import run_checks
    from chipbench.errors import ChipbenchError
    from chipbench.manager import build_host
    from chipbench.selection import select_device

    try:
        facade = select_device(build_host(), request.config.getoption("--vendor"))
    except ChipbenchError as exc:
        pytest.fail("cannot select the vendor: " + exc.one_line(), pytrace=False)
    results = run_checks(facade, live=not request.config.getoption("--static"),
                         alloc_mib=request.config.getoption("--alloc-mib"))
    return {r.check: r for r in results}
