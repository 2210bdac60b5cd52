"""Equivalence of torch_pconv's layers with NVIDIA's reference: the comparison and its tolerances.

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

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["Comparison", "compare", "relative_error"]


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
    """Our returned mask in the reference's layout: a (B, *S') mask is its channel-expanded mask."""
    if mask.dim() == like.dim() - 1 and mask.shape == like.shape[:1] + like.shape[2:]:
        return mask.unsqueeze(1).expand_as(like)
    return mask  # of another shape, torch.equal tells them apart
