"""Whole networks for the benchmark, each in the variants a row measures, all with the same weights.

- ``unet``: the paper's network, :class:`torch_pconv.inpainting.PConvUNet`; its NVIDIA twin swaps
  every ``PConv2d`` for NVIDIA's ``PartialConv2d(multi_channel=True, return_mask=True)``
  (:mod:`torch_pconv.reference`); its plain twin has the same layers with ``nn.Conv2d`` and no mask.
- ``classifier``: a ResNet-50 laid out as NVIDIA's ``pd_resnet50`` (Liu et al., "Partial
  Convolution based Padding", 2018): every convolution, 1×1 included, a partial convolution without
  bias and without a mask. The variants: ``torch_pconv.PartialConv2d``, NVIDIA's layer, ``nn.Conv2d``,
  and ``torch_pconv.convert`` of the plain network (its unpadded 1×1 convolutions stay ``nn.Conv2d``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import reference
from ..convert import convert
from ..pconv import PartialConv2d
from .configs import Config
from .impls import Impl

if TYPE_CHECKING:
    from ..inpainting.model import PConvUNet

UNET, CLASSIFIER = "unet", "classifier"

# A convolution of the classifier: (in_channels, out_channels, kernel_size, stride, padding) -> layer.
ConvFactory = Callable[[int, int, int, int, int], nn.Module]


# ----------------------------------------------------------------------------------------------
# The classifier: ResNet-50


class Bottleneck(nn.Module):
    """1×1 (to ``width``), 3×3 (with the stride), 1×1 (to ``4·width``), each followed by BatchNorm,
    plus the input (through a strided 1×1 convolution and BatchNorm where the shape changes), then ReLU.

    Shape:
        - input: ``(B, C_in, H, W)``
        - output: ``(B, 4·width, H / stride, W / stride)``
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int, conv: ConvFactory) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1, self.bn1 = conv(in_channels, width, 1, 1, 0), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = conv(width, width, 3, stride, 1), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = conv(width, out_channels, 1, 1, 0), nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(conv(in_channels, out_channels, 1, stride, 0), nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(out + residual)


class ResNet50(nn.Module):
    """ResNet-50 with pd_resnet50's layout: a 7×7 stride-2 stem, 3×3 max pooling, then 3, 4, 6 and 3
    bottleneck blocks of widths 64 to 512 (the stride in each stage's first 3×3), every convolution
    made by ``conv`` without bias; global average pooling (pd_resnet50 pools 7×7, which fixes the
    input at 224×224) and a linear layer.

    Shape:
        - input: ``(B, 3, H, W)``, H and W at least 32 (B at least 2 where they are below 64:
          BatchNorm in training needs more than one value per channel)
        - output: ``(B, classes)``
    """

    def __init__(self, conv: ConvFactory, classes: int = 1000) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv(3, 64, 7, 2, 3), nn.BatchNorm2d(64)
        blocks: list[nn.Module] = []
        in_channels = 64
        for stage, (width, count) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True)):
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(Bottleneck(in_channels, width, stride, conv))
                in_channels = width * Bottleneck.expansion
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_channels, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        x = self.blocks(x).mean(dim=(2, 3))
        out: Tensor = self.fc(x)
        return out


def _plain_conv(i: int, o: int, k: int, stride: int, padding: int) -> nn.Module:
    return nn.Conv2d(i, o, k, stride=stride, padding=padding, bias=False)


def _our_conv(i: int, o: int, k: int, stride: int, padding: int) -> nn.Module:
    return PartialConv2d(i, o, k, stride=stride, padding=padding, bias=False)


def _nvidia_conv(i: int, o: int, k: int, stride: int, padding: int) -> nn.Module:
    return reference.PartialConv2d(i, o, k, stride=stride, padding=padding, bias=False)


def classifier(impl: Impl, seed: int) -> nn.Module:
    """The ResNet-50 of row ``impl`` (kind conv, drop_in, convert or nvidia), with the weights the
    plain network draws from ``seed``."""
    torch.manual_seed(seed)
    plain = ResNet50(_plain_conv)
    if impl.kind == "conv":
        return plain
    if impl.kind == "convert":
        return convert(plain, inplace=True)
    net = ResNet50(_our_conv if impl.kind == "drop_in" else _nvidia_conv)
    net.load_state_dict(plain.state_dict())
    return net


# ----------------------------------------------------------------------------------------------
# The inpainting U-Net


def unet_class() -> type[PConvUNet]:
    """PConvUNet; ImportError, in one line, where the inpainting extra (Pillow) is not installed."""
    from ..inpainting.model import PConvUNet  # the package imports Pillow and pytorch-msssim first

    return PConvUNet


class PlainUNet(nn.Module):
    """A PConvUNet's layers with ``nn.Conv2d`` and no mask: what the U-Net costs without partial
    convolutions. Its parameters have the U-Net's names and values, so the state_dicts match.

    Shape:
        - image: ``(B, C, H, W)`` (the holes already zeroed); the mask is taken and ignored
        - output: ``(B, C, H, W)``
    """

    def __init__(self, unet: PConvUNet) -> None:
        super().__init__()
        self.encoder = nn.ModuleList(_PlainBlock(block) for block in unet.encoder)
        self.decoder = nn.ModuleList(_PlainBlock(block) for block in unet.decoder)

    def forward(self, image: Tensor, mask: Tensor | None = None) -> Tensor:
        skips, x = [image], image
        for block in self.encoder:
            x = F.relu(block(x))
            skips.append(x)
        skips.pop()  # the deepest features feed the decoder directly
        for block in self.decoder:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(torch.cat([x, skips.pop()], dim=1))
            if not block.last:
                x = F.leaky_relu(x, 0.2)
        return x


class _PlainBlock(nn.Module):
    """A U-Net block's convolution, copied as ``nn.Conv2d``, then a copy of its norm (which the last
    decoder block does not apply): the block's parameter names."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.conv = _swap(block.get_submodule("conv"), nn.Conv2d)
        self.norm = copy.deepcopy(block.get_submodule("norm"))
        self.last = bool(getattr(block, "last", False))  # an EncoderBlock has no `last`

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return x if self.last else self.norm(x)


def _swap(conv: nn.Module, cls: Callable[..., nn.Module], **kwargs: object) -> nn.Module:
    """A ``cls`` layer with ``conv``'s arguments and a copy of its parameters."""
    assert isinstance(conv, nn.Conv2d)
    new = cls(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        **kwargs,
    )
    new.load_state_dict(conv.state_dict())
    return new


def unet(impl: Impl, layers: int, seed: int) -> nn.Module:
    """The U-Net of row ``impl`` (kind conv, pconv or nvidia), with the weights PConvUNet draws from
    ``seed``."""
    torch.manual_seed(seed)
    ours = unet_class()(layers=layers)
    if impl.kind == "conv":
        return PlainUNet(ours)
    if impl.kind == "nvidia":
        for block in [*ours.encoder, *ours.decoder]:
            block.conv = _swap(block.conv, reference.PartialConv2d, multi_channel=True, return_mask=True)
    return ours


def deepest(config: Config) -> int:
    """The side of the network's smallest features (the U-Net's bottom, the classifier's last stage)."""
    if config.network == UNET:
        return config.size // int(2**config.layers)
    return -(-config.size // 32)  # five stride-2 steps, each rounding up


def build(network: str, impl: Impl, layers: int, seed: int) -> nn.Module:
    """The ``network`` (UNET or CLASSIFIER) of row ``impl``, in float32 on the CPU, in training mode."""
    return unet(impl, layers, seed) if network == UNET else classifier(impl, seed)
