"""Bool and integer masks: nonzero is valid, in eager, compiled, exported and traced code alike.

A 0/255 mask read from a PNG must give what the 0/1 float mask gives, with no data-dependent check
(which compilers and tracers skip, so that eager and compiled code would disagree).
"""

from __future__ import annotations

import pytest
import torch
from helpers import ThreeLayerNet, seeded
from torch import Tensor

from torch_pconv import PConv2d
from torch_pconv._masks import MaskLayout

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),  # tracing specializes the shape checks
]


def _inputs() -> tuple[Tensor, Tensor]:
    g = seeded(0)
    x = torch.randn(2, 3, 12, 12, generator=g)
    valid = torch.rand(2, 1, 12, 12, generator=g) >= 0.4
    valid[:, :, 2:9, 3:10] = False  # windows of holes only, at every layer
    return x, valid


def _as(valid: Tensor, dtype: torch.dtype, value: int) -> Tensor:
    """``valid`` as ``dtype`` holding ``value`` where valid, 0 in the holes."""
    return torch.where(valid, value, 0).to(dtype)


def _eager_float(net: torch.nn.Module, x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    out, update = net(x, valid.float())
    return out.detach(), update


INTEGER_MASKS = [(torch.uint8, 255), (torch.int32, 255), (torch.int64, -1), (torch.int8, 7), (torch.bool, True)]


@pytest.mark.parametrize(("dtype", "value"), INTEGER_MASKS)
@pytest.mark.parametrize(
    "layout", [MaskLayout.SINGLE, MaskLayout.SHARED, MaskLayout.MULTI], ids=lambda layout: layout.value
)
def test_eager_nonzero_is_valid(dtype: torch.dtype, value: int, layout: MaskLayout) -> None:
    torch.manual_seed(0)
    layer = PConv2d(3, 4, 3, padding=1, multi_channel=layout is MaskLayout.MULTI)
    x, valid = _inputs()
    if layout is MaskLayout.SHARED:
        valid = valid[:, 0]
    elif layout is MaskLayout.MULTI:
        valid = valid.expand(-1, 3, -1, -1).clone()
        valid[:, 1, :4] = False  # channels differ
    expected, expected_update = layer(x, valid.float())
    out, update = layer(x, _as(valid, dtype, value))
    assert torch.equal(out, expected)
    assert torch.equal(update, expected_update)


@pytest.mark.slow
def test_compiled_nonzero_is_valid() -> None:
    net = ThreeLayerNet().eval()
    x, valid = _inputs()
    expected, expected_update = _eager_float(net, x, valid)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    out, update = compiled(x, _as(valid, torch.uint8, 255))
    torch.testing.assert_close(out, expected)
    assert torch.equal(update, expected_update)


@pytest.mark.slow
def test_exported_nonzero_is_valid() -> None:
    net = ThreeLayerNet().eval()
    x, valid = _inputs()
    expected, expected_update = _eager_float(net, x, valid)
    program = torch.export.export(net, (x, _as(valid, torch.uint8, 1)))  # traced on a 0/1 mask
    out, update = program.module()(x, _as(valid, torch.uint8, 255))
    torch.testing.assert_close(out, expected)
    assert torch.equal(update, expected_update)


def test_traced_nonzero_is_valid() -> None:
    net = ThreeLayerNet().eval()
    x, valid = _inputs()
    expected, expected_update = _eager_float(net, x, valid)
    with torch.no_grad():
        traced = torch.jit.trace(net, (x, _as(valid, torch.uint8, 1)), check_trace=False)
        out, update = traced(x, _as(valid, torch.uint8, 255))
    torch.testing.assert_close(out, expected)
    assert torch.equal(update, expected_update)
