"""A scaled-down PConv U-Net (Liu et al., "Image Inpainting for Irregular Holes Using Partial
Convolutions", ECCV 2018) and its loss, without the perceptual, style and total-variation terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torch_pconv import PConv2d


class PConvBlock(nn.Module):
    """PConv2d, then BatchNorm and an activation; carries the mask along with the features."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, norm: bool, act: nn.Module | None) -> None:
        super().__init__()
        # multi_channel: the decoder's mask differs per channel (upsampled mask | skip mask).
        self.conv = PConv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=not norm, multi_channel=True)
        self.norm = nn.BatchNorm2d(cout) if norm else nn.Identity()
        self.act = act or nn.Identity()

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        x, mask = self.conv(x, mask)
        return self.act(self.norm(x)), mask


class PConvUNet(nn.Module):
    """Encoder of stride-2 partial convolutions (each one shrinks the holes), decoder of nearest
    upsampling, skip connections that concatenate features and masks, and a partial convolution.

    Shape:
        - image: ``(B, C, H, W)``, H and W divisible by ``2 ** len(widths)``
        - mask: ``(B, 1, H, W)``, 1 valid, 0 hole
        - output: ``(B, C, H, W)``, the whole image predicted (holes and valid pixels)
    """

    def __init__(
        self,
        channels: int = 3,
        widths: tuple[int, ...] = (32, 64, 128, 128, 128),
        kernels: tuple[int, ...] = (7, 5, 5, 3, 3),
    ) -> None:
        super().__init__()
        ins = (channels, *widths[:-1])  # each encoder's input width: also the skip it hands the decoder
        self.encoder = nn.ModuleList(
            PConvBlock(cin, cout, k, stride=2, norm=i > 0, act=nn.ReLU())
            for i, (cin, cout, k) in enumerate(zip(ins, widths, kernels, strict=True))
        )
        self.decoder = nn.ModuleList(
            PConvBlock(cin + skip, skip, 3, stride=1, norm=skip != channels, act=nn.LeakyReLU(0.2))
            for cin, skip in zip(widths[::-1], ins[::-1], strict=True)
        )
        self.decoder[-1].act = nn.Identity()  # the last layer outputs the image: no activation

    def forward(self, image: Tensor, mask: Tensor) -> Tensor:
        xs, masks = [image], [mask.expand_as(image)]
        for block in self.encoder:
            x, m = block(xs[-1], masks[-1])
            xs.append(x)
            masks.append(m)
        x, m = xs.pop(), masks.pop()
        for block in self.decoder:
            x = torch.cat([F.interpolate(x, scale_factor=2.0), xs.pop()], dim=1)
            m = torch.cat([F.interpolate(m, scale_factor=2.0), masks.pop()], dim=1)
            x, m = block(x, m)
        return x


def inpainting_loss(output: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Liu et al.'s valid and hole L1 terms (weighted 1 and 6 in the total), each a mean over all pixels."""
    error = (output - target).abs()
    return (mask * error).mean(), ((1 - mask) * error).mean()
