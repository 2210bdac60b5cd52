"""Memory formats: a channels_last (or channels_last_3d) input gives a channels_last output, the
same returned mask as a contiguous input, and outputs and input gradients within the rounding of
the two convolution algorithms, for every mask layout."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import LAYERS, MaskCase, holes_and_a_box, mask_cases, seeded
from torch import Tensor, nn

from torch_pconv._masks import MaskLayout

EPS = torch.finfo(torch.float32).eps


def _magnitude(layer: nn.Module, x: Tensor, mask: Tensor | None) -> Tensor:
    """ratio * sum|w x| + |b| * update at every output: the layer on absolute values."""
    absolute = copy.deepcopy(layer)
    with torch.no_grad():
        for p in absolute.parameters():
            p.abs_()
        return absolute(x.abs(), mask)[0]


SPATIAL = {2: (9, 10), 3: (4, 9, 10)}
MEMORY_FORMAT = {2: torch.channels_last, 3: torch.channels_last_3d}
L = MaskLayout
# (dims, mask layout, variant): "channels-last-mask" gives the mask the input's memory format;
# "groups-bool" is a grouped layer (3 groups) with a bool mask.
CASES = [(2, case, "") for case in mask_cases() if not case.multi_flag]
CASES += [(2, MaskCase(L.MULTI), "channels-last-mask"), (2, MaskCase(L.MULTI), "groups-bool")]
CASES += [(3, MaskCase(layout), "") for layout in (L.NONE, L.SINGLE, L.MULTI)]


@pytest.mark.parametrize(
    ("dims", "case", "variant"), CASES, ids=["-".join(filter(None, (f"{d}d", c.name, v))) for d, c, v in CASES]
)
def test_channels_last_in_channels_last_out(dims: int, case: MaskCase, variant: str) -> None:
    groups = 3 if variant == "groups-bool" else 1
    torch.manual_seed(0)
    layer = LAYERS[dims](3, 5 if groups == 1 else 6, 3, padding=1, groups=groups, multi_channel=case.ours_multi)
    fmt = MEMORY_FORMAT[dims]
    shape = case.shape(2, 3, SPATIAL[dims])
    mask = None if shape is None else holes_and_a_box(shape, seed=2)
    if variant == "channels-last-mask":
        mask = mask.to(memory_format=fmt)
    elif variant == "groups-bool":
        mask = mask > 0
    x = torch.randn((2, 3, *SPATIAL[dims]), generator=seeded(3))
    x_last = x.to(memory_format=fmt).requires_grad_()
    x_contiguous = x.clone().requires_grad_()

    out, update = layer(x_last, mask)
    expected, expected_update = layer(x_contiguous, mask)
    assert out.is_contiguous(memory_format=fmt), f"output strides {out.stride()} for input strides {x_last.stride()}"
    assert torch.equal(update, expected_update)

    # Two convolution algorithms (channels_last and contiguous) sum the n = C_in/groups * prod(k)
    # products in different orders: each within n*u of the magnitude, then the ratio product
    # and the bias add, each within u: |difference| <= 2 (n + 2) u * magnitude.
    n = layer.in_channels // layer.groups * layer.weight[0, 0].numel()
    bound = 2 * (n + 2) * (EPS / 2) * _magnitude(layer, x, mask)
    assert ((out - expected).abs() <= bound).all()

    upstream = torch.randn(out.shape, generator=seeded(4))
    out.backward(upstream)
    expected.backward(upstream)
    scale = x_contiguous.grad.abs().max().item()
    torch.testing.assert_close(x_last.grad, x_contiguous.grad, rtol=0, atol=2 * (n + 2) * EPS * scale)
