"""Masks: irregular_holes (holes.py), the bucketed generator, bucket_of, and the PNG folder loader."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("PIL")
pytest.importorskip("pytorch_msssim")

from torch_pconv.holes import irregular_holes
from torch_pconv.inpainting import BUCKETS, MaskFolder, MaskGenerator, bucket_of, hole_ratio
from torch_pconv.inpainting.masks import _rotate


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    ("ratio", "bucket"),
    [(0.01, None), (0.0100001, 0), (0.1, 0), (0.1000001, 1), (0.35, 3), (0.6, 5), (0.6000001, None), (0.0, None)],
)
def test_bucket_of_is_open_below_closed_above(ratio, bucket):
    assert bucket_of(ratio) == bucket


@pytest.mark.parametrize("size", [16, 32, 64])
def test_generator_lands_in_every_bucket(size):
    generator = MaskGenerator(size, length=24, seed=1)
    for index in range(24):
        mask = generator[index]
        assert mask.shape == (1, size, size) and mask.dtype == torch.float32
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert bucket_of(float(hole_ratio(mask[None]))) == index % len(BUCKETS)


def test_generator_spreads_ratios_within_a_bucket():
    generator = MaskGenerator(64, length=60, buckets=[2], seed=2)
    ratios = [float(hole_ratio(generator[i][None])) for i in range(20)]
    assert min(ratios) < 0.24 and max(ratios) > 0.26


def test_generator_is_reproducible_and_seeded():
    first = MaskGenerator(32, length=12, seed=5)
    again = MaskGenerator(32, length=12, seed=5)
    other = MaskGenerator(32, length=12, seed=6)
    for index in range(12):
        assert torch.equal(first[index], again[index])
    assert torch.equal(first[7], first[7])  # items do not depend on the order they are drawn in
    assert not all(torch.equal(first[i], other[i]) for i in range(12))
    with pytest.raises(IndexError):
        first[12]


def test_border_constraint():
    size = 64
    margin = round(50 / 512 * size)
    inside = MaskGenerator(size, length=12, border=True, seed=3)
    for index in range(12):
        holes = inside[index][0] == 0
        assert not holes[:margin].any() and not holes[-margin:].any()
        assert not holes[:, :margin].any() and not holes[:, -margin:].any()
    free = MaskGenerator(size, length=12, border=False, seed=3)
    touches = [bool((free[i][0, :margin] == 0).any() or (free[i][0, -margin:] == 0).any()) for i in range(12)]
    assert any(touches)
    # border=None alternates: the first round of buckets constrained, the second not.
    mixed = MaskGenerator(size, length=12, border=None, seed=3)
    assert torch.equal(mixed[0], inside[0]) and torch.equal(mixed[6], free[6])


def test_generator_pool_is_flips_and_transposes_of_its_masks():
    size, pool = 32, 6
    drawn = MaskGenerator(size, length=pool, seed=4)
    pooled = MaskGenerator(size, length=8 * pool, seed=4, pool=pool)
    for base in range(pool):
        mask = drawn[base]
        assert torch.equal(pooled[base], mask)  # the first round is the masks as drawn
        symmetries = [mask, mask.flip(-1), mask.flip(-2), mask.flip(-1).flip(-2)]
        symmetries += [m.transpose(-1, -2) for m in symmetries]
        items = [pooled[base + turn * pool] for turn in range(8)]
        for item, expected in zip(items, symmetries, strict=True):
            assert torch.equal(item, expected)
            assert item.dtype == torch.float32
            assert bucket_of(float(hole_ratio(item[None]))) == base % len(BUCKETS)
        assert len({tuple(item.flatten().tolist()) for item in items}) == 8  # stroke masks have no symmetry
    assert len(pooled._drawn) == pool  # each mask drawn once


def test_generator_pool_keeps_the_border_and_non_square_shapes():
    margin = round(50 / 512 * 32)
    pooled = MaskGenerator((32, 48), length=32, border=True, seed=2, pool=4)
    for index in range(32):
        mask = pooled[index]
        assert mask.shape == (1, 32, 48)
        holes = mask[0] == 0
        assert not holes[:margin].any() and not holes[-margin:].any()
        assert not holes[:, :margin].any() and not holes[:, -margin:].any()
    with pytest.raises(ValueError, match="pool must be a positive"):
        MaskGenerator(32, pool=0)


def test_unconditioned_masks_with_boxes():
    generator = MaskGenerator(32, length=4, buckets=None, boxes=1, strokes=2, seed=0)
    for index in range(4):
        assert 0 < float(hole_ratio(generator[index][None])) < 1


def test_irregular_holes_shape_and_errors():
    mask = irregular_holes((2, 3, 16, 20), hole_ratio=(0.1, 0.2), generator=_gen(0))
    assert mask.shape == (2, 3, 16, 20)
    ratios = 1 - mask.mean((-2, -1))
    assert ((ratios > 0.1) & (ratios <= 0.2)).all()
    assert not torch.equal(mask[0, 0], mask[0, 1])
    with pytest.raises(ValueError, match="not reachable"):
        irregular_holes((8, 8), hole_ratio=(0.5, 0.6), margin=2)  # 16 of 64 pixels fit inside the margin
    with pytest.raises(ValueError, match="margin"):
        irregular_holes((8, 8), margin=4)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        irregular_holes((8,))


def _write(path, pixels: torch.Tensor) -> None:
    from PIL import Image

    image = Image.fromarray(pixels.to(torch.uint8).numpy(), mode="L")
    image.save(path)


@pytest.fixture
def mask_folder(tmp_path):
    """Three 24x32 PNGs with white holes (the 0/255 convention is an option)."""
    folder = tmp_path / "masks"
    (folder / "sub").mkdir(parents=True)
    holes = []
    for i in range(3):
        pixels = torch.zeros(24, 32)
        pixels[4 + i : 12 + i, 8:20] = 255
        pixels[0, 0] = 200  # a grey level near white: a hole
        pixels[1, 0] = 60  # near black: valid
        _write(folder / ("sub" if i == 2 else ".") / f"{i}.png", pixels)
        holes.append(pixels >= 128)
    (folder / "notes.txt").write_text("not a mask")
    return folder, holes


def test_mask_folder_hole_value(mask_folder):
    folder, holes = mask_folder
    white = MaskFolder(folder, hole_value=255)
    assert len(white) == 3
    for i in range(3):
        assert torch.equal(white[i][0], (~holes[i]).float())
    black = MaskFolder(folder, hole_value=0)
    assert torch.equal(black[0][0], holes[0].float())
    with pytest.raises(ValueError, match="hole_value"):
        MaskFolder(folder, hole_value=1)


def test_mask_folder_centre_crop_without_augmentation(mask_folder):
    folder, holes = mask_folder
    masks = MaskFolder(folder, size=16, hole_value=255, augment=False)
    assert torch.equal(masks[0][0], (~holes[0][4:20, 8:24]).float())
    # Smaller than the output: scaled up (nearest) to cover it first.
    big = MaskFolder(folder, size=48, hole_value=255, augment=False)
    assert big[0].shape == (1, 48, 48)


def test_mask_folder_augmentation_is_reproducible(mask_folder):
    folder, _ = mask_folder
    masks = MaskFolder(folder, size=16, hole_value=255, seed=1)
    first = [masks[i] for i in range(3)]
    assert all(m.shape == (1, 16, 16) and set(m.unique().tolist()) <= {0.0, 1.0} for m in first)
    again = MaskFolder(folder, size=16, hole_value=255, seed=1)
    assert all(torch.equal(a, again[i]) for i, a in enumerate(first))
    masks.set_epoch(1)
    assert not all(torch.equal(a, masks[i]) for i, a in enumerate(first))


def test_mask_folder_dilation_grows_holes(mask_folder):
    folder, _ = mask_folder
    # Same seed, so the same rotation, flip and crop; only the dilation differs.
    thin = MaskFolder(folder, size=24, hole_value=255, max_dilation=0, seed=4)
    fat = MaskFolder(folder, size=24, hole_value=255, max_dilation=3, seed=4)
    grew = [float(hole_ratio(fat[i][None])) >= float(hole_ratio(thin[i][None])) for i in range(3)]
    assert all(grew)


@pytest.mark.parametrize("quarter_turns", [1, 2, 3])
def test_rotation_keeps_a_square_hole_square_in_a_non_square_mask(quarter_turns):
    # affine_grid's coordinates are normalised per axis: a rotation built there turned this
    # 10x10 hole into 6x16 at 90 degrees. In pixel space it stays a 10x10 square (even sides:
    # the pixel centres map onto pixel centres, so nearest sampling is exact).
    holes = torch.zeros(1, 24, 32)
    holes[:, 4:14, 6:16] = 1
    rotated = _rotate(holes, quarter_turns * math.pi / 2)
    rows, cols = torch.nonzero(rotated[0], as_tuple=True)
    top, bottom, left, right = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    assert (bottom - top + 1, right - left + 1) == (10, 10)
    assert rotated.sum() == 100 and (rotated[0, top : bottom + 1, left : right + 1] == 1).all()
    # About the centre: the hole's centre keeps its distance to the map's centre, (11.5, 15.5).
    centre = ((top + bottom) / 2 - 11.5, (left + right) / 2 - 15.5)
    assert math.hypot(*centre) == pytest.approx(math.hypot(8.5 - 11.5, 10.5 - 15.5))


def test_rotation_by_zero_is_the_identity():
    holes = (torch.rand(1, 24, 32, generator=torch.Generator().manual_seed(8)) > 0.7).float()
    assert torch.equal(_rotate(holes, 0.0), holes)
    assert torch.equal(_rotate(holes, 2 * math.pi), holes)


def test_mask_folder_needs_images(tmp_path):
    with pytest.raises(FileNotFoundError, match="no mask images"):
        MaskFolder(tmp_path)


@pytest.mark.parametrize("suffix", [".tif", ".webp"])
def test_mask_folder_takes_every_image_suffix_the_image_folders_take(tmp_path, suffix):
    from PIL import Image

    pixels = torch.zeros(24, 32)
    pixels[4:12, 8:20] = 255
    Image.fromarray(pixels.to(torch.uint8).numpy(), mode="L").save(tmp_path / f"0{suffix}", lossless=True)
    folder = MaskFolder(tmp_path, hole_value=255, augment=False)
    assert len(folder) == 1
    assert torch.equal(folder[0][0], (pixels < 128).float())


def test_the_inpainting_modules_import_one_way():
    """No import circle in the subpackage: data knows nothing of masks (masks reads its files
    through data), and so on down."""
    import ast
    from pathlib import Path

    import torch_pconv.inpainting as package

    imports = {}
    for path in Path(package.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        found = (node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1)
        imports[path.stem] = {node.module for node in found} - {None}
    assert "masks" not in imports["data"]

    def follow(path: tuple[str, ...]) -> None:
        for module in imports.get(path[-1], ()):
            assert module not in path, f"import circle: {' -> '.join([*path, module])}"
            follow((*path, module))

    for module in imports:
        follow((module,))
