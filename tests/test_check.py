"""The equivalence check that `python -m torch_pconv check` prints: every case passes."""

import pytest

from torch_pconv.__main__ import CASES, main, run_check


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_check_case_passes(case):
    for _, dtype, cmp in run_check(cases=[case]):
        assert cmp.ok, f"{case.name} {dtype}: {cmp.failures()}"
        # The float32 bounds are a few units of roundoff, not a loosened threshold.
        assert all(tol < 1e-4 for tol in cmp.tolerances.values()), cmp.tolerances


def test_check_command_exits_zero(capsys):
    assert main(["check"]) == 0
    assert "PASS" in capsys.readouterr().out
