"""The masked convolution of a partial convolution, with a backward that keeps what it must and no more.

It computes the ``output`` line of the formula in the layers' docstrings (``help(torch_pconv.PConv2d)``),
given ``ratio`` and ``update`` (see ``_masks``); ``mask``, ``ratio`` and ``update`` are constants
here (the layer takes plain ops for a mask that carries a derivative). Left to autograd, the
composite keeps the masked input, a full-size copy, for the weight gradient. :class:`PartialConvFunction`
keeps the input instead (which the layer before holds anyway, as a ReLU keeps its output), the
compact mask, the ratio, the update and the weight, all through ``ctx.save_for_backward``: autograd's
in-place checks and the caller's saved-tensor hooks (offloading, checkpointing) apply to them as to
any op. Its backward rebuilds the masked input only for the weight gradient and frees it before
the input gradient is computed, so it holds one full-size temporary (``grad · ratio``) beyond what
the convolution's own backward holds. The backward is made of differentiable ops, so double
backward works; ``jvp`` gives forward-mode AD (``torch.autograd.forward_ad``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ._masks import _CONV, as_dtype, mask_gradient, mask_input, mask_input_constant
from ._quirks import dual_level_open


class Geometry(NamedTuple):
    """The convolution's stride, explicit zero padding, dilation and groups."""

    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int

    def conv(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return _CONV[input.dim() - 2](input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


Conv = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def partial_conv(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor | None,
    ratio: Tensor,
    update: Tensor,
    conv: Conv,
    legacy: bool = False,
    masking: Callable[[Tensor, Tensor], Tensor] = mask_input,
) -> Tensor:
    """The forward, as plain torch ops: what the Function computes, and what compilers, tracers,
    exporters and the paths the Function does not model record. ``conv(input, weight, bias)`` is
    the weight convolution (a layer's ``_conv_forward``, with its padding mode); ``masking`` is
    :func:`~torch_pconv._masks.mask_input` (differentiable in the input in every mode), its twin
    for a mask that carries a derivative, or its bit-operation twin in the Function's forward.

    Shape:
        input ``(B, C_in, *S)``; mask ``None`` (all valid) or broadcastable to the input;
        ratio and update ``(B|1, 1, *S')``, in float32 or wider; returns ``(B, C_out, *S')``.
    """
    masked = input if mask is None else masking(input, mask)
    # The products round once into the output: the ratio stays in float32 or wider (a float16
    # ratio would overflow for windows above 65504).
    if legacy:  # NVIDIA's order of operations, bit for bit: the bias goes in and comes out again
        output = conv(masked, weight, bias)
        if bias is None:
            return output.mul_(ratio)
        bias_view = _channel_view(bias, output)
        return output.sub_(bias_view).mul_(ratio).add_(bias_view).mul_(update)
    output = conv(masked, weight, None)  # (conv + b - b) would only add rounding
    if bias is None:
        return output.mul_(ratio)
    # NVIDIA multiplies by the update twice when there is a bias: a no-op for 0/1 masks, kept so
    # that fractional masks follow its arithmetic. Bias and update in the output's dtype (a no-op
    # but under autocast): torch 2.1 fails an internal assert on a mixed-dtype in-place addcmul.
    dtype = output.dtype
    return output.mul_(ratio * update).addcmul_(as_dtype(_channel_view(bias, output), dtype), as_dtype(update, dtype))


def _channel_view(bias: Tensor, like: Tensor) -> Tensor:
    return bias.view(1, -1, *(1,) * (like.dim() - 2))


class PartialConvFunction(torch.autograd.Function):
    """:func:`partial_conv` with a backward that keeps the input, not the masked input.

    ``PartialConvFunction.apply(input, weight, bias, mask, ratio, update, geometry, legacy)``;
    gradients flow to input, weight and bias.
    """

    # forward takes ctx (no setup_context): Function.apply then skips binding its arguments to
    # forward's signature, 35 µs of a 50 µs apply (torch 2.13, a tiny input). What a setup_context
    # would add, torch.func support, the layer never asks of it: under torch.func transforms it
    # runs plain ops (see _quirks.functorch_transform_active).
    @staticmethod
    def forward(
        ctx: Any,
        input: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        mask: Tensor | None,
        ratio: Tensor,
        update: Tensor,
        geometry: Geometry,
        legacy: bool,
    ) -> Tensor:
        ctx.save_for_backward(input, weight, mask, ratio, update)
        ctx.save_for_forward(input, weight, mask, ratio, update)
        ctx.geometry = geometry
        ctx.has_bias = bias is not None
        # Its inputs carry no gradient or tangent here (the rules below give them): the fast masking.
        return partial_conv(input, weight, bias, mask, ratio, update, geometry.conv, legacy, mask_input_constant)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        input, weight, mask, ratio, update = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        geometry: Geometry = ctx.geometry
        grad_input = grad_weight = grad_bias = None
        # Recorded when the caller differentiates the gradients (create_graph): then operands
        # passed for their shape alone are detached, so that no gradient flows through them, and
        # the masking is differentiable, as it is where a dual level is open (tensors may carry
        # tangents). Elsewhere the bit masking, as the forward's: torch.where is up to five times
        # slower on the CPU (k3 at the bench's default size: 1.31× nn.Conv2d forward+backward with
        # torch.where, 1.1-1.2× with bits).
        recorded = torch.is_grad_enabled()
        masking = mask_input if recorded or dual_level_open() else mask_input_constant
        scaled = _times(grad, _conv_scale(ratio, update, ctx.has_bias))
        if needs_weight:
            # The masked input, rebuilt for this product only and freed before the input gradient
            # is made.
            masked = input if mask is None else masking(input, mask)
            grad_weight = _conv_backward(scaled, masked, weight.detach() if recorded else weight, geometry, True)
            del masked
        if needs_input:
            grad_input = _conv_backward(scaled, input.detach() if recorded else input, weight, geometry, False)
            if mask is not None:  # in place unless recorded: the tensor is ours
                grad_input = mask_gradient(grad_input, mask, in_place=not recorded)
        del scaled
        if needs_bias:  # the sum autograd takes through the forward's addcmul, once scaled is gone
            grad_bias = _times(grad, update).sum([d for d in range(grad.dim()) if d != 1])
        return grad_input, grad_weight, grad_bias, None, None, None, None, None

    @staticmethod
    def jvp(ctx: Any, d_input: Tensor | None, d_weight: Tensor | None, d_bias: Tensor | None, *_: Any) -> Tensor:
        # The output is bilinear in (input, weight) and linear in bias: the tangent is exact.
        input, weight, mask, ratio, update = ctx.saved_tensors
        geometry: Geometry = ctx.geometry
        tangent: Tensor | None = None
        if d_input is not None:
            tangent = geometry.conv(d_input if mask is None else mask_input(d_input, mask), weight, None)
        if d_weight is not None:
            term = geometry.conv(input if mask is None else mask_input(input, mask), d_weight, None)
            tangent = term if tangent is None else tangent + term
        if tangent is not None:
            tangent = _times(tangent, _conv_scale(ratio, update, ctx.has_bias))
        if d_bias is not None:
            term = _channel_view(d_bias, input) * update.to(d_bias.dtype)
            tangent = term if tangent is None else tangent + term
        assert tangent is not None  # jvp runs only when some input has a tangent
        return tangent


def _conv_scale(ratio: Tensor, update: Tensor, has_bias: bool) -> Tensor:
    """d output / d conv: ratio · update with a bias (the legacy order's + b - b cancels), else the
    ratio alone, as NVIDIA's layer computes them. d output / d bias is the update."""
    return ratio * update if has_bias else ratio


def _times(t: Tensor, factor: Tensor) -> Tensor:
    """``t · factor`` in ``t``'s dtype, rounded once (a float32 factor on a bfloat16 tensor is
    applied in float32, as the forward's in-place product is), as a tensor of its own."""
    if factor.dtype == t.dtype:
        return t * factor
    return t.clone().mul_(factor)


def _conv_backward(grad: Tensor, input: Tensor, weight: Tensor, geometry: Geometry, weight_grad: bool) -> Tensor:
    """One of the convolution's gradients: the weight's (``weight_grad``) or the input's."""
    dims = input.dim() - 2
    grads = torch.ops.aten.convolution_backward(
        grad,
        input,
        weight,
        None,
        list(geometry.stride),
        list(geometry.padding),
        list(geometry.dilation),
        False,
        [0] * dims,
        geometry.groups,
        [not weight_grad, weight_grad, False],
    )
    result: Tensor = grads[1] if weight_grad else grads[0]
    return result
