"""NVIDIA's partial convolution layers, rewritten operation for operation: the test oracle.

This module reproduces the floating-point behaviour of ``PartialConv2d`` and ``PartialConv3d``
from NVIDIA's reference implementation (github.com/NVIDIA/partialconv, commit 610d373, BSD
3-Clause, Copyright (c) 2018 NVIDIA Corporation, author Guilin Liu), written here from a
description of it, so that torch_pconv can be tested and benchmarked against it. Its quirks are
kept on purpose: the mask cache keyed on the input's shape alone, the second full-size
convolution for the multi-channel mask, the bias added and removed again.

Papers: G. Liu, F. A. Reda, K. J. Shih, T.-C. Wang, A. Tao, B. Catanzaro, "Image Inpainting for
Irregular Holes Using Partial Convolutions", ECCV 2018; G. Liu, K. J. Shih, T.-C. Wang,
F. A. Reda, K. Sapra, Z. Yu, A. Tao, B. Catanzaro, "Partial Convolution based Padding", 2018.

Use :mod:`torch_pconv`'s layers in models; use these to check them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PartialConv2d", "PartialConv3d"]


class _NvidiaPartialConv:
    """NVIDIA's layer, shared by the 2-D and 3-D classes (NVIDIA's two files differ only in the
    convolution function and the number of dimensions)."""

    # Set by the nn.ConvNd base / the concrete class.
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: Any
    padding: Any
    dilation: Any
    bias: Tensor | None
    _conv: Any  # F.conv2d or F.conv3d

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        multi_channel = kwargs.pop("multi_channel", False)
        return_mask = kwargs.pop("return_mask", False)
        super().__init__(*args, **kwargs)  # nn.Conv2d or nn.Conv3d
        self.multi_channel = multi_channel
        self.return_mask = return_mask
        if self.multi_channel:
            self.weight_maskUpdater = torch.ones(self.out_channels, self.in_channels, *self.kernel_size)
        else:
            self.weight_maskUpdater = torch.ones(1, 1, *self.kernel_size)
        self.slide_winsize = 1
        for size in self.weight_maskUpdater.shape[1:]:
            self.slide_winsize *= size
        self.last_size: tuple[int | None, ...] = (None,) * (len(self.kernel_size) + 2)
        self.update_mask: Any = None
        self.mask_ratio: Any = None

    def forward(self, input: Tensor, mask_in: Tensor | None = None) -> Any:
        assert len(input.shape) == len(self.kernel_size) + 2
        if mask_in is not None or self.last_size != tuple(input.shape):
            self.last_size = tuple(input.shape)
            with torch.no_grad():
                if self.weight_maskUpdater.type() != input.type():
                    self.weight_maskUpdater = self.weight_maskUpdater.to(input)
                if mask_in is None:
                    if self.multi_channel:
                        mask = torch.ones(*input.data.shape).to(input)
                    else:
                        mask = torch.ones(1, 1, *input.data.shape[2:]).to(input)
                else:
                    mask = mask_in
                self.update_mask = self._conv(
                    mask,
                    self.weight_maskUpdater,
                    bias=None,
                    stride=self.stride,
                    padding=self.padding,
                    dilation=self.dilation,
                    groups=1,
                )
                # NVIDIA's README: use 1e-6 instead for mixed precision.
                self.mask_ratio = self.slide_winsize / (self.update_mask + 1e-8)
                self.update_mask = torch.clamp(self.update_mask, 0, 1)
                self.mask_ratio = torch.mul(self.mask_ratio, self.update_mask)

        raw_out = super().forward(torch.mul(input, mask_in) if mask_in is not None else input)  # type: ignore[misc]
        if self.bias is not None:
            bias_view = self.bias.view(1, self.out_channels, *(1,) * len(self.kernel_size))
            output = torch.mul(raw_out - bias_view, self.mask_ratio) + bias_view
            output = torch.mul(output, self.update_mask)
        else:
            output = torch.mul(raw_out, self.mask_ratio)

        if self.return_mask:
            return output, self.update_mask
        return output


class PartialConv2d(_NvidiaPartialConv, nn.Conv2d):
    """NVIDIA's ``PartialConv2d``: ``nn.Conv2d`` arguments plus ``multi_channel`` and ``return_mask``."""

    _conv = staticmethod(F.conv2d)


class PartialConv3d(_NvidiaPartialConv, nn.Conv3d):
    """NVIDIA's ``PartialConv3d``: ``nn.Conv3d`` arguments plus ``multi_channel`` and ``return_mask``."""

    _conv = staticmethod(F.conv3d)
