"""Train the PConv U-Net on synthetic images and holes, and save a grid of its results.

python examples/inpainting/train.py                      # a few minutes on a CPU
python examples/inpainting/train.py --figure doc/inpainting.png
"""

from __future__ import annotations

import argparse
import math
import struct
import sys
import zlib
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(HERE))

from data import sample  # noqa: E402
from model import PConvUNet, inpainting_loss  # noqa: E402

VALID_WEIGHT, HOLE_WEIGHT = 1.0, 6.0  # Liu et al.'s weights


def progress(steps: int, enabled: bool) -> Iterable[int]:
    """range(steps), behind a tqdm progress bar when tqdm is installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return range(steps)
    return tqdm(range(steps), desc="training", disable=not enabled)


def train(
    model: PConvUNet, steps: int, size: int, batch: int, seed: int, lr: float = 2e-3, show_progress: bool = True
) -> list[tuple[float, float]]:
    """Train ``model`` with Adam, the learning rate decayed to 0 on a cosine, on fresh synthetic
    batches; return the (valid, hole) loss terms of every step."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    model.train()
    history = []
    bar = progress(steps, show_progress)
    for step in bar:
        image, mask = sample(batch, size, generator)
        valid, hole = inpainting_loss(model(image, mask), image, mask)
        optimizer.zero_grad()
        (VALID_WEIGHT * valid + HOLE_WEIGHT * hole).backward()
        optimizer.step()
        schedule.step()
        history.append((valid.item(), hole.item()))
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(valid=f"{valid.item():.4f}", hole=f"{hole.item():.4f}", refresh=False)
        elif show_progress and (step + 1) % max(1, steps // 10) == 0:
            print(f"step {step + 1}/{steps}: valid {valid.item():.4f}, hole {hole.item():.4f}")
    return history


@torch.no_grad()
def evaluate(model: PConvUNet, image: Tensor, mask: Tensor) -> tuple[Tensor, float, float]:
    """The model's output in eval mode, and its valid and hole L1 terms."""
    model.eval()
    output = model(image, mask)
    valid, hole = inpainting_loss(output, image, mask)
    return output, valid.item(), hole.item()


def grid(image: Tensor, mask: Tensor, output: Tensor, gap: int = 2, zoom: int = 2) -> Tensor:
    """Three rows, the masked input (holes in white), the output and the ground truth, one column
    per image, as an (H, W, 3) uint8 image."""
    masked = image * mask + (1 - mask)
    cells = torch.stack([masked, output.clamp(0, 1), image])  # (3 rows, B columns, 3, h, w)
    cells = torch.nn.functional.pad(cells, (0, gap, 0, gap), value=1.0)  # white lines between cells
    rows, columns, _, h, w = cells.shape
    pixels = cells.permute(0, 3, 1, 4, 2).reshape(rows * h, columns * w, 3)[:-gap, :-gap]
    pixels = pixels.repeat_interleave(zoom, 0).repeat_interleave(zoom, 1)
    return (pixels * 255).round().to(torch.uint8)


def write_png(path: Path, pixels: Tensor) -> None:
    """Write an (H, W, 3) uint8 image as a PNG, with no dependency but zlib."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width, _ = pixels.shape
    rows = b"".join(b"\0" + bytes(row.flatten().tolist()) for row in pixels)  # filter type 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1200, help="training steps (default: 1200)")
    parser.add_argument("--size", type=int, default=64, help="image side, a multiple of 32 (default: 64)")
    parser.add_argument("--batch", type=int, default=16, help="batch size (default: 16)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--out", type=Path, default=HERE / "out", help="output folder")
    parser.add_argument("--figure", type=Path, help="also write the grid here (e.g. doc/inpainting.png)")
    args = parser.parse_args(argv)
    if args.size % 32:
        parser.error(f"--size {args.size}: expected a multiple of 32 (the encoder halves it five times)")

    # A fixed test batch, drawn apart from the training stream.
    image, mask = sample(6, args.size, torch.Generator().manual_seed(args.seed + 10_000))
    torch.manual_seed(args.seed)
    model = PConvUNet()
    _, valid0, hole0 = evaluate(model, image, mask)
    train(model, args.steps, args.size, args.batch, args.seed)
    output, valid, hole = evaluate(model, image, mask)
    print(f"test batch L1, valid pixels: {valid0:.4f} -> {valid:.4f}; holes: {hole0:.4f} -> {hole:.4f}")

    pixels = grid(image, mask, output)
    for path in [args.out / "inpainting.png", *([args.figure] if args.figure else [])]:
        write_png(path, pixels)
        print(f"wrote {path} (rows: masked input, output, ground truth)")
    return {"valid_before": valid0, "hole_before": hole0, "valid": valid, "hole": hole}


if __name__ == "__main__":
    main()
