"""One pytest test per conformance check (collected by ``pytest --pyargs chipbench.conformance``)."""

import pytest

from chipbench.conformance import CHECK_NAMES


@pytest.mark.parametrize("check", CHECK_NAMES)
def test_conformance(check: str, conformance_results) -> None:
    result = conformance_results[check]
    if result.status == "skip":
        pytest.skip(result.line())
    if not result.ok:
        pytest.fail(result.line(), pytrace=False)
