"""Partial-convolution-based padding for a whole model: swap its zero-padded convolutions."""

from __future__ import annotations

import copy
from typing import TypeGuard

from torch import nn

from .pconv import PartialConv1d, PartialConv2d, PartialConv3d

__all__ = ["convert"]

_PlainConv = nn.Conv1d | nn.Conv2d | nn.Conv3d

# Exact types only: a subclass of nn.Conv2d may have a forward of its own that the swap would drop.
_PARTIAL: dict[type[nn.Module], type[PartialConv1d | PartialConv2d | PartialConv3d]] = {
    nn.Conv1d: PartialConv1d,
    nn.Conv2d: PartialConv2d,
    nn.Conv3d: PartialConv3d,
}


def convert(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Replace every zero-padded ``nn.Conv1d/2d/3d`` in ``model`` by the matching ``PartialConv*d``.

    This is partial-convolution-based padding (Liu et al., 2018): each replaced layer runs with
    ``mask_in=None``, so that the zero padding counts as holes and the output near the border is
    rescaled by ``window_size / count`` (the formula in the layers' docstrings). Each new layer has
    the old one's arguments and shares its ``weight`` and ``bias`` parameters (same values, device,
    dtype and ``requires_grad``), keeps its training mode, and returns the output alone
    (``return_mask=False``), so the state_dict keys do not change and a checkpoint of the plain
    model loads into the converted one and back.

    Left as they are: convolutions without padding (their ratio would be 1 everywhere), with a
    ``padding_mode`` other than ``'zeros'``, subclasses of ``nn.Conv*d`` (so also existing
    partial convolutions, which makes ``convert`` idempotent), transposed convolutions, and every
    other module; so are reparametrized convolutions (``torch.nn.utils.parametrize`` makes a
    subclass, the older ``weight_norm`` and ``spectral_norm`` a weight computed by a hook). Hooks
    registered on a replaced convolution are not carried over. In torchvision's ``resnet18``, 17 of
    the 20 convolutions are replaced: the three 1×1 downsampling ones have no padding.

    Args:
        model (nn.Module): Any module; if it is itself a plain convolution, the result is a new
            layer.
        inplace (bool, optional): Replace the layers inside ``model`` itself rather than in a deep
            copy of it. Default: ``False``

    Returns:
        The converted model: ``model`` itself when ``inplace=True`` (unless ``model`` is a
            convolution), else a deep copy, which leaves ``model`` untouched.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from torch_pconv import convert
        >>> model = nn.Sequential(
        ...     nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1)
        ... )
        >>> net = convert(model)
        >>> net[0]  # padded: replaced
        PartialConv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
        >>> net[2]  # a 1×1 convolution pads nothing: left as it is
        Conv2d(8, 8, kernel_size=(1, 1), stride=(1, 1))
        >>> net.load_state_dict(model.state_dict())  # the same keys
        <All keys matched successfully>
        >>> net(torch.ones(1, 3, 4, 4)).shape
        torch.Size([1, 8, 4, 4])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: expected an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    return _swap(model, {})


def _swap(module: nn.Module, done: dict[int, nn.Module]) -> nn.Module:
    """``module`` converted, its children swapped in place; ``done`` maps each visited conv to its
    replacement, so that a conv shared by two parents stays one module (and one set of weights)."""
    if id(module) in done:
        return done[id(module)]
    if _is_padded_plain_conv(module):
        done[id(module)] = _partial_twin(module)
        return done[id(module)]
    for name, child in module.named_children():
        new = _swap(child, done)
        if new is not child:
            setattr(module, name, new)  # works for Sequential, ModuleList and ModuleDict keys too
    return module


def _is_padded_plain_conv(module: nn.Module) -> TypeGuard[_PlainConv]:
    if type(module) not in _PARTIAL or not isinstance(module, _PlainConv):
        return False
    if module.padding_mode != "zeros":
        return False
    if set(dict(module.named_parameters(recurse=False))) - {"weight", "bias"}:
        return False  # an old-style weight_norm or spectral_norm: its weight is computed by a hook
    if isinstance(module.padding, str):  # 'valid' pads nothing; 'same' pads dilation * (kernel - 1)
        return module.padding == "same" and any(k > 1 for k in module.kernel_size)
    return any(p != 0 for p in module.padding)


def _partial_twin(conv: _PlainConv) -> nn.Module:
    """The partial-padding layer with ``conv``'s arguments and ``conv``'s own parameters."""
    partial = _PARTIAL[type(conv)](
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,  # a tuple, or "same" as nn.Conv*d keeps it
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode="zeros",
        device="meta",  # no memory and no initialisation: the parameters are replaced just below
    )
    partial.weight = conv.weight
    partial.bias = conv.bias
    partial.train(conv.training)
    return partial
