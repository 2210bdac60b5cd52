"""The mask arithmetic of a partial convolution: reading a mask, masking the input, and the
``count``, ``ratio`` and ``update`` of the formula in the layers' docstrings
(``help(torch_pconv.PConv2d)``), which is stated there once.

A mask holds 1 for valid pixels and 0 for holes. A float mask enters NVIDIA's arithmetic as it is
(fractional values included); a bool or integer mask means nonzero is valid, so that a 0/255
image mask works as it is, in eager, compiled, exported and traced code alike. Every layout is
counted on one channel: a map of valid input entries per pixel, ``(B|1, 1, *S)``, at NVIDIA's
scale (``C_in`` entries a pixel for a multi-channel mask or one shared by all channels, 1 for
NVIDIA's single-channel mask), so that its ratios round as NVIDIA's do.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ._quirks import autocast_enabled, autocast_off, compiling_or_tracing

# NVIDIA's eps. It only matters where the count is 0, and there the ratio is selected to 0, but it
# is kept in the division so that float64 results agree with the reference (1e-8 is not
# negligible against 1/count in float64).
EPS = 1e-8

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_SAME_SIZE_INT = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


class PConvError(TypeError, ValueError):
    """Bad input to a partial convolution, or to a layer's 0.1.1 accessors (``set_weight``,
    ``set_bias``): the wrong type, rank, shape, dtype or device. The message names the argument,
    what was expected and what came.

    Both a TypeError (what torch-pconv 0.1.1 raised, and what its users catch) and a ValueError.

    Examples:
        >>> import torch
        >>> from torch_pconv import PConv2d, PConvError
        >>> layer = PConv2d(3, 4, kernel_size=3)
        >>> try:
        ...     layer(torch.ones(1, 3, 8))  # a 2-D layer takes a 4-D input
        ... except PConvError as error:
        ...     print(error)
        input: expected a 4-D tensor (B, C, H, W), got shape (1, 3, 8)
        >>> [issubclass(PConvError, base) for base in (TypeError, ValueError)]
        [True, True]
    """


class MaskLayout(Enum):
    """How a mask's shape maps onto the input's channels."""

    NONE = "none"  # no mask: partial-convolution-based padding
    SHARED = "shared"  # (B|1, *S): one mask for every input channel (torch-pconv 0.1.1)
    SINGLE = "single"  # (B|1, 1, *S) with multi_channel=False (NVIDIA's default)
    MULTI = "multi"  # (B|1, C_in, *S) with multi_channel=True (NVIDIA's multi-channel)


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_input(input: Tensor, spatial_dims: int, in_channels: int, dtype: torch.dtype) -> None:
    """Raise PConvError unless ``input`` is a batched floating-point tensor that fits the layer:
    its rank, ``in_channels`` channels, and the layer's ``dtype`` (outside autocast)."""
    if not isinstance(input, Tensor):
        raise PConvError(f"input: expected a torch.Tensor, got {type(input).__name__}")
    if input.dim() != spatial_dims + 2:
        names = ("L", "H, W", "D, H, W")[spatial_dims - 1]
        raise PConvError(f"input: expected a {spatial_dims + 2}-D tensor (B, C, {names}), got shape {_shape(input)}")
    if not input.is_floating_point():
        raise PConvError(f"input: expected a floating-point dtype, got {input.dtype}")
    if input.shape[1] != in_channels:
        raise PConvError(f"input: expected {in_channels} channels (in_channels), got shape {_shape(input)}")
    if input.dtype != dtype and not autocast_enabled(input.device.type):
        raise PConvError(f"input: expected dtype {dtype} (the layer's parameters), got {input.dtype}")


def read_layout(mask: Tensor, input: Tensor, in_channels: int, multi_channel: bool) -> MaskLayout:
    """Validate ``mask`` against ``input`` and return its layout; raise PConvError if it fits none."""
    if not isinstance(mask, Tensor):
        raise PConvError(f"mask_in: expected a torch.Tensor or None, got {type(mask).__name__}")
    if mask.device != input.device:
        raise PConvError(f"mask_in: expected a tensor on {input.device} (the input's device), got {mask.device}")
    if mask.dtype.is_complex:  # the dtype's flag, not Tensor.is_complex(): dynamo 2.1 cannot trace the method
        raise PConvError(f"mask_in: expected a float, bool or integer mask, got dtype {mask.dtype}")
    spatial = input.shape[2:]
    n = len(spatial)
    if mask.dim() == n + 1:
        layout, channels = MaskLayout.SHARED, None
    elif mask.dim() == n + 2:
        layout, channels = (MaskLayout.MULTI if multi_channel else MaskLayout.SINGLE), mask.shape[1]
    else:
        raise PConvError(
            f"mask_in: expected a {n + 1}-D (B, *S) or {n + 2}-D (B, C, *S) mask for a "
            f"{n + 2}-D input of shape {_shape(input)}, got shape {_shape(mask)}"
        )
    if mask.shape[-n:] != spatial:
        raise PConvError(
            f"mask_in: spatial size {tuple(mask.shape[-n:])} does not match the input's {tuple(spatial)} "
            f"(mask {_shape(mask)}, input {_shape(input)})"
        )
    if mask.shape[0] != input.shape[0] and 1 not in (mask.shape[0], input.shape[0]):
        raise PConvError(
            f"mask_in: batch size {mask.shape[0]} does not match the input's batch size {input.shape[0]} "
            f"(expected {input.shape[0]} or 1 to broadcast; an input of batch 1 broadcasts over the masks)"
        )
    if layout is MaskLayout.SINGLE and channels != 1:
        hint = " (pass multi_channel=True for a per-channel mask)" if channels == in_channels else ""
        raise PConvError(
            f"mask_in: expected 1 channel with multi_channel=False, got {channels} channels "
            f"in a mask of shape {_shape(mask)}{hint}"
        )
    if layout is MaskLayout.MULTI and channels != in_channels:
        raise PConvError(
            f"mask_in: expected {in_channels} channels (in_channels) with multi_channel=True, "
            f"got {channels} channels in a mask of shape {_shape(mask)}"
        )
    return layout


def count_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the counts and ratios are computed in: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_dtype(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    """``tensor`` in ``dtype``. Asked first because ``Tensor.to`` costs about 2 µs even when it has
    nothing to do, the check 0.2 (torch 2.13, CPU), and a forward makes several."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def keep(mask: Tensor) -> Tensor:
    """Which entries of ``mask`` let the input through: nonzero ones (a bool mask as it is). The
    one statement of it: the counts, the masking and its gradient all ask here. A conversion, which
    is ``mask != 0`` (NaN included) at less than half its cost (1.8 µs against 4.4 on a small mask)."""
    return mask if mask.dtype == torch.bool else mask.bool()


def _like_input_layout(mask: Tensor, input: Tensor) -> Tensor:
    """``mask`` laid out channels last where ``input`` is: elementwise results are laid out like
    their first operand that is not broadcast, so a channels-last input would otherwise give a
    contiguous masked input (and a slower convolution)."""
    if input.dim() not in (4, 5) or input.is_contiguous():  # no dict lookup: dynamo 2.1 cannot trace one
        return mask
    # Asked through a permute, which vmap supports, where it does not support
    # is_contiguous(memory_format=...).
    if input.movedim(1, -1).is_contiguous():
        return mask.contiguous(memory_format=torch.channels_last if input.dim() == 4 else torch.channels_last_3d)
    return mask


def mask_input(input: Tensor, mask: Tensor) -> Tensor:
    """``input * mask``, except that what lies under a 0 never gets through, not even NaN or inf.

    Differentiable in the input in every mode (reverse and forward AD, ``torch.func`` transforms,
    compilers); the mask is a constant (see :func:`mask_input_differentiable_mask`).

    Shape:
        mask: broadcastable to ``input``; float (0/1 or fractional), bool, or integer (nonzero is valid).
    """
    mask = _like_input_layout(mask, input)
    masked = torch.where(keep(mask), input, 0)  # a tensor of its own: scaled in place
    return masked.mul_(as_dtype(mask, input.dtype)) if mask.is_floating_point() else masked


def mask_input_differentiable_mask(input: Tensor, mask: Tensor) -> Tensor:
    """:func:`mask_input` for a float mask that carries a derivative (requires grad, or a tangent):
    the mask's derivative is NVIDIA's, that of ``input * mask``, under holes too (where the input
    is finite), while the forward there is 0 even where the input is not finite."""
    mask = as_dtype(_like_input_layout(mask, input), input.dtype)
    return torch.where(keep(mask), input * mask, input.nan_to_num(0.0, 0.0, 0.0) * mask)


def mask_input_constant(input: Tensor, mask: Tensor) -> Tensor:
    """:func:`mask_input` for tensors that carry no gradient or tangent: the masked input of the
    autograd Function's forward (whose rules give the derivatives), of its backward where nothing
    records it, and of the direct forward without grad or a tangent. Bit operations, which run as
    fast as a multiply on the CPU, where ``torch.where`` is up to five times slower (a bool mask
    on a (2, 64, 64, 64) input: 0.33 ms against 1.69, torch 2.13, 2 cores). Bit views have no
    derivative, and torch 2.1's vmap cannot batch them: nowhere else may use this (under
    torch.func transforms the layer runs plain ops).
    """
    words = _SAME_SIZE_INT.get(input.dtype)
    if words is None:  # no integer type of the input's size
        return mask_input(input, mask)
    mask = _like_input_layout(mask, input)
    # NaN * 0 is NaN, so a multiply alone lets NaN and inf through. AND-ing the input's bits with
    # all-ones (keep) or all-zeros (hole) words selects exactly. A bool viewed as int8 and
    # negated is -1 or 0, which widens to all-ones or all-zeros words of any size.
    bits = keep(mask).view(torch.int8).neg()
    if not mask.is_floating_point():
        return (input.view(words) & bits).view(input.dtype)
    masked = input * as_dtype(mask, input.dtype)  # fractional masks scale what they let through
    masked.view(words).bitwise_and_(bits)
    return masked


def mask_gradient(grad: Tensor, mask: Tensor, in_place: bool) -> Tensor:
    """The input gradient through :func:`mask_input`: ``grad`` times the mask's entries where they
    let the input through (``grad`` is finite, so a product selects, and a product has a
    derivative in every mode, where bits have none). In place when ``grad`` is the caller's own."""
    factor = mask if mask.is_floating_point() else keep(mask)
    return grad.mul_(factor) if in_place else grad * factor


class Windows(Protocol):
    """What the counts depend on: a partial convolution's geometry and flag (its layer)."""

    in_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: str | tuple[int, ...]
    dilation: tuple[int, ...]
    multi_channel: bool


def ratio_and_update(mask: Tensor | None, layout: MaskLayout, windows: Windows, like: Tensor) -> tuple[Tensor, Tensor]:
    """NVIDIA's mask ratio and update mask: ``ratio`` and ``update`` of the formula in the layers'
    docstrings (``help(torch_pconv.PConv2d)``), for ``mask`` of ``layout`` (None: all valid).

    The mask is collapsed to one channel of valid-entry counts per pixel, at NVIDIA's scale for
    the layout, and its windows are counted by one small convolution in float32 or wider (float64
    for a float64 ``like``), so the counts are exact integers for 0/1 masks whatever the input's
    dtype, and the division rounds as the reference's does.

    Shape:
        mask: ``(B|1, *S)`` (SHARED), ``(B|1, 1, *S)`` (SINGLE), ``(B|1, C_in, *S)`` (MULTI);
        like: the input ``(B, C_in, *S)``; returns ratio and update ``(B|1, 1, *S')``.
    """
    dtype = count_dtype(like.dtype)
    multiplicity = _channels_per_pixel(layout, windows.in_channels, windows.multi_channel)
    if mask is None:
        valid = torch.full((1, 1, *like.shape[2:]), multiplicity, dtype=dtype, device=like.device)
    else:
        valid = _valid_map(mask.detach(), layout, windows.in_channels, dtype)
    count = _count(valid, windows)
    return ratio_from_counts(count, multiplicity * math.prod(windows.kernel_size))


def _valid_map(mask: Tensor, layout: MaskLayout, in_channels: int, dtype: torch.dtype) -> Tensor:
    """The number of valid input entries at each pixel, ``(B|1, 1, *S)`` in ``dtype``: summing a
    multi-channel mask over its channels is what NVIDIA's ``(C_out, C_in, *k)`` ones kernel does
    for every output channel, exact for 0/1 masks; a SHARED mask stands for ``C_in`` equal channels."""
    if not mask.is_floating_point():
        mask = keep(mask)  # bool and integer masks: nonzero is valid (a 0/255 PNG mask works as is)
    if layout is MaskLayout.SHARED:
        return as_dtype(mask.unsqueeze(1), dtype) * in_channels
    if layout is MaskLayout.MULTI:
        return mask.sum(1, keepdim=True, dtype=dtype)
    return as_dtype(mask, dtype)


def _count(valid: Tensor, windows: Windows) -> Tensor:
    """The sum of ``valid`` under each window, with zero padding whatever the layer's padding_mode
    (padded pixels are holes, as in NVIDIA's layer). Nothing is recorded (``valid`` is made from
    a detached mask); autocast is turned off where it is on (CPU autocast would count in bfloat16,
    where counts above 256 are inexact)."""
    ones = torch.ones((1, 1, *windows.kernel_size), dtype=valid.dtype, device=valid.device)
    conv = _CONV[len(windows.kernel_size)]
    stride, padding, dilation = windows.stride, windows.padding, windows.dilation
    if not autocast_enabled(valid.device.type):
        return conv(valid, ones, None, stride, padding, dilation)
    with autocast_off(valid.device.type):
        return conv(valid, ones, None, stride, padding, dilation)


def _channels_per_pixel(layout: MaskLayout, in_channels: int, multi_channel: bool) -> int:
    """How many input entries one pixel of the valid map stands for, as NVIDIA counts them.

    NVIDIA's multi-channel layer sums its mask over all ``C_in`` channels; its single-channel
    layer counts a pixel once. A SHARED mask is NVIDIA's multi-channel mask, expanded.
    """
    if layout is MaskLayout.SINGLE or (layout is MaskLayout.NONE and not multi_channel):
        return 1
    return in_channels


def ratio_from_counts(count: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """``ratio`` and ``update`` from the window counts and the window size, both at NVIDIA's scale."""
    update = count.clamp(0, 1)
    if compiling_or_tracing():
        # A select, not NVIDIA's window / eps * 0: ONNX exporters fold the + eps away (the graph
        # holds Reciprocal(count)), which gives inf * 0 = NaN where a window holds no valid entry.
        return torch.where(count > 0, window / (count + EPS) * update, 0.0), update
    # NVIDIA's ops in its order (window / t is t.reciprocal() * window), in place: three fewer
    # small ops a call than the select, which gives the same values in eager (1e8·window·0 = 0).
    return (count + EPS).reciprocal_().mul_(window).mul_(update), update
