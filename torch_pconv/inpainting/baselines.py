"""Two classical fills to hold a network against: the mean colour of the valid pixels, and
diffusion (harmonic interpolation: every hole pixel the average of its four neighbours)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["diffusion_fill", "mean_fill"]


def mean_fill(image: Tensor, mask: Tensor) -> Tensor:
    """Fill every hole with the mean colour of its image's valid pixels.

    Shape:
        - image: ``(B, C, H, W)``; mask: ``(B, 1, H, W)``, 1 valid, 0 hole; output: like image

    Examples:
        >>> import torch
        >>> from torch_pconv.inpainting import mean_fill
        >>> image = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
        >>> mask = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])  # a hole at the top left
        >>> mean_fill(image, mask)
        tensor([[[[2., 1.],
                  [2., 3.]]]])
    """
    valid = mask.sum((-2, -1), keepdim=True).clamp_min(1)
    mean = (image * mask).sum((-2, -1), keepdim=True) / valid
    return mask * image + (1 - mask) * mean


def diffusion_fill(image: Tensor, mask: Tensor, iterations: int = 100, min_side: int = 4) -> Tensor:
    """Fill the holes by diffusion from their borders: a solution of Laplace's equation inside
    the holes with the valid pixels as boundary values, by Jacobi iterations, coarse to fine
    (each level starts from the coarser level's fill, so that wide holes converge too).

    Args:
        image: the images; what the holes hold is ignored.
        mask: 1 valid, 0 hole.
        iterations: Jacobi iterations at each level of the pyramid.
        min_side: the coarsest level's smaller side.

    Shape:
        - image: ``(B, C, H, W)``; mask: ``(B, 1, H, W)``, 1 valid, 0 hole; output: like image

    Examples:
        >>> import torch
        >>> from torch_pconv.inpainting import diffusion_fill
        >>> ramp = torch.linspace(0, 1, 8).expand(1, 1, 8, 8)
        >>> mask = torch.ones(1, 1, 8, 8)
        >>> mask[..., 2:6, 2:6] = 0
        >>> filled = diffusion_fill(ramp * mask, mask)
        >>> bool((filled - ramp).abs().max() < 1e-5)  # a linear ramp is harmonic: filled exactly
        True
    """
    mask = mask.to(image.dtype)
    height, width = image.shape[-2:]
    if min(height, width) >= 2 * min_side:
        # The coarser level: the mean of each 2x2 block's valid pixels, valid if any is.
        weight = F.avg_pool2d(mask, 2, ceil_mode=True)
        coarse_image = F.avg_pool2d(image * mask, 2, ceil_mode=True) / weight.clamp_min(1e-12)
        coarse = diffusion_fill(coarse_image, (weight > 0).to(image.dtype), iterations, min_side)
        start = F.interpolate(coarse, scale_factor=2.0, mode="bilinear", align_corners=False)[..., :height, :width]
    else:
        start = mean_fill(image, mask)
    filled = mask * image + (1 - mask) * start
    for _ in range(iterations):
        padded = F.pad(filled, (1, 1, 1, 1), mode="replicate")
        average = (padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1] + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:]) / 4
        filled = mask * image + (1 - mask) * average
    return filled
