"""The mask generators of torch_pconv.holes: shapes, 0/1 values, reproducibility, hole fractions."""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import seeded

from torch_pconv.holes import random_holes, rectangle_holes, stroke_holes

GENERATORS = {
    "random": lambda shape, gen: random_holes(shape, 0.3, generator=gen),
    "rectangle": lambda shape, gen: rectangle_holes(shape, generator=gen),
    "stroke": lambda shape, gen: stroke_holes(shape, generator=gen),
}


def _hole_fraction(mask: torch.Tensor) -> float:
    return 1.0 - mask.mean().item()


def _slices(mask: torch.Tensor, spatial_dims: int) -> list[torch.Tensor]:
    """The spatial slices of ``mask``, one per index into its leading dimensions."""
    return list(mask.reshape(-1, *mask.shape[mask.dim() - spatial_dims :]))


@pytest.mark.parametrize("kind", GENERATORS)
@pytest.mark.parametrize("shape", [(2, 16, 20), (2, 1, 16, 20), (3, 2, 12, 12), (16, 20)])
def test_shape_dtype_and_values(kind, shape):
    mask = GENERATORS[kind](shape, seeded(0))
    assert mask.shape == shape
    assert mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("kind", GENERATORS)
def test_seeded_generator_is_reproducible(kind):
    shape = (3, 24, 24)
    first = GENERATORS[kind](shape, seeded(7))
    assert torch.equal(first, GENERATORS[kind](shape, seeded(7)))
    assert not torch.equal(first, GENERATORS[kind](shape, seeded(8)))


@pytest.mark.parametrize("kind", GENERATORS)
def test_global_seed_is_used_without_a_generator(kind):
    shape = (2, 16, 16)
    masks = []
    for _ in range(2):
        torch.manual_seed(11)
        masks.append(GENERATORS[kind](shape, None))
    assert torch.equal(*masks)


@pytest.mark.parametrize("kind", GENERATORS)
def test_slices_differ(kind):
    # Every image of a batch gets its own holes.
    slices = _slices(GENERATORS[kind]((4, 32, 32), seeded(1)), 2)
    for a, b in itertools.combinations(slices, 2):
        assert not torch.equal(a, b)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_random_hole_fraction(fraction):
    mask = random_holes((4, 64, 64), fraction, generator=seeded(2))
    # 16384 Bernoulli draws: the standard deviation of the fraction is below 0.004.
    assert abs(_hole_fraction(mask) - fraction) < 0.02


def test_random_hole_extremes():
    assert torch.equal(random_holes((2, 8, 8), 0.0, generator=seeded(0)), torch.ones(2, 8, 8))
    assert torch.equal(random_holes((2, 8, 8), 1.0, generator=seeded(0)), torch.zeros(2, 8, 8))


@pytest.mark.parametrize("seed", range(5))
def test_rectangle_hole_fraction(seed):
    count, max_size = 3, 0.4
    for image in _slices(rectangle_holes((4, 40, 50), count, max_size, generator=seeded(seed)), 2):
        fraction = _hole_fraction(image)
        assert fraction > 0  # every image has holes
        assert fraction <= count * max_size**2  # each box is at most max_size of each side


@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
def test_one_rectangle_is_a_box_in_the_spatial_dims(spatial_dims):
    shape = (3, 6, 10, 12)
    mask = rectangle_holes(shape, count=1, max_size=0.5, spatial_dims=spatial_dims, generator=seeded(3))
    spatial = shape[len(shape) - spatial_dims :]
    slices = _slices(mask, spatial_dims)
    assert len(slices) == mask.numel() // torch.Size(spatial).numel()
    for image in slices:
        holes = image == 0
        assert holes.any()
        # The holes fill their bounding box, whose sides are at most max_size of the spatial sides.
        box = []
        for dim, side in enumerate(spatial):
            other = tuple(d for d in range(spatial_dims) if d != dim)
            present = holes.permute(dim, *other).flatten(1).any(1) if other else holes  # any(dim=tuple) is 2.2+
            index = present.nonzero().flatten()
            low, high = int(index.min()), int(index.max()) + 1
            assert high - low <= max(1, int(side * 0.5))
            box.append(slice(low, high))
        assert holes[tuple(box)].all()
        assert holes.sum() == holes[tuple(box)].numel()


def test_rectangles_over_a_volume_span_its_depth():
    # spatial_dims=3 boxes cut through several depth slices; spatial_dims=2 boxes are per slice.
    shape = (1, 12, 16, 16)
    volume = rectangle_holes(shape, count=1, max_size=0.5, spatial_dims=3, generator=seeded(4))[0]
    per_slice = rectangle_holes(shape, count=1, max_size=0.5, spatial_dims=2, generator=seeded(4))[0]
    depths = [d for d, s in enumerate(volume) if (s == 0).any()]
    assert depths == list(range(depths[0], depths[-1] + 1))  # one contiguous run of slices
    assert all(torch.equal(volume[d], volume[depths[0]]) for d in depths)  # the same 2-D hole in each
    assert all((s == 0).any() for s in per_slice)
    assert not all(torch.equal(s, per_slice[0]) for s in per_slice)


@pytest.mark.parametrize("seed", range(5))
def test_stroke_hole_fraction(seed):
    for image in _slices(stroke_holes((3, 64, 64), generator=seeded(seed)), 2):
        # Three random walks of thick segments: visible holes, most of the image left valid.
        assert 0.01 < _hole_fraction(image) < 0.6


def test_wider_strokes_make_more_holes():
    thin = stroke_holes((4, 64, 64), width=0.04, generator=seeded(5))
    thick = stroke_holes((4, 64, 64), width=0.16, generator=seeded(5))
    assert _hole_fraction(thick) > _hole_fraction(thin)
    # The same walks: thick strokes cover the thin ones.
    assert torch.all(thick <= thin)


def test_stroke_holes_needs_two_dimensions():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        stroke_holes((16,), generator=seeded(0))
