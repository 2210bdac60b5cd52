"""Holes never leak: NaN or inf under a 0 in the mask gives exactly what a zero gives.

Scientific and medical images mark missing pixels with NaN. In NVIDIA's reference, NaN × 0 is
NaN, so a NaN under a hole poisons its whole window and the weight gradient.
"""

from __future__ import annotations

import pytest
import torch

from torch_pconv import PConv1d, PConv2d, PConv3d
from torch_pconv import reference as ref_module
from torch_pconv.holes import random_holes

LAYERS = {1: PConv1d, 2: PConv2d, 3: PConv3d}
SPATIAL = {1: (13,), 2: (9, 10), 3: (5, 6, 7)}
# name -> (leading mask dims given batch B and channels C, multi_channel)
LAYOUTS = {
    "shared": (lambda b, c: (b,), False),
    "single": (lambda b, c: (b, 1), False),
    "broadcast": (lambda b, c: (1, 1), False),
    "multi": (lambda b, c: (b, c), True),
}


def _poison(x: torch.Tensor, mask: torch.Tensor, value: float) -> torch.Tensor:
    """``x`` with ``value`` wherever the mask (broadcast to x) has a hole."""
    hole = (mask.unsqueeze(1) if mask.dim() == x.dim() - 1 else mask).expand_as(x) == 0
    return x.masked_fill(hole, value)


def _run(layer: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor):
    x = x.detach().clone().requires_grad_()
    layer.zero_grad(set_to_none=True)
    out, update = layer(x, mask)
    out.backward(torch.ones_like(out))
    return out.detach(), update, x.grad, layer.weight.grad.clone(), layer.bias.grad.clone()


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.bool, torch.uint8])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("legacy", [False, True])
def test_non_finite_holes_give_what_zeros_give(dims, layout, mask_dtype, value, legacy):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    batch, channels = 2, 3
    leading, multi = LAYOUTS[layout]
    layer = LAYERS[dims](channels, 4, 3, padding=1, multi_channel=multi, legacy_behaviour=legacy)
    x = torch.randn((batch, channels, *SPATIAL[dims]), generator=gen)
    mask = random_holes((*leading(batch, channels), *SPATIAL[dims]), 0.4, gen)
    zeros = _run(layer, _poison(x, mask, 0.0), mask.to(mask_dtype))
    poisoned = _run(layer, _poison(x, mask, value), mask.to(mask_dtype))
    for name, a, b in zip(["output", "mask", "grad_input", "grad_weight", "grad_bias"], poisoned, zeros, strict=True):
        assert torch.isfinite(a).all(), f"{name} is not finite"
        assert torch.equal(a, b), f"{name} differs from the zero-filled input"


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_and_fractional_masks(dtype):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2)
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
    gen = torch.Generator().manual_seed(3)
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
