"""One pytest test per conformance check (collected by ``pytest --pyargs chipbench.conformance``)."""

from typing import Dict

import pytest

from chipbench.conformance import CHECK_NAMES, Result


@pytest.mark.parametrize("check", CHECK_NAMES)
def test_conformance(check: str, conformance_results: Dict[str, Result]) -> None:
    result = conformance_results[check]
    if result.status == "skip":
        pytest.skip(result.line())
    if not result.ok:
        pytest.fail(result.line(), pytrace=False)
