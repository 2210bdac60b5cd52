"""Hole masks for training and evaluation: a seeded generator conditioned on the paper's
hole-to-image area ratio buckets, and a Dataset of mask PNGs (such as NVIDIA's irregular mask
set) with the paper's augmentation. Masks hold 1 for valid pixels and 0 for holes.

The drawing itself lives in :func:`torch_pconv.holes.irregular_holes`, the library's one home of
mask generation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from torch_pconv.holes import irregular_holes

from .data import IMAGE_SUFFIXES, list_images, read_mask, seeded

__all__ = ["BUCKETS", "MaskFolder", "MaskGenerator", "bucket_of", "hole_ratio"]

BUCKETS: tuple[tuple[float, float], ...] = ((0.01, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.4), (0.4, 0.5), (0.5, 0.6))
"""The hole-to-image area ratio buckets of the paper's Table 1, each ``(low, high]``, in order
(see :func:`bucket_of`)."""
# The paper's border constraint keeps holes 50 pixels from the border of a 512-pixel image.
_MARGIN = 50 / 512


def hole_ratio(mask: Tensor) -> Tensor:
    """The hole-to-image area ratio of each mask, in float64.

    Args:
        mask: 1 valid, 0 hole.

    Shape:
        - mask: ``(B, 1, H, W)`` or ``(B, H, W)``; output: ``(B,)``

    Examples:
        >>> import torch
        >>> from torch_pconv.inpainting import hole_ratio
        >>> mask = torch.ones(2, 1, 4, 4)
        >>> mask[0, :, :2, :2] = 0  # 4 holes in 16 pixels
        >>> hole_ratio(mask)
        tensor([0.2500, 0.0000], dtype=torch.float64)
    """
    # Counts in float64, so that 30 holes in 100 pixels is 0.3 exactly and falls in (0.2, 0.3].
    return (1 - mask.flatten(1).double()).sum(1) / mask[0].numel()


def bucket_of(ratio: float) -> int | None:
    """The index into :data:`BUCKETS` of the bucket holding ``ratio``, or None outside them all.

    Args:
        ratio: a hole-to-image area ratio, as :func:`hole_ratio` gives it.

    Examples:
        >>> from torch_pconv.inpainting import BUCKETS, bucket_of
        >>> bucket_of(0.3), BUCKETS[2]  # open below, closed above
        (2, (0.2, 0.3))
        >>> bucket_of(0.7) is None
        True
    """
    for index, (low, high) in enumerate(BUCKETS):
        if low < ratio <= high:
            return index
    return None


class MaskGenerator(Dataset[Tensor]):
    """Irregular masks, brush strokes of varying width plus optional boxes, drawn on demand.

    Item ``i`` is drawn from a generator seeded with ``(seed, i)``: the same on every run, in
    every process and DataLoader worker. With ``pool``, only ``pool`` distinct masks are drawn
    (each once, then kept in memory) and item ``i`` is one of the eight flips and transposes of
    mask ``i % pool`` (the four flips for non-square masks): a fixed mask set with augmentation,
    as the paper trains on, for when drawing a mask costs more than the training step that uses it.

    Args:
        size: mask side, or ``(H, W)``.
        length: number of distinct masks.
        buckets: indices into :data:`BUCKETS`; item ``i`` falls in ``buckets[i % len(buckets)]``.
            None: no ratio condition (``strokes`` strokes, ``boxes`` boxes).
        border: True keeps holes ``margin`` pixels from the border (the paper's border
            constraint), False does not, None alternates (half and half, as in the paper's test set).
        margin: default 50/512 of the smaller side, the paper's 50 pixels at 512.
        strokes: strokes per mask (unconditioned masks only).
        boxes: boxes per mask.
        seed: the seed of every draw.
        pool: the number of distinct masks (see above); None: every item is drawn afresh.

    Raises:
        ValueError: ``buckets`` holds no index into :data:`BUCKETS`, or ``pool`` is under 1.
        IndexError: (on indexing) an item past ``length``.

    Shape:
        - item: ``(1, H, W)``, float, 1 valid, 0 hole

    Examples:
        >>> from torch_pconv.inpainting import MaskGenerator, bucket_of, hole_ratio
        >>> masks = MaskGenerator(32, length=6)  # item i in bucket i % 6
        >>> masks[2].shape
        torch.Size([1, 32, 32])
        >>> bucket_of(float(hole_ratio(masks[2][None])))
        2
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        length: int = 10_000,
        buckets: Sequence[int] | None = tuple(range(len(BUCKETS))),
        border: bool | None = None,
        margin: int | None = None,
        strokes: int = 4,
        boxes: int = 0,
        seed: int = 0,
        pool: int | None = None,
    ) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        if buckets is not None and (not buckets or any(not 0 <= b < len(BUCKETS) for b in buckets)):
            raise ValueError(
                f"MaskGenerator: buckets must be indices into BUCKETS (0 to {len(BUCKETS) - 1}), got {buckets}"
            )
        self.length, self.buckets, self.border = length, None if buckets is None else tuple(buckets), border
        self.margin = max(1, round(_MARGIN * min(self.size))) if margin is None else margin
        self.strokes, self.boxes, self.seed = strokes, boxes, seed
        if pool is not None and pool < 1:
            raise ValueError(f"MaskGenerator: pool must be a positive number of masks, got {pool}")
        self.pool = pool
        # The pool's masks as drawn, as bool (a quarter of the memory of float); each process
        # and DataLoader worker fills its own.
        self._drawn: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Tensor:
        if not 0 <= index < self.length:
            raise IndexError(f"MaskGenerator: index {index} out of range for {self.length} masks")
        if self.pool is None:
            return self._draw(index)
        base, turn = index % self.pool, index // self.pool
        if base not in self._drawn:
            self._drawn[base] = self._draw(base).bool()
        mask = self._drawn[base]
        # The eight symmetries of the square (flips only for non-square masks) keep the hole ratio
        # and the border margin.
        if turn & 1:
            mask = mask.flip(-1)
        if turn & 2:
            mask = mask.flip(-2)
        if turn & 4 and self.size[0] == self.size[1]:
            mask = mask.transpose(-1, -2)
        return mask.float()

    def _draw(self, index: int) -> Tensor:
        ratio = None if self.buckets is None else BUCKETS[self.buckets[index % len(self.buckets)]]
        rounds = index // (1 if self.buckets is None else len(self.buckets))
        border = rounds % 2 == 0 if self.border is None else self.border
        return irregular_holes(
            (1, *self.size),
            hole_ratio=ratio,
            margin=self.margin if border else 0,
            strokes=self.strokes,
            boxes=self.boxes,
            generator=seeded(self.seed, index),
        )


class MaskFolder(Dataset[Tensor]):
    """Masks from a folder of images (the files :func:`~torch_pconv.inpainting.list_images`
    finds), with the paper's augmentation: random dilation, rotation and cropping.

    Args:
        root: the folder (searched recursively).
        size: output side, or ``(H, W)``; masks smaller than this are resized up (nearest) first.
            None: each mask at its own size, not augmented.
        hole_value: the pixel value that marks a hole, 0 (black) or 255 (white); grey levels
            go to the nearer one. Check your mask set: conventions differ.
        augment: random dilation of the holes (by 0 to ``max_dilation`` pixels), rotation by any
            angle, horizontal flip, and a random crop; False: a centre crop.
        max_dilation: the largest dilation, in pixels.
        seed: item ``i`` in epoch ``e`` is augmented by a generator seeded with ``(seed, e, i)``.

    Raises:
        ValueError: ``hole_value`` is neither 0 nor 255.
        FileNotFoundError: no mask image under ``root``.
        OSError: (on indexing) a file that is not a readable image.

    Shape:
        - item: ``(1, H, W)``, float, 1 valid, 0 hole

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from torch_pconv.inpainting import MaskFolder, write_image
        >>> tmp = tempfile.TemporaryDirectory()
        >>> folder = Path(tmp.name)
        >>> mask = torch.ones(1, 40, 40)
        >>> mask[:, 10:20, 10:30] = 0  # a black hole
        >>> write_image(folder / "0.png", mask)
        >>> masks = MaskFolder(folder, size=32)  # augmented 32x32 crops
        >>> len(masks), masks[0].shape
        (1, torch.Size([1, 32, 32]))
        >>> torch.equal(MaskFolder(folder)[0], mask)  # size None: as stored
        True
        >>> tmp.cleanup()
    """

    def __init__(
        self,
        root: str | Path,
        size: int | tuple[int, int] | None = None,
        hole_value: int = 0,
        augment: bool = True,
        max_dilation: int = 3,
        seed: int = 0,
    ) -> None:
        if hole_value not in (0, 255):
            raise ValueError(f"MaskFolder: hole_value must be 0 (black holes) or 255 (white holes), got {hole_value}")
        try:
            self.files = list_images(root)  # the files an image folder takes, of the same suffixes
        except FileNotFoundError:
            raise FileNotFoundError(f"MaskFolder: no mask images ({', '.join(IMAGE_SUFFIXES)}) under {root}") from None
        self.size = (size, size) if isinstance(size, int) else size
        self.hole_value, self.augment, self.max_dilation, self.seed = hole_value, augment, max_dilation, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw new augmentations: item ``i`` of epoch ``e`` is augmented by ``(seed, e, i)``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tensor:
        mask = read_mask(self.files[index], self.hole_value)
        if self.size is None:
            return mask
        if not self.augment:
            return _centre_crop(_cover(mask, self.size), self.size)
        generator = seeded(self.seed, self.epoch, index)
        holes = 1 - mask
        dilation = int(torch.randint(self.max_dilation + 1, (1,), generator=generator))
        if dilation:
            holes = F.max_pool2d(holes[None], 2 * dilation + 1, stride=1, padding=dilation)[0]
        angle = float(torch.rand(1, generator=generator)) * 2 * math.pi
        holes = _rotate(holes, angle)
        if bool(torch.rand(1, generator=generator) < 0.5):
            holes = holes.flip(-1)
        holes = _cover(holes, self.size)
        top = int(torch.randint(holes.shape[-2] - self.size[0] + 1, (1,), generator=generator))
        left = int(torch.randint(holes.shape[-1] - self.size[1] + 1, (1,), generator=generator))
        return 1 - holes[:, top : top + self.size[0], left : left + self.size[1]]


def _rotate(holes: Tensor, angle: float) -> Tensor:
    """Rotate a hole map about its centre by ``angle`` radians in pixel space (nearest neighbour;
    what comes from outside is valid).

    ``affine_grid`` works in coordinates normalised to [-1, 1] on each axis, in which a rotation
    of a non-square map would stretch it (a 10×10 hole in a 24×32 map came out 6×16 at 90°);
    the rotation is conjugated by the scaling to pixels: ``x_n = x / (W/2)``, ``y_n = y / (H/2)``.
    """
    cos, sin = math.cos(angle), math.sin(angle)
    height, width = holes.shape[-2:]
    theta = torch.tensor([[cos, -sin * height / width, 0.0], [sin * width / height, cos, 0.0]]).unsqueeze(0)
    grid = F.affine_grid(theta, [1, *holes.shape], align_corners=False)
    return F.grid_sample(holes[None], grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]


def _cover(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize up (nearest) so that the mask covers ``size``, keeping its aspect ratio."""
    scale = max(size[0] / mask.shape[-2], size[1] / mask.shape[-1])
    if scale <= 1:
        return mask
    shape = (math.ceil(mask.shape[-2] * scale), math.ceil(mask.shape[-1] * scale))
    return F.interpolate(mask[None], size=shape, mode="nearest")[0]


def _centre_crop(mask: Tensor, size: tuple[int, int]) -> Tensor:
    top, left = (mask.shape[-2] - size[0]) // 2, (mask.shape[-1] - size[1]) // 2
    return mask[:, top : top + size[0], left : left + size[1]]
