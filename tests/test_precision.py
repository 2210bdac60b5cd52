"""Exact mixed precision: float16 and bfloat16 layers, and a float32 layer under CPU bfloat16 autocast.

The mask counts are integers. float16 holds them exactly only up to 2048 and bfloat16 up to 256,
so a 512-channel 3x3 multi-channel window (4608 entries) cannot be counted in the input's dtype.
torch_pconv counts in float32 (exact up to 2**24) with autocast off; NVIDIA's reference counts
in the input's dtype, and in float16 its ``+ 1e-8`` rounds to 0, so a 0-count window gives
``4608 / 0 * 0 = inf * 0 = NaN``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from helpers import seeded
from torch import Tensor

import torch_pconv._masks
from torch_pconv import PConv2d
from torch_pconv.reference import PartialConv2d as Reference

WIDE = 512  # channels: a 3x3 multi-channel window spans 512 * 9 = 4608 > 2048 entries
SIZE = 10


@dataclass(frozen=True)
class Precision:
    name: str
    dtype: torch.dtype  # the dtype the convolution computes in
    autocast: bool  # a float32 layer under autocast, rather than a layer in ``dtype``
    device: str = "cpu"

    @property
    def layer_dtype(self) -> torch.dtype:
        return torch.float32 if self.autocast else self.dtype

    @property
    def unit_roundoff(self) -> float:
        return torch.finfo(self.dtype).eps / 2

    def context(self) -> torch.autocast:
        return torch.autocast(self.device, dtype=self.dtype, enabled=self.autocast)


PRECISIONS = [
    Precision("float16", torch.float16, autocast=False),
    Precision("bfloat16", torch.bfloat16, autocast=False),
    Precision("autocast-bfloat16", torch.bfloat16, autocast=True),
    # Where a GPU is lent: CUDA autocast in float16, the setting in which NVIDIA's eps fails.
    pytest.param(
        Precision("cuda-autocast-float16", torch.float16, autocast=True, device="cuda"),
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    ),
]


def _has_conv_kernel(dtype: torch.dtype, device: str) -> bool:
    """Whether this build has a convolution kernel for ``dtype`` on ``device`` (CPU float16 once lacked one)."""
    if device == "cuda" and not torch.cuda.is_available():
        return True  # skipped by its mark
    ones = torch.ones(1, 1, 3, 3, dtype=dtype, device=device)
    try:
        F.conv2d(ones, ones)
    except (RuntimeError, NotImplementedError):
        return False
    return True


@pytest.fixture(params=PRECISIONS, ids=lambda p: p.name)
def precision(request: pytest.FixtureRequest) -> Precision:
    p: Precision = request.param
    if not _has_conv_kernel(p.dtype, p.device):
        pytest.skip(f"this torch build has no {p.dtype} convolution on {p.device}")
    return p


@dataclass(frozen=True)
class Setting:
    """A layer and a float32 mask of 1 (valid) and 0 (hole)."""

    in_channels: int
    multi_channel: bool
    mask: Tensor

    def layer(self, precision: Precision, seed: int = 0) -> PConv2d:
        torch.manual_seed(seed)
        return PConv2d(
            self.in_channels, 4, 3, padding=1, multi_channel=self.multi_channel, dtype=precision.layer_dtype
        ).to(precision.device)

    def exact_counts(self) -> Tensor:
        """Valid entries under each window, at NVIDIA's scale for the layout, in float64."""
        valid = self.mask.double().sum(1, keepdim=True)
        return F.conv2d(valid, torch.ones(1, 1, 3, 3, dtype=torch.float64), padding=1)

    @property
    def window(self) -> int:
        return (self.in_channels if self.multi_channel else 1) * 9


def _wide_hole() -> Setting:
    """512 channels, half the entries holes, and a 5x6 hole through every channel: wider than the
    kernel, so the windows inside it count 0; the others count around 2300, above 2048."""
    g = seeded(1)
    mask = (torch.rand(2, WIDE, SIZE, SIZE, generator=g) >= 0.5).float()
    mask[:, :, 1:6, 2:8] = 0
    return Setting(WIDE, True, mask)


def _wide_sparse() -> Setting:
    """512 channels, 0.2% of the entries valid: small counts (0, 1, 2, ...), ratios up to 4608."""
    g = seeded(2)
    return Setting(WIDE, True, (torch.rand(2, WIDE, SIZE, SIZE, generator=g) < 0.002).float())


def _single_sparse() -> Setting:
    """NVIDIA's single-channel mask, 70% holes: counts 0 to 9 in a 3x3 window."""
    g = seeded(3)
    return Setting(8, False, (torch.rand(2, 1, SIZE, SIZE, generator=g) >= 0.7).float())


SETTINGS = {"wide-hole": _wide_hole(), "wide-sparse": _wide_sparse(), "single-sparse": _single_sparse()}


@pytest.fixture(params=list(SETTINGS), ids=list(SETTINGS))
def setting(request: pytest.FixtureRequest) -> Setting:
    return SETTINGS[request.param]


def _input(setting: Setting, precision: Precision) -> Tensor:
    g = seeded(4)
    x = torch.randn(2, setting.in_channels, SIZE, SIZE, generator=g)
    return x.to(precision.layer_dtype).to(precision.device)


def _forward(layer: torch.nn.Module, x: Tensor, mask: Tensor, precision: Precision) -> tuple[Tensor, Tensor]:
    with precision.context():
        return layer(x, mask.to(precision.layer_dtype).to(precision.device))


@pytest.fixture
def ratio_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Tensor, int, Tensor, Tensor]]:
    """Record every (count, window, ratio, update) the layers compute: the counts are internal."""
    calls: list[tuple[Tensor, int, Tensor, Tensor]] = []
    real = torch_pconv._masks.ratio_from_counts

    def spy(count: Tensor, window: int) -> tuple[Tensor, Tensor]:
        ratio, update = real(count, window)
        calls.append((count.detach().clone(), window, ratio.detach().clone(), update.detach().clone()))
        return ratio, update

    monkeypatch.setattr(torch_pconv._masks, "ratio_from_counts", spy)
    return calls


def test_counts_and_ratios_are_exact(precision: Precision, setting: Setting, ratio_calls: list) -> None:
    layer = setting.layer(precision)
    _forward(layer, _input(setting, precision), setting.mask, precision)
    assert len(ratio_calls) == 1
    count, window, ratio, update = ratio_calls[0]
    exact = setting.exact_counts().to(count.device)

    assert count.dtype in (torch.float32, torch.float64), "counts must not be computed in half precision"
    assert window == setting.window
    assert torch.equal(count.double(), exact), "counts must be exact integers, autocast or not"
    assert torch.equal(update.double(), (exact > 0).double())
    assert torch.isfinite(ratio).all()
    assert torch.equal(ratio[exact == 0], torch.zeros_like(ratio[exact == 0]))
    # window / count in float32: a reciprocal and a product, each rounded once, so within
    # 2 * 2**-24 relative of the exact quotient (NVIDIA's 1e-8 is below float32's resolution at 1).
    valid = exact > 0
    exact_ratio = window / exact[valid]
    assert ((ratio[valid].double() - exact_ratio).abs() <= torch.finfo(torch.float32).eps * exact_ratio).all()


def test_output_within_half_precision_rounding_of_float64_reference(precision: Precision, setting: Setting) -> None:
    layer = setting.layer(precision)
    x = _input(setting, precision)
    out, _ = _forward(layer, x, setting.mask, precision)

    # The float64 reference on the operands as the convolution sees them (autocast rounds the
    # input and weight to its dtype; x * mask is exact for a 0/1 mask).
    ref = Reference(setting.in_channels, 4, 3, padding=1, multi_channel=setting.multi_channel, return_mask=True)
    ref = ref.double().to(precision.device)
    with torch.no_grad():
        ref.weight.copy_(layer.weight.to(precision.dtype).double())
        ref.bias.copy_(layer.bias.double())
    x64 = x.to(precision.dtype).double()
    mask64 = setting.mask.double().to(precision.device)
    expected, _ = ref(x64, mask64)

    # Bound: ours = fl(fl(fl(conv) * fl(ratio)) + bias * update). The convolution accumulates in
    # float32 or wider (n <= 4608 terms: n * 2**-24 < 0.6 u even for float16), then three roundings
    # to the dtype (conv, ratio, product) and one for the bias, each at most u (the dtype's unit
    # roundoff, eps / 2) relative to its magnitude: |ours - exact| <= 4u * (ratio * sum|x w| + |b|).
    # In 0-count windows the magnitude is 0: the output must be exactly 0 there.
    sum_abs = F.conv2d((x64 * mask64).abs(), ref.weight.abs(), None, padding=1)
    magnitude = ref.mask_ratio * sum_abs + ref.bias.abs().view(1, -1, 1, 1) * ref.update_mask
    error = (out.double() - expected).abs()
    bound = 4 * precision.unit_roundoff * magnitude
    assert out.dtype == precision.dtype
    assert torch.isfinite(out).all()
    worst = (error - bound).max().item()
    assert worst <= 0, f"error exceeds 4u * magnitude by {worst:.3g} (u = {precision.unit_roundoff:.3g})"


def test_returned_mask_is_exactly_zero_one(precision: Precision, setting: Setting) -> None:
    layer = setting.layer(precision)
    _, update = _forward(layer, _input(setting, precision), setting.mask, precision)
    exact = (setting.exact_counts() > 0).to(precision.layer_dtype).to(precision.device)
    assert update.dtype == precision.layer_dtype, "the returned mask is in the input's dtype"
    assert torch.equal(update, exact.expand_as(update))
    assert update.shape[1] == (4 if setting.multi_channel else 1)


def test_reference_fails_where_ours_does_not(precision: Precision, ratio_calls: list) -> None:
    """The same wide layer and mask: the reference's ratio is wrong (and NaN in float16), ours exact."""
    setting = SETTINGS["wide-hole"]
    ours = setting.layer(precision)
    ref = Reference(WIDE, 4, 3, padding=1, multi_channel=True, return_mask=True, dtype=precision.layer_dtype)
    ref = ref.to(precision.device)
    ref.load_state_dict(ours.state_dict())
    x = _input(setting, precision)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ours, _ = _forward(ours, x_ours, setting.mask, precision)
    out_ref, _ = _forward(ref, x_ref, setting.mask, precision)
    out_ours.float().sum().backward()
    out_ref.float().sum().backward()

    exact = setting.exact_counts().to(precision.device)
    valid = exact > 0
    exact_ratio = setting.window / exact[valid]
    u = precision.unit_roundoff

    # Ours: float32 counts, so a ratio within float32 rounding, and everything finite.
    _, _, ratio, _ = ratio_calls[0]
    assert ((ratio[valid].double() - exact_ratio).abs() <= torch.finfo(torch.float32).eps * exact_ratio).all()
    for tensor in (out_ours, x_ours.grad, ours.weight.grad, ours.bias.grad):
        assert torch.isfinite(tensor).all()

    # The reference counts in the half dtype: counts above 2048 (float16) or 256 (bfloat16) are
    # rounded, so some ratio is more than u off the exact one, which the dtype's own correctly
    # rounded ratio never is.
    ref_ratio = ref.mask_ratio[:, :1][valid].double()  # (B, C_out, H, W), all channels equal
    assert ((ref_ratio - exact_ratio).abs() > u * exact_ratio).any()

    if precision.dtype == torch.float16:
        # 1e-8 rounds to 0 in float16: 0-count windows give 4608 / 0 * 0 = NaN, in the output and,
        # through the ratio, in the weight gradient.
        assert torch.tensor(1e-8, dtype=torch.float16).item() == 0
        assert torch.isnan(ref.mask_ratio).any()
        assert torch.isnan(out_ref).any()
        assert torch.isnan(ref.weight.grad).any()


def test_float16_windows_above_65504_stay_finite() -> None:
    """A ratio of up to C_in·k² (here 1040·8·8 = 66560, for a window with one valid entry) does not
    fit in float16 (max 65504): it must stay in float32 until it multiplies the output."""
    try:
        torch.nn.functional.conv2d(torch.ones(1, 1, 2, 2, dtype=torch.float16), torch.ones(1, 1, 1, 1).half())
    except RuntimeError:
        pytest.skip(f"torch {torch.__version__} has no float16 convolution on the CPU (2.1 had none)")
    torch.manual_seed(0)
    gen = seeded(0)
    layer = PConv2d(1040, 2, 8, bias=True, multi_channel=True, dtype=torch.float64)
    x = torch.randn((1, 1040, 8, 8), generator=gen, dtype=torch.float64)
    mask = torch.zeros(1, 1040, 8, 8, dtype=torch.float64)
    mask[0, 7, 3, 4] = 1  # one valid entry: count 1, ratio 66560
    expected, _ = layer(x, mask)
    half = PConv2d(1040, 2, 8, bias=True, multi_channel=True, dtype=torch.float16)
    half.load_state_dict(layer.state_dict())
    out, update = half(x.half(), mask.half())
    assert torch.isfinite(out).all()
    assert torch.equal(update, torch.ones_like(update))
    # One product and the bias, each rounded to float16 (u = 2**-11), against float64.
    torch.testing.assert_close(out.double(), expected, rtol=4 * 2**-11, atol=4 * 2**-11)
