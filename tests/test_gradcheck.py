"""Gradients of PConv1d/2d/3d against finite differences (torch.autograd.gradcheck, float64)."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call

from torch_pconv import PConv1d, PConv2d, PConv3d
from torch_pconv.holes import random_holes

LAYERS = {1: PConv1d, 2: PConv2d, 3: PConv3d}
SPATIAL = {1: (7,), 2: (5, 6), 3: (3, 4, 4)}


def _mask(
    layout: str, batch: int, channels: int, spatial: tuple[int, ...], gen: torch.Generator
) -> torch.Tensor | None:
    leading = {"none": None, "none_multi": None, "single": (batch, 1), "multi": (batch, channels), "shared": (batch,)}
    if leading[layout] is None:
        return None
    return random_holes((*leading[layout], *spatial), 0.4, generator=gen).double()


CASES = [(2, layout) for layout in ("single", "multi", "shared", "none", "none_multi")]
CASES += [(1, "single"), (1, "none"), (3, "multi"), (3, "none")]


@pytest.mark.parametrize("legacy", [False, True], ids=["default", "legacy"])
@pytest.mark.parametrize(("dims", "layout"), CASES, ids=[f"{d}d-{layout}" for d, layout in CASES])
def test_gradcheck(dims, layout, legacy):
    """First and second derivatives in input, weight and bias, with the mask held constant."""
    gen = torch.Generator().manual_seed(dims)
    layer = LAYERS[dims](
        3,
        2,
        3,
        stride=2,
        padding=1,
        multi_channel=layout.endswith("multi"),
        legacy_behaviour=legacy,
        dtype=torch.float64,
    )
    spatial = SPATIAL[dims]
    x = torch.randn((2, 3, *spatial), generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(layer.weight.shape, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(layer.bias.shape, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = _mask(layout, 2, 3, spatial, gen)

    def output(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return functional_call(layer, {"weight": weight, "bias": bias}, (x, mask))[0]

    assert gradcheck(output, (x, weight, bias))
    assert gradgradcheck(output, (x, weight, bias))


@pytest.mark.parametrize("layout", ["single", "multi", "shared"])
def test_no_gradient_flows_to_the_mask(layout):
    """The mask is a constant, even when the caller's mask requires grad."""
    gen = torch.Generator().manual_seed(0)
    layer = PConv2d(3, 2, 3, padding=1, multi_channel=layout == "multi")
    x = torch.randn(2, 3, 6, 6, generator=gen, requires_grad=True)
    mask = _mask(layout, 2, 3, (6, 6), gen).float().requires_grad_()
    output, new_mask = layer(x, mask)
    output.sum().backward()
    assert mask.grad is None and not new_mask.requires_grad
    assert x.grad is not None and layer.weight.grad is not None
