"""Images in and out (Pillow), the training Dataset of image crops and masks, and labelled PNG grids."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ._deps import require

__all__ = [
    "IMAGE_SUFFIXES",
    "InpaintingDataset",
    "list_images",
    "read_image",
    "read_mask",
    "save_grid",
    "seeded",
    "verify_images",
    "write_image",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
"""The suffixes of the files :func:`list_images` finds (in any case), images and masks alike."""


def seeded(*keys: int) -> torch.Generator:
    """A CPU generator seeded from integer keys (seed, epoch, index, ...), the same on every run."""
    seed = 0
    for key in keys:
        seed = (seed * 1_000_003 + key) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def list_images(root: str | Path) -> list[Path]:
    """The image files under the folder ``root`` (recursively), sorted: every file of a suffix in
    :data:`IMAGE_SUFFIXES`, in any case.

    Raises:
        FileNotFoundError: there is none (or no folder ``root``).

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from torch_pconv.inpainting import list_images, write_image
        >>> tmp = tempfile.TemporaryDirectory()
        >>> folder = Path(tmp.name)
        >>> for name in ("b.png", "a.JPG", "sub/c.webp"):
        ...     write_image(folder / name, torch.rand(3, 4, 4))
        >>> _ = (folder / "notes.txt").write_text("not an image")
        >>> [path.relative_to(folder).as_posix() for path in list_images(folder)]
        ['a.JPG', 'b.png', 'sub/c.webp']
        >>> tmp.cleanup()
    """
    files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return files


def read_image(path: str | Path) -> Tensor:
    """An image file as RGB floats in [0, 1], each mode at its own scale. Shape: ``(3, H, W)``.

    8-bit modes (RGB, L, P, CMYK, YCbCr, ...) are converted to RGB by Pillow and divided by 255;
    16-bit greyscale (``I;16``, ``I;16B``, ...; 16-bit PNG and TIFF) is divided by 65535, and so
    is 32-bit integer greyscale (``I``, which older Pillow gives 16-bit PNGs), clipped to [0, 1];
    float greyscale (``F``) is taken as [0, 1] and clipped. Greyscale is repeated over the three
    channels. An alpha channel (RGBA, LA, PA, or a palette's transparency) is dropped: the colour
    channels are read as stored, not composited over any background.

    Raises:
        OSError: the file is missing, not an image, damaged, or of a mode Pillow cannot convert;
            the message names the file.

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from torch_pconv.inpainting import read_image, write_image
        >>> tmp = tempfile.TemporaryDirectory()
        >>> folder = Path(tmp.name)
        >>> write_image(folder / "grey.png", torch.full((1, 2, 3), 0.2))
        >>> image = read_image(folder / "grey.png")  # greyscale, over three channels
        >>> image.shape, image[:, 0, 0]
        (torch.Size([3, 2, 3]), tensor([0.2000, 0.2000, 0.2000]))
        >>> tmp.cleanup()
    """
    pil = require("PIL.Image")
    try:
        with pil.open(path) as file:
            return _rgb(file)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as error:  # PIL.UnidentifiedImageError is an OSError
        raise OSError(f"{path}: not a readable image ({error})") from error


def read_mask(path: str | Path, hole_value: int = 0) -> Tensor:
    """A mask image as 1 (valid) and 0 (hole); ``hole_value`` (0 or 255) marks the holes, grey
    levels go to the nearer of black and white (16-bit masks at their own scale, as in
    :func:`read_image`; colour masks by their luma; an alpha channel is ignored).

    Args:
        path: the mask image.
        hole_value: 0 (black holes) or 255 (white holes).

    Raises:
        OSError: the file is missing, not an image, or damaged; the message names the file.

    Shape:
        - output: ``(1, H, W)``, float, 1 valid, 0 hole

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from torch_pconv.inpainting import read_mask, write_image
        >>> tmp = tempfile.TemporaryDirectory()
        >>> folder = Path(tmp.name)
        >>> mask = torch.ones(1, 4, 4)
        >>> mask[:, 1:3, 1:3] = 0  # black holes
        >>> write_image(folder / "mask.png", mask)
        >>> torch.equal(read_mask(folder / "mask.png"), mask)
        True
        >>> torch.equal(read_mask(folder / "mask.png", hole_value=255), 1 - mask)  # white
        True
        >>> tmp.cleanup()
    """
    pil = require("PIL.Image")
    try:
        with pil.open(path) as file:
            if file.mode in _HIGH_BIT:
                white = _grey(file) >= 0.5
            else:
                grey = file.convert("L")
                white = _bytes(grey, 1)[None, :, :, 0] >= 128
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as error:
        raise OSError(f"{path}: not a readable mask image ({error})") from error
    return (white if hole_value == 0 else ~white).float()


def verify_images(paths: Sequence[str | Path]) -> None:
    """Check that every file opens as an image and passes Pillow's ``verify()`` (for PNG, the
    checksums of every chunk: a truncated or damaged file fails), without decoding the pixels.

    Raises:
        OSError: naming the first file that fails, in the order given.
    """
    pil = require("PIL.Image")
    for path in paths:
        try:
            with pil.open(path) as file:
                file.verify()
        except (OSError, ValueError, SyntaxError) as error:  # some plugins raise SyntaxError on bad data
            raise OSError(f"{path}: not a readable image ({error}); remove or replace it") from error


# Greyscale modes of more than 8 bits, which Pillow's convert("RGB") or ("L") would clip.
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_HIGH_BIT = (*_SIXTEEN_BIT, "I", "F")


def _bytes(image: Any, channels: int) -> Tensor:
    """The bytes of an 8-bit image as ``(H, W, channels)`` uint8."""
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(image.height, image.width, channels)


def _grey(image: Any) -> Tensor:
    """A greyscale image of more than 8 bits as floats in [0, 1]. Shape: ``(1, H, W)``."""
    height, width = image.height, image.width
    if image.mode in _SIXTEEN_BIT:
        pairs = _bytes(image, 2).int()
        big = image.mode == "I;16B" or (image.mode == "I;16N" and sys.byteorder == "big")
        values = pairs[..., 0] * 256 + pairs[..., 1] if big else pairs[..., 1] * 256 + pairs[..., 0]
        return (values.float() / 65535)[None]
    if image.mode == "I":  # 32-bit integers in the machine's order, taken as 16-bit data
        ints = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.int32).view(1, height, width)
        return (ints.double() / 65535).clamp(0, 1).float()
    floats = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.float32).view(1, height, width)
    return floats.nan_to_num(0.0).clamp(0, 1)


def _rgb(image: Any) -> Tensor:
    if image.mode in _HIGH_BIT:
        return _grey(image).expand(3, -1, -1).contiguous()
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # what Pillow asks for palette transparency; the alpha is dropped next
    rgb = image.convert("RGB")
    return _bytes(rgb, 3).permute(2, 0, 1).float() / 255


def write_image(path: str | Path, image: Tensor) -> None:
    """Write an image of floats in [0, 1] (clipped) as an 8-bit RGB or greyscale file.

    Args:
        path: the file; its suffix picks the format (``.png``: a PNG). Its folder is made if missing.
        image: ``(3, H, W)`` (RGB) or ``(1, H, W)`` (greyscale).

    Raises:
        ValueError: Pillow writes no format of that suffix.
        OSError: the file cannot be written.

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from torch_pconv.inpainting import read_image, write_image
        >>> tmp = tempfile.TemporaryDirectory()
        >>> folder = Path(tmp.name)
        >>> image = torch.rand(3, 8, 8)
        >>> write_image(folder / "out" / "image.png", image)
        >>> bool((read_image(folder / "out" / "image.png") - image).abs().max() < 1 / 255)
        True
        >>> tmp.cleanup()
    """
    pil = require("PIL.Image")
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    mode = "RGB" if pixels.shape[0] == 3 else "L"
    array = pixels.permute(1, 2, 0).contiguous() if mode == "RGB" else pixels[0].contiguous()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pil.frombytes(mode, (pixels.shape[-1], pixels.shape[-2]), bytes(array.flatten().tolist())).save(path)


def save_grid(path: str | Path, rows: Sequence[tuple[str, Tensor]], gap: int = 2, zoom: int = 1) -> None:
    """A PNG grid: one labelled row per ``(label, images)``, images ``(N, 3, H, W)`` in [0, 1].

    Args:
        path: the PNG file; its folder is made if missing.
        rows: ``(label, images)`` pairs, each of the first one's shape.
        gap: white pixels between images.
        zoom: each image scaled up by this factor (nearest).

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from torch_pconv.inpainting import read_image, save_grid
        >>> tmp = tempfile.TemporaryDirectory()
        >>> folder = Path(tmp.name)
        >>> images = torch.rand(2, 3, 8, 8)
        >>> rows = [("input", images), ("flipped", images.flip(-1))]
        >>> save_grid(folder / "grid.png", rows, zoom=2)
        >>> read_image(folder / "grid.png").shape  # 2 rows of 2 images, 16 px, and labels
        torch.Size([3, 34, 84])
        >>> tmp.cleanup()
    """
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

    Raises:
        ValueError: no images.

    Shape:
        - item: image ``(3, size, size)``, mask ``(1, size, size)``

    Examples:
        >>> import torch
        >>> from torch_pconv.inpainting import InpaintingDataset, MaskGenerator
        >>> images = [torch.rand(3, 24, 32), torch.rand(3, 12, 12)]  # the second is scaled up
        >>> dataset = InpaintingDataset(images, MaskGenerator(16, length=10), size=16, length=4)
        >>> image, mask = dataset[3]
        >>> len(dataset), image.shape, mask.shape
        (4, torch.Size([3, 16, 16]), torch.Size([1, 16, 16]))
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
