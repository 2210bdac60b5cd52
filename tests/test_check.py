"""`python -m torch_pconv check`: every case passes, and a case says what it builds in fields of its own."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from torch_pconv.__main__ import main
from torch_pconv._masks import MaskLayout
from torch_pconv.check import (
    BATCH,
    CASES,
    IN_CHANNELS,
    SPATIAL,
    Case,
    build_pair,
    make_mask,
    reference_multi_channel,
    run_check,
)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_check_case_passes(case: Case) -> None:
    for _, dtype, cmp in run_check(cases=[case]):
        assert cmp.ok, f"{case.name} {dtype}: {cmp.failures()}"
        # The float32 bounds are a few units of roundoff, not a loosened threshold.
        assert all(tol < 1e-4 for tol in cmp.tolerances.values()), cmp.tolerances


def test_check_command_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check"]) == 0
    printed = capsys.readouterr().out
    assert "PASS" in printed and f"all {2 * len(CASES)} comparisons" in printed


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_layers_follow_the_fields_not_the_name(case: Case) -> None:
    # A per-channel mask needs multi_channel=True in both layers; the name is display only.
    if reference_multi_channel(case.mask):  # MULTI and SHARED
        assert case.multi_channel
    renamed = replace(case, name="multi-channel" if not case.multi_channel else "single-channel")
    for built in (build_pair(case, "cpu", torch.float32), build_pair(renamed, "cpu", torch.float32)):
        ours, ref = built
        assert ours.multi_channel is case.multi_channel and ref.multi_channel is case.multi_channel
        assert ours.legacy_behaviour is case.legacy
        assert ours.weight.dim() == case.dims + 2


def test_mask_None_case_with_multi_channel_is_marked_so() -> None:
    # The one case whose flag used to be read from its name.
    (case,) = [c for c in CASES if c.mask is MaskLayout.NONE and c.multi_channel]
    ours, _ = build_pair(case, "cpu", torch.float32)
    assert ours.multi_channel


@pytest.mark.parametrize(
    ("layout", "batch", "leading"),
    [
        (MaskLayout.SINGLE, BATCH, (BATCH, 1)),
        (MaskLayout.SINGLE, 1, (1, 1)),
        (MaskLayout.MULTI, BATCH, (BATCH, IN_CHANNELS)),
        (MaskLayout.SHARED, BATCH, (BATCH,)),
    ],
)
@pytest.mark.parametrize("holes", ["random", "rectangles", "strokes"])
def test_make_mask_shape_and_values(layout: MaskLayout, batch: int, leading: tuple[int, ...], holes: str) -> None:
    case = Case("any", {"kernel_size": 3}, layout, mask_batch=batch, holes=holes)  # type: ignore[arg-type]
    mask = make_mask(case, SPATIAL[2], torch.Generator().manual_seed(0))
    assert mask is not None and mask.shape == (*leading, *SPATIAL[2])
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert make_mask(replace(case, mask=MaskLayout.NONE), SPATIAL[2], torch.Generator()) is None
