"""Equivalence of torch_pconv's layers with NVIDIA's reference: ``python -m torch_pconv check``.

The cases (:data:`CASES`), the comparison of one pair of layers and its tolerances, and the
printed report.

The metric is normwise, ``max|ours - ref| / max|ref|`` (element-wise relative error means nothing
where outputs are near zero). The tolerances come from the arithmetic:

- float64: 1e-12 for everything.
- float32 and narrower, with ``u`` the unit roundoff of the dtype:
  - forward: the reference computes ``(conv + b - b) * ratio + b``; each of the two roundings
    of ``conv + b`` is at most ``u * (|conv| + |b|)``, then magnified by the ratio. With
    ``ratio * |conv| <= |ref| + |b|`` this gives ``4u * max(2|ref| + |b| * (1 + ratio)) / max|ref|``.
    With ``legacy_behaviour=True`` the forward must be bit-identical: tolerance 0.
  - input and weight gradients: both layers hand the same kernels the same operands
    (``grad * ratio`` is exact for 0/1 masks), so only a reordered accumulation can differ
    (non-deterministic GPU algorithms): ``4u * max(M) / max|ref|``, where ``M`` is the same
    gradient computed on absolute values (the magnitude of the sum).
  - bias gradient: the reference's is ``sum(g*r) - sum(g*r) + sum(g)``, whose leftover is
    ``4u * sum|g * ratio|`` (per output channel).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from . import reference
from ._masks import MaskLayout
from .holes import random_holes, rectangle_holes, stroke_holes
from .pconv import PConv2d, PConv3d


def relative_error(ours: Tensor, ref: Tensor) -> float:
    """``max|ours - ref| / max|ref|``, in float64 (0 when both are all zeros)."""
    scale = ref.detach().abs().max().double().item()
    diff = (ours.detach().double() - ref.detach().double()).abs().max().item()
    if scale == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return float(diff / scale)


@dataclass
class Comparison:
    """Worst errors of a layer against the reference on one input, and the tolerances they meet."""

    errors: dict[str, float] = field(default_factory=dict)
    tolerances: dict[str, float] = field(default_factory=dict)
    mask_equal: bool = True

    @property
    def ok(self) -> bool:
        return self.mask_equal and all(self.errors[k] <= self.tolerances[k] for k in self.errors)

    def failures(self) -> list[str]:
        bad = [
            f"{k}: {self.errors[k]:.3g} > {self.tolerances[k]:.3g}"
            for k in self.errors
            if not self.errors[k] <= self.tolerances[k]
        ]
        return bad + ([] if self.mask_equal else ["returned mask differs"])


def _abs_conv_grads(conv: Any, input: Tensor, weight: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    """The input and weight gradients of ``conv`` computed on absolute values: sum |a| |b|."""
    x = input.detach().abs().requires_grad_()
    w = weight.detach().abs().requires_grad_()
    # The layer's own nn.ConvNd._conv_forward: same stride, padding, padding_mode, dilation, groups.
    out = conv._conv_forward(x, w, None)
    gx, gw = torch.autograd.grad(out, (x, w), grad.detach().abs())
    return gx, gw


def compare(
    ours: Any,
    ref: Any,
    input: Tensor,
    mask: Tensor | None = None,
    ref_mask: Tensor | None = None,
    *,
    seed: int = 0,
) -> Comparison:
    """Run ``ours`` and ``ref`` (with ``return_mask=True``) forward and backward, and compare.

    ``ref`` gets ``ref_mask`` (default: ``mask``), for layouts the reference spells differently
    (a ``(B, H, W)`` mask is the reference's multi-channel mask expanded over the channels).
    ``ours`` is loaded with ``ref``'s parameters. The output gradient is drawn from ``seed``.
    """
    ours.load_state_dict(ref.state_dict())
    ours.zero_grad(set_to_none=True)  # gradients of an earlier call would add up
    ref.zero_grad(set_to_none=True)
    ref_mask = mask if ref_mask is None else ref_mask
    x_ours = input.detach().clone().requires_grad_()
    x_ref = input.detach().clone().requires_grad_()
    out_ours, mask_ours = ours(x_ours, mask)
    out_ref, mask_ref = ref(x_ref, ref_mask)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    grad = torch.randn(out_ref.shape, generator=generator, dtype=out_ref.dtype).to(out_ref.device)
    ratio = ref.mask_ratio.detach().expand_as(out_ref)
    out_ours.backward(grad)
    out_ref.backward(grad)

    cmp = Comparison()
    cmp.mask_equal = mask_ours.dtype == mask_ref.dtype and torch.equal(
        _to_reference_layout(mask_ours, mask_ref), mask_ref
    )
    pairs: dict[str, tuple[Any, Any]] = {
        "output": (out_ours, out_ref),
        "grad_input": (x_ours.grad, x_ref.grad),
        "grad_weight": (ours.weight.grad, ref.weight.grad),
    }
    if ref.bias is not None:
        pairs["grad_bias"] = (ours.bias.grad, ref.bias.grad)
    for name, (a, b) in pairs.items():
        cmp.errors[name] = relative_error(a, b)

    if input.dtype == torch.float64:
        cmp.tolerances = dict.fromkeys(pairs, 1e-12)
        return cmp
    u = torch.finfo(input.dtype).eps / 2
    ref_max = out_ref.detach().abs().max().clamp_min(torch.finfo(input.dtype).tiny)
    if getattr(ours, "legacy_behaviour", False):
        cmp.tolerances["output"] = 0.0
    elif ref.bias is None:
        cmp.tolerances["output"] = 4 * u
    else:
        b = ref.bias.detach().abs().view(1, -1, *(1,) * (input.dim() - 2))
        cmp.tolerances["output"] = (4 * u * (2 * out_ref.detach().abs() + b * (1 + ratio)).max() / ref_max).item()
    masked = input if ref_mask is None else input * ref_mask
    mag_input, mag_weight = _abs_conv_grads(ref, masked, ref.weight, grad * ratio)
    magnitudes: list[tuple[str, Tensor, Any]] = [
        ("grad_input", mag_input, x_ref.grad),
        ("grad_weight", mag_weight, ref.weight.grad),
    ]
    for name, mag, exact in magnitudes:
        scale = exact.abs().max().clamp_min(torch.finfo(input.dtype).tiny)
        cmp.tolerances[name] = (4 * u * mag.max() / scale).item()
    if ref.bias is not None:
        leftover = (grad * ratio).abs().sum(dim=[d for d in range(grad.dim()) if d != 1])
        scale = ref.bias.grad.abs().max().clamp_min(torch.finfo(input.dtype).tiny)
        cmp.tolerances["grad_bias"] = (4 * u * leftover.max() / scale).item()
    return cmp


def _to_reference_layout(mask: Tensor, like: Tensor) -> Tensor:
    """Our returned mask in the layout of the reference's, ``like``: a (B, *S') mask is SHARED."""
    if mask.dim() == like.dim() - 1:
        return reference_mask(MaskLayout.SHARED, mask, like.shape[1])
    return mask  # of another shape, torch.equal tells them apart


# ----------------------------------------------------------------------------------------------
# Mask layouts as NVIDIA's layer has them (the layer itself only reads and returns them)


def reference_multi_channel(layout: MaskLayout) -> bool:
    """The ``multi_channel`` flag NVIDIA's layer needs for a mask of ``layout``: a SHARED mask is
    its multi-channel mask, expanded."""
    return layout in (MaskLayout.SHARED, MaskLayout.MULTI)


def reference_mask(layout: MaskLayout, mask: Tensor, channels: int) -> Tensor:
    """``mask`` as NVIDIA's layer has it: a SHARED ``(B, *S)`` mask becomes its multi-channel mask
    ``(B, channels, *S)``; other layouts are NVIDIA's own. For a mask given to a layer ``channels``
    is C_in; for the update mask it returns, C_out."""
    if layout is MaskLayout.SHARED:
        return mask.unsqueeze(1).expand(-1, channels, *mask.shape[1:])
    return mask


def mask_shape(layout: MaskLayout, batch: int, in_channels: int, spatial: Sequence[int]) -> tuple[int, ...] | None:
    """The shape of a mask of ``layout`` for an input ``(batch, in_channels, *spatial)`` (a
    ``batch`` of 1 broadcasts); None for NONE."""
    leading = {
        MaskLayout.NONE: None,
        MaskLayout.SHARED: (batch,),
        MaskLayout.SINGLE: (batch, 1),
        MaskLayout.MULTI: (batch, in_channels),
    }[layout]
    return None if leading is None else (*leading, *spatial)


# ----------------------------------------------------------------------------------------------
# The cases of ``python -m torch_pconv check``


@dataclass(frozen=True)
class Case:
    """One configuration of the equivalence check: a layer, a mask layout and a kind of holes."""

    name: str  # for display only: nothing is read from it
    layer: dict[str, Any]  # nn.Conv2d/3d arguments of both layers
    mask: MaskLayout
    multi_channel: bool = False  # both layers' multi_channel argument
    mask_batch: int = 2  # the mask's batch size: 1 broadcasts over the input's
    holes: Literal["random", "rectangles", "strokes"] = "random"
    dims: Literal[2, 3] = 2
    legacy: bool = False  # our layer's legacy_behaviour


_K3 = {"kernel_size": 3, "padding": 1}
_K35_DILATED_GROUPED = {"kernel_size": (3, 5), "padding": 2, "dilation": 2, "groups": 2}

_SINGLE, _MULTI, _SHARED, _NONE = MaskLayout.SINGLE, MaskLayout.MULTI, MaskLayout.SHARED, MaskLayout.NONE

CASES = [
    Case("3x3 single-channel, random holes", _K3, _SINGLE),
    Case("3x3 single-channel, legacy_behaviour", _K3, _SINGLE, legacy=True),
    Case("5x5 stride 2, rectangles", {"kernel_size": 5, "stride": 2, "padding": 2}, _SINGLE, holes="rectangles"),
    Case("7x7 multi-channel, strokes", {"kernel_size": 7, "padding": 3}, _MULTI, True, holes="strokes"),
    Case("3x3 multi-channel, legacy_behaviour", _K3, _MULTI, True, legacy=True),
    # A (B, H, W) mask stands for every channel: NVIDIA's multi-channel layer on the expanded mask.
    Case("(B, H, W) mask, 3x3 'same'", {"kernel_size": 3, "padding": "same"}, _SHARED, True, holes="strokes"),
    Case("(1, 1, H, W) batch-broadcast mask", _K3, _SINGLE, mask_batch=1),
    Case("3x5 kernel, dilation 2, groups 2", _K35_DILATED_GROUPED, _SINGLE),
    Case("reflect padding, no bias", {**_K3, "padding_mode": "reflect", "bias": False}, _MULTI, True),
    Case("mask None (partial padding)", _K3, _NONE),
    Case("mask None, multi-channel", {"kernel_size": 3, "padding": 2, "stride": 2}, _NONE, True),
    Case("3-D 3x3x3 single-channel", _K3, _SINGLE, dims=3),
    Case("3-D multi-channel, stride 2", {**_K3, "stride": 2}, _MULTI, True, dims=3),
]

BATCH, IN_CHANNELS, OUT_CHANNELS = 2, 4, 6
SPATIAL = {2: (16, 16), 3: (8, 8, 8)}


def make_mask(case: Case, spatial: tuple[int, ...], generator: torch.Generator) -> Tensor | None:
    """The mask of ``case``, in its layout, for a (BATCH, IN_CHANNELS, *spatial) input."""
    shape = mask_shape(case.mask, case.mask_batch, IN_CHANNELS, spatial)
    if shape is None:
        return None
    if case.holes == "rectangles":
        return rectangle_holes(shape, generator=generator)
    if case.holes == "strokes":
        return stroke_holes(shape, generator=generator)
    return random_holes(shape, 0.5, generator=generator)


def build_pair(case: Case, device: str | torch.device, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    """(ours, NVIDIA's reference) for ``case``; ``compare`` gives ours the reference's weights."""
    ref_cls = reference.PartialConv2d if case.dims == 2 else reference.PartialConv3d
    ours_cls = PConv2d if case.dims == 2 else PConv3d
    args = (IN_CHANNELS, OUT_CHANNELS)
    ref = ref_cls(*args, **case.layer, multi_channel=case.multi_channel, return_mask=True).to(device, dtype)
    ours = ours_cls(
        *args, **case.layer, multi_channel=case.multi_channel, legacy_behaviour=case.legacy, device=device, dtype=dtype
    )
    return ours, ref


def run_check(
    device: str = "cpu", seed: int = 0, cases: Sequence[Case] = CASES
) -> list[tuple[Case, torch.dtype, Comparison]]:
    """Compare PConv2d/3d with the reference on every case in float32 and float64."""
    rows = []
    for case in cases:
        for dtype in (torch.float32, torch.float64):
            generator = torch.Generator().manual_seed(seed)
            torch.manual_seed(seed)  # the layers' initial weights
            ours, ref = build_pair(case, device, dtype)
            spatial = SPATIAL[case.dims]
            x = torch.randn((BATCH, IN_CHANNELS, *spatial), generator=generator, dtype=dtype).to(device)
            mask = make_mask(case, spatial, generator)
            mask = None if mask is None else mask.to(device, dtype)
            ref_mask = (
                None if mask is None else reference_mask(case.mask, mask, IN_CHANNELS)
            )  # (B, *S): (B, C_in, *S) there
            rows.append((case, dtype, compare(ours, ref, x, mask, ref_mask, seed=seed)))
    return rows


# ----------------------------------------------------------------------------------------------
# The command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m torch_pconv check``."""
    parser.add_argument("--device", default="cpu", help="torch device, such as cpu or cuda (default: cpu)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


_COLUMNS = ["output", "grad_input", "grad_weight", "grad_bias"]


def main(args: argparse.Namespace) -> int:
    """Run every case, print one line per comparison and the worst errors; 1 on a disagreement."""
    start = time.perf_counter()
    rows = run_check(args.device, args.seed)
    print(f"torch_pconv check: PConv2d/PConv3d against NVIDIA's reference on {args.device}, torch {torch.__version__}")
    print("errors are max|ours - ref| / max|ref|; each must stay within a bound derived from the arithmetic")
    print("(1e-12 in float64; see torch_pconv.check for float32); 'of bound' is the worst error / bound\n")
    header = (
        f"{'case':<40} {'dtype':<8}" + "".join(f"{n:>13}" for n in _COLUMNS) + f"{'mask':>7}{'of bound':>10}  result"
    )
    print(header)
    print("-" * len(header))
    failed = 0
    for case, dtype, cmp in rows:
        cells = "".join(f"{cmp.errors[n]:>13.2e}" if n in cmp.errors else f"{'-':>13}" for n in _COLUMNS)
        result = "ok" if cmp.ok else "FAIL: " + "; ".join(cmp.failures())
        failed += not cmp.ok
        same = "same" if cmp.mask_equal else "DIFF"
        margin = max(_fraction(cmp.errors[n], cmp.tolerances[n]) for n in cmp.errors)
        print(f"{case.name:<40} {_dtype_name(dtype):<8}{cells}{same:>7}{margin:>10.2f}  {result}")
    for dtype in (torch.float32, torch.float64):
        worst = {n: max((c.errors.get(n, 0.0) for _, d, c in rows if d == dtype), default=0.0) for n in _COLUMNS}
        print(f"worst {_dtype_name(dtype)}: " + ", ".join(f"{n} {v:.2e}" for n, v in worst.items()))
    elapsed = time.perf_counter() - start
    if failed:
        print(f"\nFAIL: {failed} of {len(rows)} comparisons disagree with the reference ({elapsed:.1f} s)")
        return 1
    print(f"\nPASS: all {len(rows)} comparisons agree with the reference ({elapsed:.1f} s)")
    return 0


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _fraction(error: float, bound: float) -> float:
    """How much of its bound an error uses (a bound of 0 asks for bit-identical results)."""
    if bound > 0:
        return error / bound
    return 0.0 if error == 0 else float("inf")
