"""Holes never leak: NaN or inf under a 0 in the mask gives exactly what a zero gives.

Scientific and medical images mark missing pixels with NaN. In NVIDIA's reference, NaN × 0 is
NaN, so a NaN under a hole poisons its whole window and the weight gradient.
"""

from __future__ import annotations

import pytest
import torch
from helpers import LAYERS, MaskCase, random_mask, seeded

from torch_pconv import PConv2d
from torch_pconv import reference as ref_module
from torch_pconv._masks import MaskLayout
from torch_pconv.check import reference_mask
from torch_pconv.holes import random_holes

SPATIAL = {1: (13,), 2: (9, 10), 3: (5, 6, 7)}
CASES = [MaskCase(MaskLayout.SHARED), MaskCase(MaskLayout.SINGLE)]
CASES += [MaskCase(MaskLayout.SINGLE, broadcast=True), MaskCase(MaskLayout.MULTI)]


def _poison(x: torch.Tensor, mask: torch.Tensor, value: float, layout: MaskLayout = MaskLayout.SINGLE) -> torch.Tensor:
    """``x`` with ``value`` wherever the mask (in ``layout``, broadcast to x) has a hole."""
    hole = reference_mask(layout, mask, x.shape[1]).expand_as(x) == 0
    return x.masked_fill(hole, value)


def _run(layer: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor):
    x = x.detach().clone().requires_grad_()
    layer.zero_grad(set_to_none=True)
    out, update = layer(x, mask)
    out.backward(torch.ones_like(out))
    return out.detach(), update, x.grad, layer.weight.grad.clone(), layer.bias.grad.clone()


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.bool, torch.uint8])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("legacy", [False, True])
def test_non_finite_holes_give_what_zeros_give(dims, case, mask_dtype, value, legacy):
    torch.manual_seed(0)
    gen = seeded(1)
    batch, channels = 2, 3
    layer = LAYERS[dims](channels, 4, 3, padding=1, multi_channel=case.ours_multi, legacy_behaviour=legacy)
    x = torch.randn((batch, channels, *SPATIAL[dims]), generator=gen)
    mask = random_mask(case, batch, channels, SPATIAL[dims], gen)
    zeros = _run(layer, _poison(x, mask, 0.0, case.layout), mask.to(mask_dtype))
    poisoned = _run(layer, _poison(x, mask, value, case.layout), mask.to(mask_dtype))
    for name, a, b in zip(["output", "mask", "grad_input", "grad_weight", "grad_bias"], poisoned, zeros, strict=True):
        assert torch.isfinite(a).all(), f"{name} is not finite"
        assert torch.equal(a, b), f"{name} differs from the zero-filled input"


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_and_fractional_masks(dtype):
    torch.manual_seed(0)
    gen = seeded(2)
    layer = PConv2d(3, 4, 3, padding=1, dtype=dtype)
    x = torch.randn((2, 3, 8, 8), generator=gen).to(dtype)
    mask = random_holes((2, 1, 8, 8), 0.5, gen) * torch.rand((2, 1, 8, 8), generator=gen)  # 0 or in (0, 1)
    mask = mask.to(dtype)
    zeros = _run(layer, _poison(x, mask, 0.0), mask)
    poisoned = _run(layer, _poison(x, mask, float("nan")), mask)
    for a, b in zip(poisoned, zeros, strict=True):
        assert torch.equal(a, b)


def test_the_reference_leaks_and_ours_does_not():
    torch.manual_seed(0)
    gen = seeded(3)
    ref = ref_module.PartialConv2d(3, 4, 3, padding=1, return_mask=True)
    ours = PConv2d(3, 4, 3, padding=1)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn((1, 3, 12, 12), generator=gen)
    mask = torch.ones(1, 1, 12, 12)
    mask[..., 4:7, 4:7] = 0
    x = _poison(x, mask, float("nan"))
    ref_out, _ = ref(x, mask)
    ours_out, _ = ours(x, mask)
    assert torch.isnan(ref_out).any(), "the reference should leak NaN (NaN * 0 = NaN)"
    assert torch.isfinite(ours_out).all()


def test_nan_in_a_valid_pixel_still_propagates():
    """Only holes are protected: a NaN the mask calls valid is data, and reaches the output."""
    layer = PConv2d(1, 1, 3, padding=1)
    x = torch.zeros(1, 1, 5, 5)
    x[..., 2, 2] = float("nan")
    out, _ = layer(x, torch.ones(1, 1, 5, 5))
    assert torch.isnan(out[..., 1:4, 1:4]).all() and torch.isfinite(out[..., 0, :]).all()
