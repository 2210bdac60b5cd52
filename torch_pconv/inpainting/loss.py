"""The loss of Liu et al. (ECCV 2018), section 3.4: valid and hole L1, perceptual, style and
total variation, every L1 term size-averaged (a mean over elements), as the author specifies."""

from __future__ import annotations

import contextlib
import pickle
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "VGG16_FILE",
    "InpaintingLoss",
    "VGG16Features",
    "VGGWeightsError",
    "VGGWeightsNotFoundError",
    "gram_matrix",
    "hole_border",
    "total_variation",
]

# torchvision's published ImageNet VGG-16 weights, by the name torch.hub caches them under.
VGG16_FILE = "vgg16-397923af.pth"
# torchvision's VGG-16 `features` up to pool3: conv (C_out) or "M" (max pool). The indices of the
# Sequential match torchvision's, so its state_dict loads as is; pool1, 2, 3 are 4, 9 and 16.
_VGG16_POOL3: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M")
_POOLS = (4, 9, 16)
# The normalisation the ImageNet weights expect, for images in [0, 1].
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
_EXPECTED = f"torchvision's ImageNet VGG-16 state_dict ({VGG16_FILE}, from https://download.pytorch.org/models/)"


class VGGWeightsNotFoundError(FileNotFoundError):
    """No VGG-16 weights file where :class:`VGG16Features` looked for one."""


class VGGWeightsError(ValueError):
    """A file given as VGG-16 weights that holds no torchvision VGG-16 state_dict: not a file of
    ``torch.save``, one with objects other than tensors, or one without VGG-16's ``features.*``."""


class VGG16Features(nn.Module):
    """VGG-16 up to pool3, returning the pool1, pool2 and pool3 feature maps. Frozen.

    Randomly initialised unless ``weights`` is given: a path to torchvision's ImageNet VGG-16
    state_dict (``vgg16-397923af.pth``), or ``"cache"`` for torch's checkpoint cache
    (``torch.hub.get_dir()/checkpoints``), where torchvision downloads it. Only the
    ``features.*`` entries up to pool3 are read; torchvision itself is not needed.

    Args:
        weights: a path, ``"cache"``, or None (random weights).

    Raises:
        VGGWeightsNotFoundError: (a FileNotFoundError) no file at ``weights``.
        VGGWeightsError: the file holds no VGG-16 state_dict (see :meth:`load_torchvision`).

    Shape:
        - input: ``(B, 3, H, W)`` in [0, 1] (normalised here as the ImageNet weights expect)
        - output: a list of 3 maps, ``(B, 64, H/2, W/2)``, ``(B, 128, H/4, W/4)``, ``(B, 256, H/8, W/8)``

    Examples:
        >>> import torch
        >>> from torch_pconv.inpainting import VGG16Features
        >>> vgg = VGG16Features()  # random weights; "cache": torchvision's ImageNet ones
        >>> [tuple(features.shape) for features in vgg(torch.rand(1, 3, 16, 16))]
        [(1, 64, 8, 8), (1, 128, 4, 4), (1, 256, 2, 2)]
    """

    def __init__(self, weights: str | Path | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in _VGG16_POOL3:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                assert isinstance(item, int)
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        if weights is not None:
            self.load_torchvision(weights)
        self.requires_grad_(False)
        self.eval()

    def load_torchvision(self, weights: str | Path) -> None:
        """Load torchvision's VGG-16 state_dict from a path, or from torch's cache with ``"cache"``.

        Read with ``weights_only=True``: nothing in the file runs.

        Raises:
            VGGWeightsNotFoundError: (a FileNotFoundError) no file there.
            VGGWeightsError: the file holds no VGG-16 state_dict: every problem in one line."""
        path = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE if weights == "cache" else Path(weights)
        if not path.is_file():
            where = f"at {path} is a folder, not a file" if path.is_dir() else f"not found at {path}"
            raise VGGWeightsNotFoundError(
                f"VGG-16 weights {where}: download torchvision's {VGG16_FILE} "
                "(https://download.pytorch.org/models/) there, or pass its path"
            )
        if not _written_by_torch_save(path):
            raise VGGWeightsError(
                f"{path} is not VGG-16 weights: not a file written by torch.save; expected {_EXPECTED}"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except OSError:
            raise
        except pickle.UnpicklingError:
            # Not torch's advice to turn weights_only off: that would run what the file holds.
            raise VGGWeightsError(
                f"{path} is not VGG-16 weights: it holds objects other than tensors, refused as loading them "
                f"could run any code; expected {_EXPECTED}"
            ) from None
        except Exception as error:  # torch.load raises many kinds on a damaged file
            raise VGGWeightsError(
                f"{path} is not VGG-16 weights, or is damaged ({type(error).__name__}); expected {_EXPECTED}"
            ) from None
        if not isinstance(state, dict):
            raise VGGWeightsError(
                f"{path} is not VGG-16 weights: it holds a {type(state).__name__}, not a state_dict; "
                f"expected {_EXPECTED}"
            )
        wrong = []
        for key, ours in self.state_dict().items():
            theirs = state.get(key)
            if not isinstance(theirs, torch.Tensor):
                wrong.append(f"no {key}")
            elif theirs.shape != ours.shape:
                wrong.append(f"{key} of shape {tuple(theirs.shape)}, not {tuple(ours.shape)}")
        if wrong:
            more = f" and {len(wrong) - 2} more" if len(wrong) > 2 else ""
            raise VGGWeightsError(f"{path} is not VGG-16 weights: {', '.join(wrong[:2])}{more}; expected {_EXPECTED}")
        self.load_state_dict({key: state[key] for key in self.state_dict()})

    def forward(self, image: Tensor) -> list[Tensor]:
        x = (image - self.get_buffer("mean")) / self.get_buffer("std")
        maps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in _POOLS:
                maps.append(x)
        return maps

    def train(self, mode: bool = True) -> VGG16Features:
        return super().train(False)  # a fixed feature extractor, whatever its owner's mode


# What a file of torch.save starts with: a zip archive (torch 1.6 on), or the pickled magic number
# of the legacy format, which older published weights may be in.
_LEGACY_TORCH_SAVE = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def _written_by_torch_save(path: Path) -> bool:
    with path.open("rb") as file:
        start = file.read(len(_LEGACY_TORCH_SAVE))
    return start == _LEGACY_TORCH_SAVE or zipfile.is_zipfile(path)


def gram_matrix(features: Tensor) -> Tensor:
    """Gram matrix normalised by ``1/(C·H·W)`` (the paper's ``K_p``).

    Shape:
        - features: ``(B, C, H, W)``; output: ``(B, C, C)``

    Examples:
        >>> import torch
        >>> from torch_pconv.inpainting import gram_matrix
        >>> gram_matrix(torch.ones(2, 3, 4, 4))[0]  # 16 / (3 * 4 * 4)
        tensor([[0.3333, 0.3333, 0.3333],
                [0.3333, 0.3333, 0.3333],
                [0.3333, 0.3333, 0.3333]])
    """
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


def hole_border(mask: Tensor) -> Tensor:
    """The hole region dilated by one pixel (8-neighbourhood): 1 there, 0 elsewhere. With a
    multi-channel mask the hole region is the union of the channels' holes (a pixel is a hole
    if any channel is), as the paper's single-channel mask has it.

    Shape:
        - mask: ``(B, 1, H, W)`` or ``(B, C, H, W)``, 1 valid, 0 hole; output: ``(B, 1, H, W)``

    Examples:
        >>> import torch
        >>> from torch_pconv.inpainting import hole_border
        >>> mask = torch.ones(1, 1, 5, 5)
        >>> mask[..., 2, 2] = 0  # one hole pixel
        >>> hole_border(mask)[0, 0]
        tensor([[0., 0., 0., 0., 0.],
                [0., 1., 1., 1., 0.],
                [0., 1., 1., 1., 0.],
                [0., 1., 1., 1., 0.],
                [0., 0., 0., 0., 0.]])
    """
    holes = (1 - mask).amax(dim=1, keepdim=True)
    return F.max_pool2d(holes, kernel_size=3, stride=1, padding=1)


def total_variation(image: Tensor, region: Tensor) -> Tensor:
    """The paper's L_tv: L1 of horizontal and vertical neighbour differences over the pairs
    whose two pixels both lie in ``region``, summed, divided by the number of elements of ``image``.

    Shape:
        - image: ``(B, C, H, W)``; region: ``(B, 1, H, W)`` of 0 and 1; output: a scalar

    Examples:
        >>> import torch
        >>> from torch_pconv.inpainting import total_variation
        >>> image = torch.tensor([[[[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]]])  # (1, 1, 2, 3)
        >>> total_variation(image, torch.ones(1, 1, 2, 3))  # (1 + 0 + 0 + 1) + (0 + 1 + 0), over 6
        tensor(0.5000)
        >>> region = torch.tensor([[[[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]]])  # not the last column
        >>> total_variation(image, region)  # 1 + 0 horizontally, 0 + 1 vertically
        tensor(0.3333)
    """
    dx = (image[..., :, 1:] - image[..., :, :-1]).abs() * (region[..., :, 1:] * region[..., :, :-1])
    dy = (image[..., 1:, :] - image[..., :-1, :]).abs() * (region[..., 1:, :] * region[..., :-1, :])
    return (dx.sum() + dy.sum()) / image.numel()


class InpaintingLoss(nn.Module):
    """Liu et al.'s loss, with the published weights (each overridable):

    ``valid·L_valid + hole·L_hole + perceptual·L_perceptual + style·(L_style_out + L_style_comp) + tv·L_tv``

    where ``I_comp = M·I_gt + (1−M)·I_out``; L_valid and L_hole are mean absolute errors over
    all elements of ``M·(I_out − I_gt)`` and ``(1−M)·(I_out − I_gt)``; L_perceptual sums, over
    the extractor's maps, the mean absolute error of I_out's and I_comp's features against
    I_gt's; L_style sums the mean absolute error between Gram matrices (:func:`gram_matrix`);
    L_tv is :func:`total_variation` of I_comp over :func:`hole_border`.

    Everything is computed in float32 with autocast off, whatever autocast chose for the
    network (its output is cast up), the feature extractor and the Gram matrices included: in
    float16 large activations overflow the Gram matrices (a NaN style term), and in bfloat16
    the style term moved by 1e-3 (relative).

    Args:
        extractor: a module returning a list of feature maps; None skips the perceptual and style
            terms (reported as 0). Build the paper's with ``VGG16Features("cache")`` or a path.
        valid (float): weight of the L1 over valid pixels. Default: 1 (the paper's)
        hole (float): weight of the L1 over holes. Default: 6
        perceptual (float): weight of the perceptual term. Default: 0.05
        style (float): weight of each style term (output and composite). Default: 120
        tv (float): weight of the total variation term. Default: 0.1

    Shape:
        - output, target: ``(B, C, H, W)``; mask: ``(B, 1, H, W)`` or ``(B, C, H, W)``, 1 valid,
          0 hole (the TV region is the dilated union of the channels' holes)
        - returns a dict of scalars: ``valid``, ``hole``, ``perceptual``, ``style_out``,
          ``style_comp``, ``tv`` (unweighted) and ``total`` (weighted sum, to backpropagate)

    Examples:
        >>> import torch
        >>> from torch_pconv.inpainting import InpaintingLoss, VGG16Features
        >>> loss = InpaintingLoss(VGG16Features())  # VGG16Features("cache"): the paper's
        >>> target = torch.rand(2, 3, 16, 16)
        >>> mask = torch.ones(2, 1, 16, 16)
        >>> mask[..., 4:12, 4:12] = 0
        >>> output = torch.rand(2, 3, 16, 16, requires_grad=True)
        >>> terms = loss(output, target, mask)
        >>> sorted(terms)
        ['hole', 'perceptual', 'style_comp', 'style_out', 'total', 'tv', 'valid']
        >>> terms["total"].backward()
        >>> InpaintingLoss(hole=10)
        InpaintingLoss(valid=1.0, hole=10, perceptual=0.05, style=120.0, tv=0.1)
    """

    def __init__(
        self,
        extractor: nn.Module | Callable[[Tensor], Sequence[Tensor]] | None = None,
        valid: float = 1.0,
        hole: float = 6.0,
        perceptual: float = 0.05,
        style: float = 120.0,
        tv: float = 0.1,
    ) -> None:
        super().__init__()
        self.extractor = extractor
        self.weights = {"valid": valid, "hole": hole, "perceptual": perceptual, "style": style, "tv": tv}

    def forward(self, output: Tensor, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        # Compute in float32 whatever autocast chose for the network: Gram matrices overflow
        # float16, and sums of small differences lose too much in half precision. Casting the
        # inputs is not enough: under autocast the extractor's convolutions and the Gram
        # matrices' bmm would run in half precision again.
        with _autocast_off(output.device.type):
            return self._terms(output.float(), target.float(), mask.float())

    def _terms(self, output: Tensor, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        if mask.dim() == 3:
            mask = mask.unsqueeze(1)
        comp = mask * target + (1 - mask) * output
        zero = output.new_zeros(())
        terms = {
            "valid": (mask * (output - target)).abs().mean(),
            "hole": ((1 - mask) * (output - target)).abs().mean(),
            "perceptual": zero,
            "style_out": zero,
            "style_comp": zero,
            "tv": total_variation(comp, hole_border(mask)),
        }
        if self.extractor is not None and (self.weights["perceptual"] or self.weights["style"]):
            # One pass over the three images together.
            maps = self.extractor(torch.cat([output, comp, target]))
            perceptual, style_out, style_comp = zero, zero, zero
            for features in maps:
                f_out, f_comp, f_gt = features.float().chunk(3)
                perceptual = perceptual + (f_out - f_gt).abs().mean() + (f_comp - f_gt).abs().mean()
                g_gt = gram_matrix(f_gt)
                style_out = style_out + (gram_matrix(f_out) - g_gt).abs().mean()
                style_comp = style_comp + (gram_matrix(f_comp) - g_gt).abs().mean()
            terms.update(perceptual=perceptual, style_out=style_out, style_comp=style_comp)
        w = self.weights
        terms["total"] = (
            w["valid"] * terms["valid"]
            + w["hole"] * terms["hole"]
            + w["perceptual"] * terms["perceptual"]
            + w["style"] * (terms["style_out"] + terms["style_comp"])
            + w["tv"] * terms["tv"]
        )
        return terms

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={value}" for name, value in self.weights.items())


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast disabled for ``device_type``; nothing to disable where this torch has no autocast
    for it (torch 2.1 refuses ``torch.autocast("mps")``)."""
    try:
        return torch.autocast(device_type, enabled=False)
    except RuntimeError:
        return contextlib.nullcontext()
