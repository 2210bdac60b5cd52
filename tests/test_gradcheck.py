"""Gradients of PConv1d/2d/3d against finite differences (torch.autograd.gradcheck and
gradgradcheck, float64), with the mask held constant.

Each case runs in ``fast_mode`` (a random projection of the Jacobian, about 25 times cheaper)
except one full case per dimension, which checks every entry of the Jacobian.
"""

from __future__ import annotations

import pytest
import torch
from helpers import LAYERS, MaskCase, random_mask, seeded
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call

from torch_pconv._masks import MaskLayout

SPATIAL = {1: (7,), 2: (5, 6), 3: (3, 4, 4)}
L = MaskLayout
MASKS = {
    1: [MaskCase(L.SINGLE), MaskCase(L.NONE)],
    2: [MaskCase(L.SINGLE), MaskCase(L.MULTI), MaskCase(L.SHARED), MaskCase(L.NONE), MaskCase(L.NONE, multi_flag=True)],
    3: [MaskCase(L.MULTI), MaskCase(L.NONE)],
}
# The one full (not fast_mode) case of each dimension: its first mask, default arithmetic.
CASES = [
    (dims, case, legacy, not (case == cases[0] and not legacy))
    for dims, cases in MASKS.items()
    for case in cases
    for legacy in (False, True)
]


@pytest.mark.parametrize(
    ("dims", "case", "legacy", "fast"),
    CASES,
    ids=[f"{d}d-{c.name}-{'legacy' if legacy else 'default'}{'' if fast else '-full'}" for d, c, legacy, fast in CASES],
)
def test_gradcheck(dims, case, legacy, fast):
    """First and second derivatives in input, weight and bias, with the mask held constant."""
    gen = seeded(dims)
    layer = LAYERS[dims](
        3,
        2,
        3,
        stride=2,
        padding=1,
        multi_channel=case.ours_multi,
        legacy_behaviour=legacy,
        dtype=torch.float64,
    )
    spatial = SPATIAL[dims]
    x = torch.randn((2, 3, *spatial), generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(layer.weight.shape, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(layer.bias.shape, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = random_mask(case, 2, 3, spatial, gen, dtype=torch.float64)

    def output(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return functional_call(layer, {"weight": weight, "bias": bias}, (x, mask))[0]

    torch.manual_seed(0)  # fast_mode draws its projections from the global generator
    assert gradcheck(output, (x, weight, bias), fast_mode=fast)
    assert gradgradcheck(output, (x, weight, bias), fast_mode=fast)
