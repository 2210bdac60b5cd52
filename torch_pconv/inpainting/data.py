"""Images in and out (Pillow), the training Dataset of image crops and masks, and labelled PNG grids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ._deps import require
from .masks import seeded

__all__ = ["IMAGE_SUFFIXES", "InpaintingDataset", "list_images", "read_image", "read_mask", "save_grid", "write_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(root: str | Path) -> list[Path]:
    """The image files under ``root`` (recursively), sorted."""
    files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return files


def read_image(path: str | Path) -> Tensor:
    """An image file as RGB floats in [0, 1]. Shape: ``(3, H, W)``."""
    image = require("PIL.Image")
    with image.open(path) as file:
        rgb = file.convert("RGB")
        data = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
        return data.view(rgb.height, rgb.width, 3).permute(2, 0, 1).float() / 255


def read_mask(path: str | Path, hole_value: int = 0) -> Tensor:
    """A mask image as 1 (valid) and 0 (hole); ``hole_value`` (0 or 255) marks the holes, grey
    levels go to the nearer of 0 and 255. Shape: ``(1, H, W)``."""
    image = require("PIL.Image")
    with image.open(path) as file:
        grey = file.convert("L")
        data = torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8).view(1, grey.height, grey.width)
    white = data >= 128
    return (white if hole_value == 0 else ~white).float()


def write_image(path: str | Path, image: Tensor) -> None:
    """Write ``(3, H, W)`` or ``(1, H, W)`` floats in [0, 1] as an 8-bit PNG (or by the suffix)."""
    pil = require("PIL.Image")
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    mode = "RGB" if pixels.shape[0] == 3 else "L"
    array = pixels.permute(1, 2, 0).contiguous() if mode == "RGB" else pixels[0].contiguous()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pil.frombytes(mode, (pixels.shape[-1], pixels.shape[-2]), bytes(array.flatten().tolist())).save(path)


def save_grid(path: str | Path, rows: Sequence[tuple[str, Tensor]], gap: int = 2, zoom: int = 1) -> None:
    """A PNG grid: one labelled row per ``(label, images)``, images ``(N, 3, H, W)`` in [0, 1]."""
    pil = require("PIL.Image")
    draw = require("PIL.ImageDraw")
    count, _, height, width = rows[0][1].shape
    height, width = height * zoom, width * zoom
    label_width = 8 + 6 * max(len(label) for label, _ in rows)  # the default bitmap font: ~6 px a character
    canvas = torch.ones(3, len(rows) * (height + gap) - gap, label_width + count * (width + gap) - gap)
    for r, (_, images) in enumerate(rows):
        images = images.detach().float().cpu().clamp(0, 1)
        if zoom > 1:
            images = F.interpolate(images, scale_factor=float(zoom), mode="nearest")
        for c, image in enumerate(images):
            top, left = r * (height + gap), label_width + c * (width + gap)
            canvas[:, top : top + height, left : left + width] = image
    pixels = (canvas * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    picture = pil.frombytes("RGB", (canvas.shape[-1], canvas.shape[-2]), bytes(pixels.flatten().tolist()))
    pen = draw.Draw(picture)
    for r, (label, _) in enumerate(rows):
        pen.text((4, r * (height + gap) + height // 2 - 5), label, fill=(0, 0, 0))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)


class InpaintingDataset(Dataset[tuple[Tensor, Tensor]]):
    """Random square crops of images, each paired with a mask.

    Item ``i`` in epoch ``e`` is image ``i % len(images)``, cropped (after scaling up images
    smaller than the crop) and flipped by a generator seeded with ``(seed, e, i)``, with mask
    ``(e * len(self) + i) % len(masks)``: reproducible, and the same in any process or worker.

    Args:
        images: image files, or ``(3, H, W)`` tensors in [0, 1].
        masks: a Dataset of ``(1, size, size)`` masks (a MaskGenerator or a MaskFolder).
        size: crop side.
        length: items per epoch (default: one per image).
        seed: the seed of the crops.
        cache: keep decoded images in memory (each DataLoader worker keeps its own copy).

    Shape:
        - item: image ``(3, size, size)``, mask ``(1, size, size)``
    """

    def __init__(
        self,
        images: Sequence[str | Path | Tensor],
        masks: Dataset[Tensor],
        size: int,
        length: int | None = None,
        seed: int = 0,
        cache: bool = False,
    ) -> None:
        if not images:
            raise ValueError("InpaintingDataset: no images")
        self.images, self.masks, self.size, self.seed = list(images), masks, size, seed
        self.length = len(self.images) if length is None else length
        self.epoch = 0
        self.cache: dict[int, Tensor] | None = {} if cache else None

    def set_epoch(self, epoch: int) -> None:
        """Draw new crops and masks (and new mask augmentations, for a MaskFolder)."""
        self.epoch = epoch
        set_epoch = getattr(self.masks, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self._image(index % len(self.images))
        generator = seeded(self.seed, self.epoch, index)
        image = random_crop(image, self.size, generator)
        if bool(torch.rand(1, generator=generator) < 0.5):
            image = image.flip(-1)
        mask = self.masks[(self.epoch * self.length + index) % len(self.masks)]  # type: ignore[arg-type]
        return image, mask

    def _image(self, index: int) -> Tensor:
        source = self.images[index]
        if isinstance(source, Tensor):
            return source
        if self.cache is None:
            return read_image(source)
        if index not in self.cache:
            self.cache[index] = read_image(source)
        return self.cache[index]


def random_crop(image: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """A random ``size``-pixel square of ``image`` (C, H, W), scaled up first if it is smaller."""
    height, width = image.shape[-2:]
    if min(height, width) < size:
        scale = size / min(height, width)
        shape = (max(size, round(height * scale)), max(size, round(width * scale)))
        image = F.interpolate(image[None], size=shape, mode="bilinear", align_corners=False)[0]
        height, width = shape
    top = int(torch.randint(height - size + 1, (1,), generator=generator))
    left = int(torch.randint(width - size + 1, (1,), generator=generator))
    return image[:, top : top + size, left : left + size]
