"""torch_pconv._quirks: each version-dependent feature, and its fallback where a torch lacks it.

The fallbacks are what older torch releases take; here they are forced by hiding the feature, and
the layer must still compute what the reference computes.
"""

from __future__ import annotations

import types

import pytest
import torch
from helpers import make_pair, seeded
from torch import nn

from torch_pconv import PConv2d
from torch_pconv import _quirks as quirks
from torch_pconv.bench.memory import LiveBytes


def _agree(ours: nn.Module, ref: nn.Module, masked: bool = True) -> None:
    """Forward and input/weight gradients of ``ours`` equal the reference's in float64."""
    g = seeded(1)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    mask = (torch.rand(2, 1, 8, 8, generator=g) > 0.4).double() if masked else None
    results = []
    for layer in (ours, ref):
        layer.zero_grad()
        xi = x.clone().requires_grad_()
        out, _ = layer(xi, mask)
        out.square().sum().backward()
        results.append((out.detach(), xi.grad, layer.weight.grad))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12 * b.abs().max().item())


def test_is_compiling_is_false_in_eager_code() -> None:
    assert quirks.is_compiling() is False
    assert quirks.compiling_or_tracing() is False


def test_is_compiling_falls_back_to_dynamo(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch 2.1 and 2.2 have no torch.compiler.is_compiling.
    import torch._dynamo

    monkeypatch.setattr(torch, "compiler", types.SimpleNamespace())
    assert quirks._find_is_compiling() is torch._dynamo.is_compiling


@pytest.mark.filterwarnings("ignore:torch.is_autocast_cpu_enabled:DeprecationWarning")
def test_autocast_enabled_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert quirks.autocast_enabled("cpu") is False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert quirks.autocast_enabled("cpu") is True
    # Before 2.4, torch.is_autocast_enabled took no device type: the per-device functions.
    monkeypatch.setattr(quirks, "_AUTOCAST_TAKES_DEVICE_TYPE", False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert quirks.autocast_enabled("cpu") is True
    assert quirks.autocast_enabled("cpu") is False
    assert quirks.autocast_enabled("no-such-device") is False


def test_autocast_off_without_is_autocast_available(monkeypatch: pytest.MonkeyPatch) -> None:
    # Before 2.4 there is no torch.amp.is_autocast_available: constructing autocast is the probe.
    monkeypatch.setattr(torch, "amp", types.SimpleNamespace())
    assert quirks._has_autocast("cpu") is True
    assert quirks._has_autocast("meta") is False
    monkeypatch.setattr(quirks, "_HAS_AUTOCAST", {})
    with torch.autocast("cpu", dtype=torch.bfloat16), quirks.autocast_off("cpu"):
        assert not quirks.autocast_enabled("cpu")
    with quirks.autocast_off("meta"):  # a no-op, not an error
        pass


def test_meta_tensors_run_through_the_layer() -> None:
    layer = PConv2d(3, 4, 3, padding=1, device="meta")
    out, mask = layer(torch.empty(2, 3, 8, 8, device="meta"), torch.empty(2, 1, 8, 8, device="meta"))
    assert out.shape == (2, 4, 8, 8) and mask.shape == (2, 1, 8, 8)


def test_dispatch_mode_active_fails_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    assert quirks.dispatch_mode_active() is False
    monkeypatch.delattr(torch._C, "_len_torch_dispatch_stack")
    assert quirks.dispatch_mode_active() is True
    ours, ref = make_pair(2, {"in_channels": 3, "out_channels": 4, "kernel_size": 3, "padding": 1}, dtype=torch.float64)
    _agree(ours, ref, masked=False)
    assert ours._ratio_cache == {}  # never cached where it cannot tell


def test_functorch_transform_active_fails_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    assert quirks.functorch_transform_active() is False
    seen: list[bool] = []
    torch.func.vmap(lambda t: seen.append(quirks.functorch_transform_active()) or t)(torch.zeros(2, 2))
    assert seen == [True]
    # A torch without the probe: assume a transform, so that the layer runs its plain ops.
    monkeypatch.setattr(torch._C, "_functorch", types.SimpleNamespace())
    assert quirks.functorch_transform_active() is True


def test_the_layer_under_no_transform_probe_is_still_right(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch_pconv import pconv

    layer = PConv2d(3, 4, 3, padding=1).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    mask = torch.rand(2, 1, 6, 6) > 0.4
    expected, _ = layer(x, mask)
    monkeypatch.setattr(pconv, "functorch_transform_active", lambda: True)  # the fallback's answer
    out, _ = layer(x, mask)
    assert torch.allclose(out, expected, rtol=0, atol=1e-14)


def test_profile_events_fall_back_to_no_memory_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(64, 64)
    with LiveBytes("cpu") as meter, meter.window("w"):
        (x @ x).sum()
    assert meter.results["w"][0] >= 64 * 64 * 4
    monkeypatch.setattr(quirks, "profile_events", lambda prof: None)
    with LiveBytes("cpu") as meter, meter.window("w"):
        (x @ x).sum()
    assert meter.results == {}


def test_dual_level_open_fails_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.autograd import forward_ad

    assert quirks.dual_level_open() is False
    with forward_ad.dual_level():
        assert quirks.dual_level_open() is True
    # A torch that keeps its level elsewhere: assume one is open, so that every tensor is asked.
    monkeypatch.setattr(torch.autograd, "forward_ad", types.SimpleNamespace())
    assert quirks.dual_level_open() is True
    layer = PConv2d(2, 2, 3, padding=1).double()
    x, tangent = torch.randn(1, 2, 6, 6, dtype=torch.float64), torch.randn(1, 2, 6, 6, dtype=torch.float64)
    mask = torch.ones(1, 1, 6, 6, dtype=torch.float64)
    mask[..., 2:4, 2:4] = 0
    with torch.no_grad(), forward_ad.dual_level():
        out, _ = layer(forward_ad.make_dual(x, tangent), mask)
        got = forward_ad.unpack_dual(out).tangent
    expected, _ = layer(tangent, mask)  # linear in the input: the tangent is the layer less its bias
    torch.testing.assert_close(got, expected - layer(torch.zeros_like(x), mask)[0], rtol=0, atol=1e-12)
