"""Masks with holes, for tests, the equivalence check, the benchmark and the inpainting example.

Every function returns a float mask of 1 (valid) and 0 (hole) of the requested shape
``(..., *S)``, drawn from ``generator`` so that results are reproducible.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

__all__ = ["irregular_holes", "random_holes", "rectangle_holes", "stroke_holes"]


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


def _count_range(hole_ratio: tuple[float, float], height: int, width: int, margin: int) -> tuple[int, int]:
    """The fewest and the most hole pixels of a ratio in ``(low, high]`` that fit inside the margin."""
    area = height * width
    inside = (height - 2 * margin) * (width - 2 * margin)
    return math.floor(hole_ratio[0] * area) + 1, min(math.floor(hole_ratio[1] * area), inside)


def _segment_distance(rows: Tensor, cols: Tensor, start: tuple[float, float], end: tuple[float, float]) -> Tensor:
    """Distance of every pixel to the segment from ``start`` to ``end`` (row, column)."""
    dy, dx = end[0] - start[0], end[1] - start[1]
    length2 = max(dy * dy + dx * dx, 1e-12)
    t = (((rows - start[0]) * dy + (cols - start[1]) * dx) / length2).clamp(0, 1)
    return torch.hypot(rows - (start[0] + t * dy), cols - (start[1] + t * dx))


def _leading(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every index into the leading dimensions (one empty index when there are none)."""
    return list(itertools.product(*(range(size) for size in shape)))


def irregular_holes(
    shape: tuple[int, ...],
    hole_ratio: tuple[float, float] | None = None,
    margin: int = 0,
    strokes: int = 4,
    width: tuple[float, float] = (0.02, 0.12),
    boxes: int = 0,
    box_size: float = 0.3,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Irregular holes in the spirit of Liu et al.'s mask set: brush strokes of varying width,
    plus optional boxes, in the last two dimensions.

    Args:
        shape: ``(..., H, W)``; every index into the leading dimensions gets its own holes.
        hole_ratio: ``(low, high)``: the hole area over the image area lands in ``(low, high]``.
            A target is drawn uniformly in that range and strokes are drawn until the area
            passes it, rejecting any segment that would pass ``high``.
            None: exactly ``strokes`` strokes and ``boxes`` boxes, whatever area they cover.
        margin: no hole within this many pixels of the border (the paper's border constraint).
        strokes: strokes drawn when ``hole_ratio`` is None; each a walk of 4 to 8 segments.
        width: the range of a segment's width, as fractions of the smaller side.
        boxes: axis-aligned boxes drawn first, each side up to ``box_size`` of the image side.
        generator: the source of randomness, for reproducible masks.
    """
    if len(shape) < 2:
        raise ValueError(f"irregular_holes: expected at least 2 dimensions, got shape {shape}")
    height, width_px = shape[-2], shape[-1]
    if margin < 0 or 2 * margin >= min(height, width_px):
        raise ValueError(f"irregular_holes: margin {margin} leaves no room for holes in a {height}x{width_px} image")
    if hole_ratio is not None:
        low, high = hole_ratio
        bottom, top = _count_range(hole_ratio, height, width_px, margin)
        if not 0 <= low < high <= 1 or bottom > top:
            raise ValueError(
                f"irregular_holes: hole_ratio {hole_ratio} is not reachable in a {height}x{width_px} image with a"
                f" margin of {margin} px: no whole number of hole pixels in that range fits inside the margin"
            )
    mask = torch.ones(shape)
    for index in _leading(shape[:-2]):
        mask[index] = (
            ~_irregular(height, width_px, hole_ratio, margin, strokes, width, boxes, box_size, generator)
        ).float()
    return mask


def _irregular(
    height: int,
    width_px: int,
    hole_ratio: tuple[float, float] | None,
    margin: int,
    strokes: int,
    width: tuple[float, float],
    boxes: int,
    box_size: float,
    generator: torch.Generator | None,
) -> Tensor:
    """The boolean holes of one image (True: hole); see irregular_holes."""
    rows = torch.arange(height, dtype=torch.float32).view(-1, 1)
    cols = torch.arange(width_px, dtype=torch.float32).view(1, -1)
    inside = torch.zeros(height, width_px, dtype=torch.bool)
    inside[margin : height - margin, margin : width_px - margin] = True
    holes = torch.zeros(height, width_px, dtype=torch.bool)
    # Counts of hole pixels: at most `top`, and (with a ratio) at least a target drawn uniformly
    # between the fewest the range allows and `top`, to spread the ratios over the whole range.
    top = height * width_px
    target = 0
    if hole_ratio is not None:
        bottom, top = _count_range(hole_ratio, height, width_px, margin)
        target = bottom + int(torch.randint(top - bottom + 1, (1,), generator=generator))

    def uniform(a: float, b: float) -> float:
        return a + (b - a) * float(torch.rand(1, generator=generator))

    def add(candidate: Tensor) -> bool:
        """Add a shape's holes unless they pass the upper bound of the ratio."""
        nonlocal holes
        grown = holes | (candidate & inside)
        if int(grown.sum()) > top:
            return False
        holes = grown
        return True

    for _ in range(boxes):
        h = max(1, round(uniform(0.05, box_size) * height))
        w = max(1, round(uniform(0.05, box_size) * width_px))
        top, left = int(uniform(0, height - h + 1)), int(uniform(0, width_px - w + 1))
        box = torch.zeros_like(holes)
        box[top : top + h, left : left + w] = True
        add(box)

    side = min(height, width_px)
    drawn, rejected, scale = 0, 0, 1.0
    # With a ratio: walk until the count reaches the target; every segment that would pass `top`
    # is rejected, and after a run of rejections segments get thinner and shorter (down to single
    # pixels), so the loop ends.
    while (drawn < strokes) if hole_ratio is None else (int(holes.sum()) < target):
        y, x = uniform(margin, height - margin - 1), uniform(margin, width_px - margin - 1)
        for _ in range(4 + int(torch.randint(5, (1,), generator=generator))):
            angle = uniform(0, 2 * math.pi)
            length = uniform(0.05, 0.25) * max(height, width_px) * scale
            radius = max(0.5, uniform(*width) * side * scale / 2)
            y2 = min(max(y + length * math.sin(angle), 0.0), height - 1.0)
            x2 = min(max(x + length * math.cos(angle), 0.0), width_px - 1.0)
            if add(_segment_distance(rows, cols, (y, x), (y2, x2)) <= radius):
                rejected = 0
            else:
                rejected += 1
                if rejected % 8 == 0:
                    scale = max(scale / 2, 1 / side)
            y, x = y2, x2
            if hole_ratio is not None and int(holes.sum()) >= target:
                break
        drawn += 1
    return holes
