"""Masks with holes, for tests, the equivalence check, the benchmark and the inpainting example.

Every function returns a float mask of 1 (valid) and 0 (hole) of the requested shape
``(..., *S)``, drawn from ``generator`` so that results are reproducible.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

__all__ = ["random_holes", "rectangle_holes", "stroke_holes"]


def random_holes(shape: tuple[int, ...], fraction: float, generator: torch.Generator | None = None) -> Tensor:
    """Independent holes: each entry is a hole with probability ``fraction``."""
    return (torch.rand(shape, generator=generator) >= fraction).float()


def rectangle_holes(
    shape: tuple[int, ...],
    count: int = 3,
    max_size: float = 0.4,
    spatial_dims: int = 2,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``count`` axis-aligned boxes of holes in the last ``spatial_dims`` dimensions, for every
    index into the leading ones; each side up to ``max_size`` of the spatial side."""
    mask = torch.ones(shape)
    spatial = shape[len(shape) - spatial_dims :]
    for index in _leading(shape[: len(shape) - spatial_dims]):
        for _ in range(count):
            box: list[slice] = []
            for side in spatial:
                size = 1 + int(torch.randint(max(1, int(side * max_size)), (1,), generator=generator))
                start = int(torch.randint(max(1, side - size + 1), (1,), generator=generator))
                box.append(slice(start, start + size))
            mask[index + tuple(box)] = 0
    return mask


def stroke_holes(
    shape: tuple[int, ...], strokes: int = 3, width: float = 0.08, generator: torch.Generator | None = None
) -> Tensor:
    """Free-form brush strokes in the last two dimensions (as in Liu et al.'s irregular masks):
    random walks of thick line segments, ``width`` a fraction of the smaller spatial side."""
    if len(shape) < 2:
        raise ValueError(f"stroke_holes: expected at least 2 dimensions, got shape {shape}")
    height, width_px = shape[-2], shape[-1]
    rows = torch.arange(height, dtype=torch.float32).view(-1, 1)
    cols = torch.arange(width_px, dtype=torch.float32).view(1, -1)
    radius = max(1.0, width * min(height, width_px) / 2)
    mask = torch.ones(shape)
    for index in _leading(shape[:-2]):
        holes = torch.zeros(height, width_px, dtype=torch.bool)
        for _ in range(strokes):
            y, x = (float(v) for v in torch.rand(2, generator=generator) * torch.tensor([height, width_px]))
            for _ in range(4 + int(torch.randint(5, (1,), generator=generator))):
                angle = float(torch.rand(1, generator=generator)) * 2 * math.pi
                length = (0.1 + 0.3 * float(torch.rand(1, generator=generator))) * max(height, width_px)
                y2, x2 = y + length * math.sin(angle), x + length * math.cos(angle)
                holes |= _segment_distance(rows, cols, (y, x), (y2, x2)) <= radius
                y, x = min(max(y2, 0.0), height - 1.0), min(max(x2, 0.0), width_px - 1.0)
        mask[index] = (~holes).float()
    return mask


def _segment_distance(rows: Tensor, cols: Tensor, start: tuple[float, float], end: tuple[float, float]) -> Tensor:
    """Distance of every pixel to the segment from ``start`` to ``end`` (row, column)."""
    dy, dx = end[0] - start[0], end[1] - start[1]
    length2 = max(dy * dy + dx * dx, 1e-12)
    t = (((rows - start[0]) * dy + (cols - start[1]) * dx) / length2).clamp(0, 1)
    return torch.hypot(rows - (start[0] + t * dy), cols - (start[1] + t * dx))


def _leading(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every index into the leading dimensions (one empty index when there are none)."""
    return list(itertools.product(*(range(size) for size in shape)))
