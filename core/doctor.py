"""``core doctor``: run the conformance kit on the real device and print what passed.

Meant for a hardware owner (a C500 machine, say) to run and send back: a table (or ``--json``),
one row per check of :mod:`chipbench.conformance`, exit code 1 when any check failed.
"""

import json
from typing import Any, Dict, List

from chipbench import __version__
from chipbench.conformance import Result, run_checks
from chipbench.util.text import VALUE_LIMIT, terminal


def run_doctor(facade: Any, alloc_mib: int = 64, live: bool = True) -> List[Result]:
    """Run every conformance check on the vendor of ``facade``; with ``live=False`` (``--static``)
    the checks that need the device are listed as not run instead."""
    return run_checks(facade, live=live, alloc_mib=alloc_mib)


def summary(results: List[Result]) -> Dict[str, int]:
    """How many checks passed, failed and were skipped."""
    return {status: sum(r.status == status for r in results) for status in ("pass", "fail", "skip")}


def as_json(vendor: str, results: List[Result]) -> str:
    """The results as one JSON document (what ``--json`` prints)."""
    return json.dumps({"chipbench": __version__, "vendor": vendor, "summary": summary(results),
                       "checks": [r.as_dict() for r in results]}, indent=2)


def as_table(vendor: str, results: List[Result]) -> str:
    """The results as a terminal table: status, check, what was seen (and expected, on failure).
    What a check saw is the plugin's answer: escaped and cut (:func:`chipbench.util.text.terminal`),
    so that it stays on its row."""
    checks = [terminal(r.check, VALUE_LIMIT) for r in results]
    width = max(len(c) for c in checks) if checks else 5
    lines = ["chipbench {} doctor, vendor {}".format(__version__, terminal(vendor, VALUE_LIMIT))]
    for r, check in zip(results, checks):
        got = terminal(r.got, 2 * VALUE_LIMIT) if r.status != "fail" else \
            "expected {}, got {}".format(terminal(r.expected, VALUE_LIMIT),
                                         terminal(r.got, 2 * VALUE_LIMIT))
        lines.append("{:<4}  {:<{}}  {}".format(terminal(r.status.upper()), check, width, got))
    counts = summary(results)
    lines.append("{} passed, {} failed, {} skipped".format(counts["pass"], counts["fail"],
                                                           counts["skip"]))
    return "\n".join(lines)
