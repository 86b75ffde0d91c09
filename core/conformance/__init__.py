"""The vendor conformance kit: one set of contract checks for a vendor plugin.

Three front ends run the same checks (:data:`CHECKS`):

- ``core doctor --vendor X [--json]`` on the real device (exit 1 on any failure);
- ``pytest --pyargs chipbench.conformance --vendor X`` in a vendor's own CI (the pytest plugin
  :mod:`chipbench.conformance.pytest_plugin`, registered as ``pytest11``, adds
  ``--chipbench-vendor`` and ``--chipbench-static``, and ``--vendor``/``--static`` where the
  suite's own conftest.py has not taken them; :mod:`chipbench.conformance.test_contract` has one
  test per check);
- chipbench's own contract tests (tests/test_vendor_contract.py, tests/test_conformance.py).
"""

from chipbench.conformance.checks import (  # noqa: F401 (the kit's API)
    CHECK_NAMES,
    CHECKS,
    CheckFailed,
    CheckSkipped,
    Result,
    Subject,
    run_check,
    run_checks,
)

__all__ = ["CHECKS", "CHECK_NAMES", "CheckFailed", "CheckSkipped", "Result", "Subject",
           "run_check", "run_checks"]
