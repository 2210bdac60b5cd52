"""Synthetic training data: smooth random colour images, and masks of free-form strokes and boxes."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from torch_pconv.holes import rectangle_holes, stroke_holes


def smooth_images(
    batch: int, size: int, generator: torch.Generator, fields: int = 3, waves: int = 4, cycles: float = 2.0
) -> Tensor:
    """Smooth random colour images, in [0, 1]: ``fields`` grey-level fields, each a sum of ``waves``
    plane waves of random direction and phase with up to ``cycles`` periods across the image, mixed
    into RGB by a random palette. Shape ``(batch, 3, size, size)``."""

    def uniform(*shape: int) -> Tensor:  # in [-1, 1]
        return 2 * torch.rand(*shape, generator=generator) - 1

    grid = torch.linspace(0, 1, size)
    fy, fx = (2 * math.pi * cycles * uniform(batch, fields, waves, 1, 1) for _ in range(2))
    phase = math.pi * uniform(batch, fields, waves, 1, 1)
    field = torch.sin(fy * grid.view(-1, 1) + fx * grid + phase).sum(2) / math.sqrt(waves)
    palette, base = uniform(batch, 3, fields), uniform(batch, 3, 1, 1)
    return torch.sigmoid(2 * (torch.einsum("bcf,bfhw->bchw", palette, field) + base))


def hole_masks(batch: int, size: int, generator: torch.Generator) -> Tensor:
    """1 valid, 0 hole: brush strokes, plus a box on half of the images. Shape ``(batch, 1, size, size)``."""
    strokes = stroke_holes((batch, size, size), strokes=2, width=0.1, generator=generator)
    boxes = rectangle_holes((batch, size, size), count=1, max_size=0.4, generator=generator)
    with_box = torch.rand(batch, 1, 1, generator=generator) < 0.5
    return torch.where(with_box, strokes * boxes, strokes).unsqueeze(1)


def sample(batch: int, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """A batch of (image, mask)."""
    return smooth_images(batch, size, generator), hole_masks(batch, size, generator)
