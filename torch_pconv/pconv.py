"""Partial convolutions (Liu et al., 2018) as subclasses of ``nn.Conv1d``, ``nn.Conv2d`` and ``nn.Conv3d``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad
from torch.nn.common_types import _size_1_t, _size_2_t, _size_3_t
from torch.nn.modules.conv import _ConvNd

from ._function import Geometry, PartialConvFunction, partial_conv
from ._masks import (
    MaskLayout,
    PConvError,
    check_input,
    count_dtype,
    mask_input_constant,
    mask_input_differentiable_mask,
    ratio_and_update,
    read_layout,
)
from ._quirks import (
    autocast_dtype,
    autocast_enabled,
    autocast_off,
    compiling_or_tracing,
    dispatch_mode_active,
    dual_level_open,
    functorch_transform_active,
)

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11; only for the checker, not at run time

PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]

__all__ = ["PConv1d", "PConv2d", "PConv3d", "PartialConv1d", "PartialConv2d", "PartialConv3d"]

# Distinct spatial sizes (times devices, dtypes, inference modes) whose mask=None ratio is kept.
_CACHE_SIZE = 8

# The input size (entries) from which the autograd Function masks the convolution when autograd
# records. The Function saves memory (no masked copy of the input is kept for backward), which a
# small input has little of; below this size autograd's own ops are faster, since the Function's
# apply and its Python backward cost more than the copy. Measured side by side (3×3, one mask
# channel, torch 2.13, 1 CPU thread, forward+backward, plain ops ÷ Function): 0.69 at 2,048
# entries, 0.78 at 8,192, 0.90 at 16,384, 0.97 at 65,536, 1.05 at 262,144.
_FUNCTION_FROM = 65_536

# The pieces that the six class docstrings share, inserted with str.format as torch/nn/modules/conv.py
# inserts its notes: each class's help() is complete, and each piece is written once. "formula" is
# the one statement of what a partial convolution computes; other docstrings point to it as "the
# formula in the layers' docstrings" (help(torch_pconv.PConv2d)).
_NOTES = {
    "formula": """With a mask of 1 (valid) and 0 (hole), at each output position:

        count  = sum of the mask under the window
        update = clamp(count, 0, 1)
        ratio  = window_size / (count + 1e-8) · update   if count > 0
               = 0                                       if count = 0
        output = conv(input ⊙ mask) · ratio · update + bias · update

    ``conv`` is the layer's convolution without its bias, and ``input ⊙ mask`` is the elementwise
    product, which is 0 under a hole even where the input is NaN or inf. ``window_size`` is the
    number of mask entries a window spans: ``C_in · prod(kernel_size)`` for a mask of ``C_in``
    channels or a mask without a channel dimension (the same mask for every channel, counted once
    per channel), ``prod(kernel_size)`` for a one-channel mask. ``count`` comes from a no-grad
    convolution in float32 or wider: exact for a 0/1 mask, whatever the input's dtype. ``update``
    is the mask for the next layer. With ``bias=False``, ``output = conv(input ⊙ mask) · ratio``.
    This is NVIDIA's arithmetic, operation for operation; the ``· update`` factors change nothing
    for a 0/1 mask, only for a fractional one. Padding counts as holes, and ``mask_in=None`` is a
    mask of ones: partial-convolution-based padding. A float mask may hold fractions; in a bool
    or integer mask, nonzero is valid. ``count``, ``ratio`` and ``update`` are constants; a float
    mask that requires grad gets NVIDIA's gradient, through ``input ⊙ mask`` alone.""",
    "args": """in_channels (int): Number of channels in the input.
        out_channels (int): Number of channels produced by the convolution.
        kernel_size (int or tuple): Size of the convolving kernel.
        stride (int or tuple, optional): Stride of the convolution. Default: 1
        padding (int or tuple or str, optional): Zero padding added to all sides of the input, or
            ``'valid'`` or ``'same'``. Padded positions count as holes. Default: 0
        dilation (int or tuple, optional): Spacing between kernel elements. Default: 1
        groups (int, optional): Number of blocked connections from input to output channels.
            Default: 1
        bias (bool, optional): If ``True``, adds a learnable bias, which the update mask scales.
            Default: ``True``
        padding_mode (str, optional): ``'zeros'``, ``'reflect'``, ``'replicate'`` or
            ``'circular'``: how the input of the weight convolution is padded (the mask is always
            zero-padded). Default: ``'zeros'``
        device (torch.device, optional): Where the parameters are made. Default: None
        dtype (torch.dtype, optional): The parameters' dtype. Default: None
        multi_channel (bool, optional): Keyword-only. A mask with a channel dimension has ``C_in``
            channels, one per input channel (NVIDIA's flag). Default: ``False``""",
    "legacy_behaviour": """legacy_behaviour (bool, optional): Keyword-only. Add the bias inside the convolution and
            take it out again, as NVIDIA's layer does, to match its float32 forward bit for bit
            (for 0/1 masks); the formula is the same. Default: ``False``""",
    "raises": """ValueError: Arguments that ``nn.Conv*d`` rejects, such as ``groups`` that does not
            divide both channel counts. ``PConvError`` comes from ``forward``, for a bad input or
            mask.""",
}


def _apply(*args: Any) -> Tensor:
    output: Tensor = PartialConvFunction.apply(*args)  # type: ignore[no-untyped-call]
    return output


def _autocast_cast(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    """What autocast does to a convolution's operand: float32 (not float64) goes to ``dtype``."""
    return tensor.to(dtype) if tensor.is_floating_point() and tensor.dtype != torch.float64 else tensor


def _cacheable(input: Tensor) -> bool:
    """Whether mask=None ratios for ``input`` may be taken from, and kept in, the cache.

    Only for a plain tensor with storage, outside any compiler, tracer or dispatch mode: a
    compiler must see (and fold) the computation; a tracer must record it (its sizes are tensors
    that would key an entry never hit again); a FakeTensorMode or a subclass would leave tensors
    without data in the cache, and the next eager call would compute with them; a torch.func
    transform would leave its wrapped tensors there, to escape it.
    """
    return (
        not compiling_or_tracing()
        and type(input) is Tensor
        and not input.is_meta
        and not dispatch_mode_active()
        and not functorch_transform_active()
    )


def _one_channel_for_all(mask: Tensor) -> bool:
    """Whether ``mask`` (B, C, *S) is one channel expanded (a stride-0 channel dimension), which
    only the tensor itself proves: a tag or a version count is not, since ``.data`` and numpy
    writes leave no trace. Not under a tracer or exporter, whose graph keeps no guard on strides
    and would serve a mask of C channels of its own the path of one."""
    return mask.stride(1) == 0 and not compiling_or_tracing()


def _carries_derivative(tensor: Tensor) -> bool:
    """Whether a derivative may flow to ``tensor``: it requires grad (with grad on), or it may
    carry a forward-mode tangent (a dual tensor, or any tensor under a torch.func transform)."""
    if tensor.requires_grad and torch.is_grad_enabled():
        return True
    if compiling_or_tracing():  # what a compiler sees of a tangent is requires_grad
        return False
    return functorch_transform_active() or _has_tangent(tensor)


def _has_tangent(tensor: Tensor | None) -> bool:
    """Whether ``tensor`` is a dual tensor of ``torch.autograd.forward_ad`` (about 1 µs to ask)."""
    return (
        tensor is not None and dual_level_open() and forward_ad.unpack_dual(tensor).tangent is not None  # type: ignore[no-untyped-call]
    )


class _PartialConvNd(_ConvNd):
    """The partial logic of PConv1d/2d/3d, written once. Not a layer on its own."""

    multi_channel: bool
    return_mask: bool
    legacy_behaviour: bool
    _ratio_cache: dict[tuple[Any, ...], tuple[Tensor, Tensor, bool]]
    _defaults: ClassVar[dict[str, bool]] = {"multi_channel": False, "return_mask": True, "legacy_behaviour": False}
    # Whether a multi-channel update mask is returned as an expanded view of one channel (cheap)
    # or as a tensor of its own (NVIDIA's, for the drop-in classes).
    _expanded_mask: ClassVar[bool] = True

    if TYPE_CHECKING:

        def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor: ...

    def _init_partial(self, multi_channel: bool, return_mask: bool, legacy_behaviour: bool) -> None:
        # Read with bool(), as NVIDIA's layer does: any truthy or falsy value (1, None, numpy or
        # torch bools) means what it means there.
        self.multi_channel = bool(multi_channel)
        self.return_mask = bool(return_mask)
        self.legacy_behaviour = bool(legacy_behaviour)
        # mask=None ratios, keyed on everything they depend on. A plain dict: replicas made by
        # nn.parallel.replicate share it, which is correct because the key holds the device.
        self._ratio_cache = {}

    def _partial_forward(self, input: Tensor, mask_in: Tensor | None) -> Tensor | tuple[Tensor, Tensor]:
        # Each parameter is read once: a parametrization (spectral_norm, weight_norm) runs once per
        # forward, as in nn.ConvNd.
        weight, bias = self.weight, self.bias
        check_input(input, len(self.kernel_size), self.in_channels, weight.dtype)
        mask: Tensor | None = None
        differentiable = False
        if mask_in is None:
            layout = MaskLayout.NONE
            ratio, update, ones = self._padding_ratio(input)
            if ones and not (self.legacy_behaviour and bias is not None):
                # Every window is whole (no padding) and its ratio, window / (window + 1e-8), rounds
                # to 1 (float32 and lower precisions): the partial convolution is the convolution
                # (NVIDIA's multiplies it by exactly 1), at nn.ConvNd's cost. An unpadded 1×1
                # convolution of pd_resnet50, say (36 of its 53). Legacy with a bias keeps NVIDIA's
                # (conv - b) · 1 + b, which can round apart from conv + b.
                output = self._conv_forward(input, weight, bias)
                return (output, self._returned_mask(update, layout, input)) if self.return_mask else output
        else:
            layout = read_layout(mask_in, input, self.in_channels, self.multi_channel)
            if input.shape[0] == 1 < mask_in.shape[0]:  # a batch of 1 under a batch of masks, as NVIDIA broadcasts
                input = input.expand(mask_in.shape[0], *input.shape[1:])
            # The mask is a constant of the counts. A float mask that carries a derivative gets
            # NVIDIA's (through the masking of the input alone), in reverse and forward mode.
            differentiable = mask_in.is_floating_point() and _carries_derivative(mask_in)
            mask = mask_in if differentiable else mask_in.detach()
            counted = layout
            if layout is MaskLayout.MULTI and mask.shape[1] > 1 and _one_channel_for_all(mask):
                # One channel for all, as PConvNd returns it (an expanded view, which no one can
                # write to): the same mask for every channel, as a (B, *S) mask says. Count and
                # apply it once. A mask of C channels of its own is counted as NVIDIA does.
                mask, counted = mask[:, 0], MaskLayout.SHARED
            ratio, update = ratio_and_update(mask, counted, self, input)
            if counted is MaskLayout.SHARED:
                mask = mask.unsqueeze(1)
        output = self._masked_conv(input, weight, bias, mask, ratio, update, differentiable)
        if not self.return_mask:
            return output
        return output, self._returned_mask(update, layout, input)

    def _masked_conv(
        self,
        input: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        mask: Tensor | None,
        ratio: Tensor,
        update: Tensor,
        differentiable_mask: bool,
    ) -> Tensor:
        """The partial convolution of ``input`` under ``mask`` (None, or broadcastable to it)."""
        # The plain ops for: a mask that carries a derivative (an input the Function does not
        # differentiate); compilers, tracers and exporters (a compiler then chooses what to keep
        # for backward); padding modes other than zeros, which pad inside nn.ConvNd, where the
        # Function does not model them; torch.func transforms, which nest where a Function's
        # rules do not (see _quirks); and inputs too small for the Function's saving to matter.
        # Everything else takes the Function, or, with neither grad nor a forward-mode tangent,
        # runs its forward directly.
        if differentiable_mask:
            conv, legacy, masking = self._conv_forward, self.legacy_behaviour, mask_input_differentiable_mask
            return partial_conv(input, weight, bias, mask, ratio, update, conv, legacy, masking)
        geometry = self._geometry()
        if geometry is None or compiling_or_tracing() or functorch_transform_active():
            return partial_conv(input, weight, bias, mask, ratio, update, self._conv_forward, self.legacy_behaviour)
        device = input.device.type
        if not autocast_enabled(device):
            if torch.is_grad_enabled() or any(_has_tangent(t) for t in (input, weight, bias)):
                if input.numel() < _FUNCTION_FROM:
                    return partial_conv(input, weight, bias, mask, ratio, update, geometry.conv, self.legacy_behaviour)
                return _apply(input, weight, bias, mask, ratio, update, geometry, self.legacy_behaviour)
            # Without grad or a tangent the Function has nothing to do but cost its apply: the
            # same forward, directly (inference: 100-150 µs less a call at the fixed config's size).
            return partial_conv(
                input, weight, bias, mask, ratio, update, geometry.conv, self.legacy_behaviour, mask_input_constant
            )
        # Autocast runs a convolution in its lower precision: cast as it would, then run the
        # Function without it, so that its backward sees the dtypes its forward saw.
        dtype = autocast_dtype(device)
        if dtype is None:  # pragma: no cover - a device whose autocast dtype this torch does not tell
            return partial_conv(input, weight, bias, mask, ratio, update, self._conv_forward, self.legacy_behaviour)
        input, weight = _autocast_cast(input, dtype), _autocast_cast(weight, dtype)
        bias = None if bias is None else _autocast_cast(bias, dtype)
        with autocast_off(device):
            return _apply(input, weight, bias, mask, ratio, update, geometry, self.legacy_behaviour)

    def _geometry(self) -> Geometry | None:
        """Stride, explicit zero padding, dilation and groups; None where padding is not zeros on
        both sides alike (another padding_mode, or 'same' with an even window)."""
        if self.padding_mode != "zeros":
            return None
        padding = self.padding
        if padding == "valid":
            padding = (0,) * len(self.kernel_size)
        elif padding == "same":
            totals = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size, strict=True)]
            if any(total % 2 for total in totals):
                return None
            padding = tuple(total // 2 for total in totals)
        assert not isinstance(padding, str)
        return Geometry(tuple(self.stride), tuple(padding), tuple(self.dilation), self.groups)

    def _padding_ratio(self, input: Tensor) -> tuple[Tensor, Tensor, bool]:
        """Ratio and update for mask=None, and whether both are all ones: a function of the spatial
        size alone, so cached (and asked once per entry: on CUDA, one synchronisation)."""
        if not _cacheable(input):
            return (*ratio_and_update(None, MaskLayout.NONE, self, input), False)
        geometry = (self.kernel_size, self.stride, self.padding, self.dilation, self.in_channels, self.multi_channel)
        key = (input.shape[2:], input.device, count_dtype(input.dtype), torch.is_inference_mode_enabled(), geometry)
        cached = self._ratio_cache.get(key)
        if cached is None:
            ratio, update = ratio_and_update(None, MaskLayout.NONE, self, input)
            cached = ratio, update, bool((ratio == 1).all() and (update == 1).all())
            if len(self._ratio_cache) >= _CACHE_SIZE:
                self._ratio_cache.pop(next(iter(self._ratio_cache)), None)
            self._ratio_cache[key] = cached
        return cached

    def _returned_mask(self, update: Tensor, layout: MaskLayout, input: Tensor) -> Tensor:
        """The update mask in the layout the mask came in, in the input's dtype."""
        # A copy: the update is cached (mask None) or saved for backward, and the caller may edit it.
        update = update.to(input.dtype, copy=True)
        if layout is MaskLayout.SHARED:
            return update.squeeze(1)
        if layout is MaskLayout.MULTI or (layout is MaskLayout.NONE and self.multi_channel):
            batch = input.shape[0] if layout is MaskLayout.NONE else update.shape[0]
            expanded = update.expand(batch, self.out_channels, *update.shape[2:])
            # NVIDIA's layer returns a tensor of its own, which its users reshape and edit in place.
            return expanded if self._expanded_mask else expanded.contiguous()
        return update

    def get_weight(self) -> Tensor:
        """The weight parameter (torch-pconv 0.1.1 API).

        Returns:
            ``self.weight``, shape ``(C_out, C_in // groups, *kernel_size)``.
        """
        return self.weight

    def set_weight(self, weight: Tensor) -> Self:
        """Copy ``weight`` into the weight parameter (torch-pconv 0.1.1 API).

        Args:
            weight: A tensor of the weight's shape.

        Returns:
            The layer itself.

        Raises:
            PConvError: ``weight`` is not a tensor, or not of the weight's shape.
        """
        if not isinstance(weight, Tensor):
            raise PConvError(f"weight: expected a torch.Tensor, got {type(weight).__name__}")
        if weight.shape != self.weight.shape:
            raise PConvError(f"weight: expected shape {tuple(self.weight.shape)}, got {tuple(weight.shape)}")
        with torch.no_grad():
            self.weight.copy_(weight)
        return self

    def get_bias(self) -> Tensor | None:
        """The bias parameter (torch-pconv 0.1.1 API).

        Returns:
            ``self.bias``, shape ``(C_out,)``, or None for a layer built with ``bias=False``.
        """
        return self.bias

    def set_bias(self, bias: Tensor) -> Self:
        """Copy ``bias`` into the bias parameter (torch-pconv 0.1.1 API).

        Args:
            bias: A tensor of ``C_out`` elements, in any shape, such as 0.1.1's ``(1, C_out, 1, 1)``.

        Returns:
            The layer itself.

        Raises:
            PConvError: ``bias`` is not a tensor or holds another number of elements, or the
                layer was built with ``bias=False``.
        """
        if not isinstance(bias, Tensor):
            raise PConvError(f"bias: expected a torch.Tensor, got {type(bias).__name__}")
        if self.bias is None:
            raise PConvError("bias: this layer was built with bias=False")
        if bias.numel() != self.out_channels:
            raise PConvError(f"bias: expected {self.out_channels} elements, got shape {tuple(bias.shape)}")
        with torch.no_grad():
            self.bias.copy_(bias.reshape(self.out_channels))
        return self

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # torch-pconv 0.1.1 kept the weight in a sub-convolution, the ones kernel of its mask
        # convolution as a parameter, and the bias as (1, out_channels, 1, 1).
        legacy_weight = state_dict.pop(prefix + "regular_conv.weight", None)
        if legacy_weight is not None and prefix + "weight" in state_dict:
            error_msgs: list[str] = args[-1]
            error_msgs.append(
                f"both {prefix}weight and torch-pconv 0.1.1's {prefix}regular_conv.weight are given for one "
                "layer: keep one of them (this state_dict mixes two checkpoints)"
            )
            return
        if legacy_weight is not None:
            state_dict[prefix + "weight"] = legacy_weight
            state_dict.pop(prefix + "mask_conv.weight", None)
            legacy_bias = state_dict.get(prefix + "bias")
            if legacy_bias is not None:
                state_dict[prefix + "bias"] = legacy_bias.reshape(-1)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        self._ratio_cache = {}  # .to(), .cuda(), .half(): start afresh rather than keep dead entries
        return super()._apply(fn, recurse)  # type: ignore[no-untyped-call]

    def __prepare_scriptable__(self) -> nn.Module:
        # Called by torch.jit.script on every submodule before compiling it.
        raise RuntimeError(
            f"{type(self).__name__} cannot be compiled by torch.jit.script: its mask handling (layouts, "
            "checks, the mask=None cache) is Python. For TorchScript use torch.jit.trace(model.eval(), "
            "(input, mask)); or torch.export.export, or torch.onnx.export."
        )

    def __getstate__(self) -> dict[str, Any]:
        # Pickles and deep copies carry no cached tensors; they are rebuilt on first use.
        state = dict(super().__getstate__())  # type: ignore[no-untyped-call]
        state["_ratio_cache"] = {}
        return state

    def extra_repr(self) -> str:
        flags = ", ".join(
            f"{name}={getattr(self, name)}"
            for name in ("multi_channel", "return_mask", "legacy_behaviour")
            if getattr(self, name) != self._defaults[name]
        )
        base: str = super().extra_repr()  # type: ignore[no-untyped-call]
        return base + (", " + flags if flags else "")


class PConv1d(_PartialConvNd, nn.Conv1d):
    __doc__ = """A partial convolution over 1-D signals: an ``nn.Conv1d`` that convolves only the valid
    entries of its input and rescales each output by how much of its window was valid.

    {formula}

    Args:
        {args}
        return_mask (bool, optional): Keyword-only. ``forward`` returns ``(output, update_mask)``
            rather than the output alone. Default: ``True``
        {legacy_behaviour}

    Raises:
        {raises}

    Shape:
        - Input: ``(B, C_in, L)``, floating point.
        - Mask: ``None`` (every entry valid), ``(B, L)`` (one mask for every channel),
          ``(B, 1, L)`` (NVIDIA's one-channel mask), or ``(B, C_in, L)`` with
          ``multi_channel=True``. A mask or an input of batch 1 broadcasts over the other's batch.
        - Output: ``(B, C_out, L')``, with ``L'`` as for ``nn.Conv1d``:
          ``(L + 2·padding - dilation·(kernel_size - 1) - 1) // stride + 1``.
        - Update mask (with ``return_mask``), in the mask's layout and the input's dtype:
          ``(B, L')``, ``(B, 1, L')``, or ``(B, C_out, L')`` (every channel equal: an expanded view
          of one channel, which ``.contiguous()`` copies); with ``mask=None``, ``(1, 1, L')``, or
          ``(B, C_out, L')`` with ``multi_channel=True``.

    Examples:
        >>> import torch
        >>> from torch_pconv import PConv1d
        >>> layer = PConv1d(1, 1, kernel_size=3, padding=1, bias=False)
        >>> _ = torch.nn.init.ones_(layer.weight)  # sums of windows
        >>> signal = torch.ones(1, 1, 8)
        >>> mask = torch.tensor([[[1, 1, 0, 0, 0, 0, 1, 1]]])  # 0: a hole
        >>> with torch.no_grad():
        ...     output, new_mask = layer(signal, mask)
        >>> output  # as if every window with a valid entry were all valid
        tensor([[[3., 3., 3., 0., 0., 3., 3., 3.]]])
        >>> new_mask  # the hole shrinks by one entry on each side
        tensor([[[1., 1., 1., 0., 0., 1., 1., 1.]]])
    """.format(**_NOTES)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _size_1_t,
        stride: _size_1_t = 1,
        padding: str | _size_1_t = 0,
        dilation: _size_1_t = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: PaddingMode = "zeros",
        device: Any = None,
        dtype: Any = None,
        *,
        multi_channel: bool = False,
        return_mask: bool = True,
        legacy_behaviour: bool = False,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype
        )
        self._init_partial(multi_channel, return_mask, legacy_behaviour)

    # Returns Tensor | tuple[Tensor, Tensor], by return_mask: typed Any, which nn.ConvNd's
    # forward (-> Tensor) admits as an override.
    def forward(self, input: Tensor, mask_in: Tensor | None = None) -> Any:
        """The partial convolution of ``input`` under ``mask_in`` (the formula of the class docstring).

        Args:
            input: ``(B, C_in, L)``, floating point, in the dtype of the layer's parameters.
            mask_in: 1 valid, 0 hole, in one of the layouts of the class's Shape section; ``None``
                (every entry valid) for partial-convolution-based padding.

        Returns:
            (Tensor or tuple[Tensor, Tensor]): The output, or ``(output, update_mask)`` when
                ``return_mask`` is set (see Shape).

        Raises:
            PConvError: An input or mask of the wrong type, rank, shape, dtype or device.
        """
        return self._partial_forward(input, mask_in)


class PConv2d(_PartialConvNd, nn.Conv2d):
    __doc__ = """A partial convolution over images: an ``nn.Conv2d`` that convolves only the valid
    entries of its input and rescales each output by how much of its window was valid.

    {formula}

    Args:
        {args}
        return_mask (bool, optional): Keyword-only. ``forward`` returns ``(output, update_mask)``
            rather than the output alone. Default: ``True``
        {legacy_behaviour}

    Raises:
        {raises}

    Shape:
        - Input: ``(B, C_in, H, W)``, floating point.
        - Mask: ``None`` (every entry valid), ``(B, H, W)`` (one mask for every channel),
          ``(B, 1, H, W)`` (NVIDIA's one-channel mask), or ``(B, C_in, H, W)`` with
          ``multi_channel=True``. A mask or an input of batch 1 broadcasts over the other's batch.
        - Output: ``(B, C_out, H', W')``, each spatial size as for ``nn.Conv2d``:
          ``(size + 2·padding - dilation·(kernel_size - 1) - 1) // stride + 1``.
        - Update mask (with ``return_mask``), in the mask's layout and the input's dtype:
          ``(B, H', W')``, ``(B, 1, H', W')``, or ``(B, C_out, H', W')`` (every channel equal: an
          expanded view of one channel, which ``.contiguous()`` copies); with ``mask=None``,
          ``(1, 1, H', W')``, or ``(B, C_out, H', W')`` with ``multi_channel=True``.

    Examples:
        >>> import torch
        >>> from torch_pconv import PConv2d
        >>> _ = torch.manual_seed(0)
        >>> layer = PConv2d(3, 4, kernel_size=3, padding=1)
        >>> image = torch.randn(2, 3, 8, 8)
        >>> mask = torch.ones(2, 1, 8, 8)
        >>> mask[..., 2:6, 2:6] = 0  # a 4×4 hole
        >>> output, new_mask = layer(image, mask)
        >>> output.shape, new_mask.shape
        (torch.Size([2, 4, 8, 8]), torch.Size([2, 1, 8, 8]))
        >>> new_mask[0, 0, 4]  # the hole shrinks by one pixel on each side
        tensor([1., 1., 1., 0., 0., 1., 1., 1.])
    """.format(**_NOTES)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _size_2_t,
        stride: _size_2_t = 1,
        padding: str | _size_2_t = 0,
        dilation: _size_2_t = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: PaddingMode = "zeros",
        device: Any = None,
        dtype: Any = None,
        *,
        multi_channel: bool = False,
        return_mask: bool = True,
        legacy_behaviour: bool = False,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype
        )
        self._init_partial(multi_channel, return_mask, legacy_behaviour)

    # Returns Tensor | tuple[Tensor, Tensor], by return_mask: typed Any, which nn.ConvNd's
    # forward (-> Tensor) admits as an override.
    def forward(self, input: Tensor, mask_in: Tensor | None = None) -> Any:
        """The partial convolution of ``input`` under ``mask_in`` (the formula of the class docstring).

        Args:
            input: ``(B, C_in, H, W)``, floating point, in the dtype of the layer's parameters.
            mask_in: 1 valid, 0 hole, in one of the layouts of the class's Shape section; ``None``
                (every entry valid) for partial-convolution-based padding.

        Returns:
            (Tensor or tuple[Tensor, Tensor]): The output, or ``(output, update_mask)`` when
                ``return_mask`` is set (see Shape).

        Raises:
            PConvError: An input or mask of the wrong type, rank, shape, dtype or device.
        """
        return self._partial_forward(input, mask_in)


class PConv3d(_PartialConvNd, nn.Conv3d):
    __doc__ = """A partial convolution over volumes: an ``nn.Conv3d`` that convolves only the valid
    entries of its input and rescales each output by how much of its window was valid.

    {formula}

    Args:
        {args}
        return_mask (bool, optional): Keyword-only. ``forward`` returns ``(output, update_mask)``
            rather than the output alone. Default: ``True``
        {legacy_behaviour}

    Raises:
        {raises}

    Shape:
        - Input: ``(B, C_in, D, H, W)``, floating point.
        - Mask: ``None`` (every entry valid), ``(B, D, H, W)`` (one mask for every channel),
          ``(B, 1, D, H, W)`` (NVIDIA's one-channel mask), or ``(B, C_in, D, H, W)`` with
          ``multi_channel=True``. A mask or an input of batch 1 broadcasts over the other's batch.
        - Output: ``(B, C_out, D', H', W')``, each spatial size as for ``nn.Conv3d``:
          ``(size + 2·padding - dilation·(kernel_size - 1) - 1) // stride + 1``.
        - Update mask (with ``return_mask``), in the mask's layout and the input's dtype:
          ``(B, D', H', W')``, ``(B, 1, D', H', W')``, or ``(B, C_out, D', H', W')`` (every
          channel equal: an expanded view of one channel, which ``.contiguous()`` copies); with
          ``mask=None``, ``(1, 1, D', H', W')``, or ``(B, C_out, D', H', W')`` with
          ``multi_channel=True``.

    Examples:
        >>> import torch
        >>> from torch_pconv import PConv3d
        >>> _ = torch.manual_seed(0)
        >>> layer = PConv3d(2, 4, kernel_size=3, padding=1)
        >>> volume = torch.randn(1, 2, 4, 8, 8)
        >>> mask = torch.ones(1, 4, 8, 8)  # (B, D, H, W): for every channel
        >>> mask[:, 1:3, 2:6, 2:6] = 0  # a hole
        >>> output, new_mask = layer(volume, mask)
        >>> output.shape, new_mask.shape
        (torch.Size([1, 4, 4, 8, 8]), torch.Size([1, 4, 8, 8]))
    """.format(**_NOTES)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _size_3_t,
        stride: _size_3_t = 1,
        padding: str | _size_3_t = 0,
        dilation: _size_3_t = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: PaddingMode = "zeros",
        device: Any = None,
        dtype: Any = None,
        *,
        multi_channel: bool = False,
        return_mask: bool = True,
        legacy_behaviour: bool = False,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype
        )
        self._init_partial(multi_channel, return_mask, legacy_behaviour)

    # Returns Tensor | tuple[Tensor, Tensor], by return_mask: typed Any, which nn.ConvNd's
    # forward (-> Tensor) admits as an override.
    def forward(self, input: Tensor, mask_in: Tensor | None = None) -> Any:
        """The partial convolution of ``input`` under ``mask_in`` (the formula of the class docstring).

        Args:
            input: ``(B, C_in, D, H, W)``, floating point, in the dtype of the layer's parameters.
            mask_in: 1 valid, 0 hole, in one of the layouts of the class's Shape section; ``None``
                (every entry valid) for partial-convolution-based padding.

        Returns:
            (Tensor or tuple[Tensor, Tensor]): The output, or ``(output, update_mask)`` when
                ``return_mask`` is set (see Shape).

        Raises:
            PConvError: An input or mask of the wrong type, rank, shape, dtype or device.
        """
        return self._partial_forward(input, mask_in)


class PartialConv1d(PConv1d):
    __doc__ = """The drop-in class over 1-D signals: ``PConv1d`` with the defaults of NVIDIA's
    ``PartialConv2d`` and ``PartialConv3d`` (NVIDIA ships no 1-D layer). ``forward`` returns the
    output alone (``return_mask=False``), and a multi-channel update mask (with
    ``return_mask=True``) is a tensor of its own, as NVIDIA's is.

    {formula}

    Args:
        {args}
        return_mask (bool, optional): Keyword-only. ``forward`` returns ``(output, update_mask)``
            rather than the output alone. Default: ``False``
        {legacy_behaviour}

    Raises:
        {raises}

    Shape:
        - Input: ``(B, C_in, L)``, floating point.
        - Mask: ``None`` (every entry valid), ``(B, L)`` (one mask for every channel),
          ``(B, 1, L)`` (NVIDIA's one-channel mask), or ``(B, C_in, L)`` with
          ``multi_channel=True``. A mask or an input of batch 1 broadcasts over the other's batch.
        - Output: ``(B, C_out, L')``, with ``L'`` as for ``nn.Conv1d``:
          ``(L + 2·padding - dilation·(kernel_size - 1) - 1) // stride + 1``.
        - Update mask (with ``return_mask=True``), in the mask's layout and the input's dtype:
          ``(B, L')``, ``(B, 1, L')``, or ``(B, C_out, L')`` (every channel equal); with
          ``mask=None``, ``(1, 1, L')``, or ``(B, C_out, L')`` with ``multi_channel=True``.

    Examples:
        >>> import torch
        >>> from torch_pconv import PartialConv1d
        >>> _ = torch.manual_seed(0)
        >>> layer = PartialConv1d(3, 4, 3, padding=1, multi_channel=True)
        >>> signal = torch.randn(2, 3, 16)
        >>> mask = torch.ones(2, 3, 16)
        >>> mask[..., 4:12] = 0  # a hole
        >>> layer(signal, mask).shape  # the output alone
        torch.Size([2, 4, 16])
    """.format(**_NOTES)

    _defaults: ClassVar[dict[str, bool]] = {**_PartialConvNd._defaults, "return_mask": False}
    _expanded_mask: ClassVar[bool] = False

    def __init__(self, *args: Any, return_mask: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, return_mask=return_mask, **kwargs)


class PartialConv2d(PConv2d):
    __doc__ = """A drop-in for NVIDIA's ``PartialConv2d``: ``PConv2d`` with NVIDIA's defaults.
    ``forward`` returns the output alone (``return_mask=False``), and a multi-channel update mask
    (with ``return_mask=True``) is a tensor of its own, as NVIDIA's is.

    {formula}

    Args:
        {args}
        return_mask (bool, optional): Keyword-only. ``forward`` returns ``(output, update_mask)``
            rather than the output alone. Default: ``False``
        {legacy_behaviour}

    Raises:
        {raises}

    Shape:
        - Input: ``(B, C_in, H, W)``, floating point.
        - Mask: ``None`` (every entry valid), ``(B, H, W)`` (one mask for every channel),
          ``(B, 1, H, W)`` (NVIDIA's one-channel mask), or ``(B, C_in, H, W)`` with
          ``multi_channel=True``. A mask or an input of batch 1 broadcasts over the other's batch.
        - Output: ``(B, C_out, H', W')``, each spatial size as for ``nn.Conv2d``:
          ``(size + 2·padding - dilation·(kernel_size - 1) - 1) // stride + 1``.
        - Update mask (with ``return_mask=True``), in the mask's layout and the input's dtype:
          ``(B, H', W')``, ``(B, 1, H', W')``, or ``(B, C_out, H', W')`` (every channel equal);
          with ``mask=None``, ``(1, 1, H', W')``, or ``(B, C_out, H', W')`` with
          ``multi_channel=True``.

    Examples:
        >>> import torch
        >>> from torch_pconv import PartialConv2d
        >>> _ = torch.manual_seed(0)
        >>> layer = PartialConv2d(3, 4, 3, padding=1, multi_channel=True)
        >>> image = torch.randn(2, 3, 8, 8)
        >>> mask = torch.ones(2, 3, 8, 8)
        >>> mask[..., 2:6, 2:6] = 0  # a 4×4 hole
        >>> layer(image, mask).shape  # the output alone
        torch.Size([2, 4, 8, 8])
    """.format(**_NOTES)

    _defaults: ClassVar[dict[str, bool]] = {**_PartialConvNd._defaults, "return_mask": False}
    _expanded_mask: ClassVar[bool] = False

    def __init__(self, *args: Any, return_mask: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, return_mask=return_mask, **kwargs)


class PartialConv3d(PConv3d):
    __doc__ = """A drop-in for NVIDIA's ``PartialConv3d``: ``PConv3d`` with NVIDIA's defaults.
    ``forward`` returns the output alone (``return_mask=False``), and a multi-channel update mask
    (with ``return_mask=True``) is a tensor of its own, as NVIDIA's is.

    {formula}

    Args:
        {args}
        return_mask (bool, optional): Keyword-only. ``forward`` returns ``(output, update_mask)``
            rather than the output alone. Default: ``False``
        {legacy_behaviour}

    Raises:
        {raises}

    Shape:
        - Input: ``(B, C_in, D, H, W)``, floating point.
        - Mask: ``None`` (every entry valid), ``(B, D, H, W)`` (one mask for every channel),
          ``(B, 1, D, H, W)`` (NVIDIA's one-channel mask), or ``(B, C_in, D, H, W)`` with
          ``multi_channel=True``. A mask or an input of batch 1 broadcasts over the other's batch.
        - Output: ``(B, C_out, D', H', W')``, each spatial size as for ``nn.Conv3d``:
          ``(size + 2·padding - dilation·(kernel_size - 1) - 1) // stride + 1``.
        - Update mask (with ``return_mask=True``), in the mask's layout and the input's dtype:
          ``(B, D', H', W')``, ``(B, 1, D', H', W')``, or ``(B, C_out, D', H', W')`` (every
          channel equal); with ``mask=None``, ``(1, 1, D', H', W')``, or
          ``(B, C_out, D', H', W')`` with ``multi_channel=True``.

    Examples:
        >>> import torch
        >>> from torch_pconv import PartialConv3d
        >>> _ = torch.manual_seed(0)
        >>> layer = PartialConv3d(2, 4, 3, padding=1, return_mask=True)
        >>> volume = torch.randn(1, 2, 4, 8, 8)
        >>> mask = torch.ones(1, 1, 4, 8, 8)
        >>> mask[..., 1:3, 2:6, 2:6] = 0  # a hole
        >>> output, new_mask = layer(volume, mask)
        >>> output.shape, new_mask.shape
        (torch.Size([1, 4, 4, 8, 8]), torch.Size([1, 1, 4, 8, 8]))
    """.format(**_NOTES)

    _defaults: ClassVar[dict[str, bool]] = {**_PartialConvNd._defaults, "return_mask": False}
    _expanded_mask: ClassVar[bool] = False

    def __init__(self, *args: Any, return_mask: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, return_mask=return_mask, **kwargs)
