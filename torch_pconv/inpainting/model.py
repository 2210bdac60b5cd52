"""The network of Liu et al., "Image Inpainting for Irregular Holes Using Partial Convolutions"
(ECCV 2018), section 3.2 and the supplementary material: a U-Net of partial convolutions."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torch_pconv import PConv2d

__all__ = ["PAPER_KERNELS", "PAPER_WIDTHS", "DecoderBlock", "EncoderBlock", "PConvUNet", "inpaint"]

# The paper's encoder, layer by layer (PConv1 ... PConv8).
PAPER_WIDTHS = (64, 128, 256, 512, 512, 512, 512, 512)
PAPER_KERNELS = (7, 5, 5, 3, 3, 3, 3, 3)


class EncoderBlock(nn.Module):
    """A partial convolution of stride 2, BatchNorm (optional) and ReLU.

    Shape:
        - input: ``(B, C_in, H, W)``, mask ``(B, C_in, H, W)`` (an expanded one-channel mask is fastest)
        - output: ``(B, C_out, H/2, W/2)``, mask ``(B, C_out, H/2, W/2)``, a stride-0 view of one channel
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, batch_norm: bool = True) -> None:
        super().__init__()
        self.conv = PConv2d(
            in_channels, out_channels, kernel_size, stride=2, padding=kernel_size // 2, multi_channel=True
        )
        self.norm = nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity()

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        x, mask = self.conv(x, mask)
        return torch.relu(self.norm(x)), mask


class DecoderBlock(nn.Module):
    """Nearest ×2 upsampling of the features and the mask, concatenation with the skip features
    and the skip mask, then a 3×3 partial convolution, BatchNorm and LeakyReLU(0.2); the last
    block (``last=True``) has neither, and outputs the image.

    Shape:
        - input: ``(B, C, H, W)`` and mask; skip ``(B, C_skip, 2H, 2W)`` and its mask
        - output: ``(B, C_out, 2H, 2W)``, mask ``(B, C_out, 2H, 2W)``
    """

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, last: bool = False, batch_norm: bool = True
    ) -> None:
        super().__init__()
        self.conv = PConv2d(in_channels + skip_channels, out_channels, 3, padding=1, multi_channel=True)
        self.norm = nn.BatchNorm2d(out_channels) if batch_norm and not last else nn.Identity()
        self.last = last

    def forward(self, x: Tensor, mask: Tensor, skip: Tensor, skip_mask: Tensor) -> tuple[Tensor, Tensor]:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        # Upsample one channel of the mask (all channels are equal) rather than all of them.
        up_mask = F.interpolate(_one_channel(mask), scale_factor=2.0, mode="nearest")
        # After the concatenation the mask differs between the two groups of channels: it is a
        # genuine multi-channel mask, as in the paper, and has to be materialised.
        mask = torch.cat([up_mask.expand_as(x), _expand(skip_mask, skip.shape[1])], dim=1)
        x, mask = self.conv(torch.cat([x, skip], dim=1), mask)
        if self.last:
            return x, mask
        return F.leaky_relu(self.norm(x), 0.2), mask


class PConvUNet(nn.Module):
    """Liu et al.'s inpainting network: ``layers`` partial convolutions of stride 2 down, as many
    stages of nearest upsampling, skip concatenation (features and masks) and a 3×3 partial
    convolution up. Masks are carried with ``multi_channel`` semantics, as one channel expanded
    over all channels wherever all channels agree.

    Args:
        layers: encoder depth; 8 for 512×512 images, 7 for 256×256 (the paper). Inputs must be
            multiples of ``2**layers`` on each side.
        in_channels: image channels (the output has as many).
        widths: encoder widths; default the paper's ``(64, 128, 256, 512, 512, ...)[:layers]``.
            Decoder stage ``i`` outputs the width of the skip it consumes, as in the paper.
        kernels: encoder kernel sizes; default the paper's ``(7, 5, 5, 3, 3, ...)[:layers]``.
        batch_norm: BatchNorm after every layer but the first and the last (the paper); False
            builds a BatchNorm-free network, for tests.
        fine_tune: start in the paper's second phase (see :meth:`freeze_encoder_bn`).

    Raises:
        ValueError: arguments that build no such network; in the forward, an image whose sides
            are not multiples of ``2**layers``, or a mask that does not match the image.

    Shape:
        - image: ``(B, C, H, W)``, holes may hold anything (they are masked)
        - mask: ``(B, 1, H, W)``, ``(B, H, W)`` or ``(B, C, H, W)``; 1 valid, 0 hole
        - output: ``(B, C, H, W)``, the raw network output (composite it with :func:`inpaint`)

    Examples:
        >>> import torch
        >>> from torch_pconv.inpainting import PConvUNet
        >>> model = PConvUNet(layers=2, widths=(4, 8))  # the paper's: PConvUNet(layers=7), 256x256
        >>> image = torch.rand(1, 3, 16, 16)
        >>> mask = torch.ones(1, 1, 16, 16)
        >>> mask[..., 4:8, 4:12] = 0
        >>> model(image * mask, mask).shape
        torch.Size([1, 3, 16, 16])
    """

    def __init__(
        self,
        layers: int = 8,
        in_channels: int = 3,
        widths: Sequence[int] | None = None,
        kernels: Sequence[int] | None = None,
        batch_norm: bool = True,
        fine_tune: bool = False,
    ) -> None:
        super().__init__()
        _check_arguments(layers, in_channels, widths, kernels)
        if widths is None:
            widths = _paper(PAPER_WIDTHS, layers)
        if kernels is None:
            kernels = _paper(PAPER_KERNELS, layers)
        self.layers, self.in_channels, self.batch_norm = layers, in_channels, batch_norm
        self.widths, self.kernels = tuple(widths), tuple(kernels)
        channels = (in_channels, *widths)
        # PConv1 has no BatchNorm.
        self.encoder = nn.ModuleList(
            EncoderBlock(channels[i], channels[i + 1], kernels[i], batch_norm and i > 0) for i in range(layers)
        )
        # The stage at level i takes the features of level i + 1 and the skip of level i, and
        # outputs the skip's width; the last one's skip is the input image and mask.
        self.decoder = nn.ModuleList(
            DecoderBlock(channels[i + 1], channels[i], channels[i], last=i == 0, batch_norm=batch_norm)
            for i in reversed(range(layers))
        )
        self.fine_tune = False
        if fine_tune:
            self.freeze_encoder_bn()

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this: ``2**layers``."""
        return int(2**self.layers)

    def forward(self, image: Tensor, mask: Tensor) -> Tensor:
        self._check(image, mask)
        if mask.dim() == 3:
            mask = mask.unsqueeze(1)
        mask = mask.to(image.dtype)
        skips = [(image, mask)]
        x, m = image, _expand(mask, image.shape[1])
        for block in self.encoder:
            x, m = block(x, m)
            skips.append((x, m))
        skips.pop()  # the deepest features feed the decoder directly
        for block in self.decoder:
            skip, skip_mask = skips.pop()
            x, m = block(x, m, skip, skip_mask)
        return x

    def freeze_encoder_bn(self) -> None:
        """The paper's fine-tuning phase: the encoder's BatchNorm layers in eval mode (running
        statistics) with frozen parameters, kept in eval mode by later ``train()`` calls."""
        self.fine_tune = True
        for module in self.encoder.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
                module.requires_grad_(False)

    def train(self, mode: bool = True) -> PConvUNet:
        super().train(mode)
        if self.fine_tune:
            for module in self.encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def extra_repr(self) -> str:
        return f"layers={self.layers}, widths={self.widths}, kernels={self.kernels}, fine_tune={self.fine_tune}"

    def _check(self, image: Tensor, mask: Tensor) -> None:
        if image.dim() != 4 or image.shape[1] != self.in_channels:
            raise ValueError(f"PConvUNet: expected an image (B, {self.in_channels}, H, W), got {tuple(image.shape)}")
        height, width = image.shape[-2:]
        if height % self.multiple or width % self.multiple:
            raise ValueError(
                f"PConvUNet(layers={self.layers}) halves its input {self.layers} times: height and width must be "
                f"multiples of {self.multiple}, got {height}x{width}. Pad the image (inpaint() does), crop it, "
                "or use fewer layers."
            )
        spatial = tuple(mask.shape[-2:])
        if (
            spatial != (height, width)
            or mask.dim() not in (3, 4)
            or mask.shape[0] != image.shape[0]
            or (mask.dim() == 4 and mask.shape[1] not in (1, self.in_channels))
        ):
            raise ValueError(
                f"PConvUNet: expected a mask (B, 1, H, W), (B, H, W) or (B, {self.in_channels}, H, W) matching the "
                f"image {tuple(image.shape)}, got {tuple(mask.shape)}"
            )


def inpaint(model: PConvUNet, image: Tensor, mask: Tensor) -> Tensor:
    """Fill the holes of images of any size: pad to the network's multiple (the padding is a
    hole, so it adds nothing), run the network, crop, and keep the valid pixels as they were.

    Args:
        model: the network, in the mode to run it in (``model.eval()`` to fill).
        image: the images; what the holes hold (NaN included) does not reach the result.
        mask: 1 valid, 0 hole.

    Shape:
        - image: ``(B, C, H, W)``; mask: ``(B, 1, H, W)`` or ``(B, H, W)``, 1 valid, 0 hole
        - output: ``(B, C, H, W)``: the image at valid pixels, the network's output in the holes

    Examples:
        >>> import torch
        >>> from torch_pconv.inpainting import PConvUNet, inpaint
        >>> model = PConvUNet(layers=2, widths=(4, 8)).eval()
        >>> image = torch.rand(1, 3, 15, 21)  # not multiples of 4
        >>> mask = torch.ones(1, 1, 15, 21)
        >>> mask[..., 4:8, 4:12] = 0
        >>> with torch.no_grad():
        ...     filled = inpaint(model, image, mask)
        >>> filled.shape, torch.equal(filled[..., :4, :], image[..., :4, :])  # valid pixels kept
        (torch.Size([1, 3, 15, 21]), True)
    """
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    mask = mask.to(image.dtype)
    height, width = image.shape[-2:]
    pad_h, pad_w = -height % model.multiple, -width % model.multiple
    valid = mask > 0
    # A select, not a product: whatever the holes hold (NaN included) never reaches the result.
    known = torch.where(valid, image, 0)
    padded = F.pad(known, (0, pad_w, 0, pad_h))
    padded_mask = F.pad(mask, (0, pad_w, 0, pad_h))  # the padding is a hole: it carries nothing
    output: Tensor = model(padded, padded_mask)[..., :height, :width]
    return torch.where(valid, image, output)


def _check_arguments(
    layers: int, in_channels: int, widths: Sequence[int] | None, kernels: Sequence[int] | None
) -> None:
    """Arguments the forward would fail on deep inside torch, refused with what is expected."""

    def integer(value: object) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)

    if not integer(layers) or layers < 1:
        raise ValueError(f"PConvUNet: layers must be a positive integer (the encoder depth), got {layers!r}")
    if not integer(in_channels) or in_channels < 1:
        raise ValueError(f"PConvUNet: in_channels must be a positive integer, got {in_channels!r}")
    for name, values in (("widths", widths), ("kernels", kernels)):
        if values is not None and len(values) != layers:
            raise ValueError(
                f"PConvUNet: layers={layers} needs {layers} {name}, one per encoder layer, got {len(values)}: "
                f"{tuple(values)}"
            )
    if widths is not None and not all(integer(w) and w >= 1 for w in widths):
        raise ValueError(f"PConvUNet: widths must be positive integers (channels), got {tuple(widths)}")
    if kernels is not None and not all(integer(k) and k >= 1 and k % 2 == 1 for k in kernels):
        raise ValueError(
            f"PConvUNet: kernels must be odd positive integers (padded by k // 2, a stride-2 layer halves its "
            f"input only with an odd kernel), got {tuple(kernels)}"
        )


def _paper(values: tuple[int, ...], layers: int) -> tuple[int, ...]:
    """The paper's per-layer values for ``layers`` layers (its last value repeated past eight)."""
    return values[:layers] + (values[-1],) * max(0, layers - len(values))


def _one_channel(mask: Tensor) -> Tensor:
    return mask[:, :1]


def _expand(mask: Tensor, channels: int) -> Tensor:
    """A one-channel mask as a stride-0 view over ``channels`` (what PConv2d counts once)."""
    if mask.shape[1] == channels:
        return mask
    return _one_channel(mask).expand(-1, channels, -1, -1)
