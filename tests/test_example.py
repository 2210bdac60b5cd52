"""The inpainting example (examples/inpainting) learns, and its script writes its figure."""

from __future__ import annotations

import importlib
import struct
import sys
import zlib
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from types import ModuleType

import pytest
import torch
from helpers import seeded

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "inpainting"
MODULES = ("data", "model", "train")  # the example's modules, imported by their plain names as the script does


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """examples/inpainting/train.py as a module; sys.path, sys.modules and the thread count restored afterwards."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    for name in MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: threads only contend with each other and with xdist workers
    yield importlib.import_module("train")
    torch.set_num_threads(threads)
    for name in MODULES:
        sys.modules.pop(name, None)


def read_png(path: Path) -> torch.Tensor:
    """Decode an 8-bit RGB PNG written with filter type 0 (what the example writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = {}, 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(kind + body)
        chunks[kind] = body
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, color) == (8, 2)
    rows = torch.frombuffer(bytearray(zlib.decompress(chunks[b"IDAT"])), dtype=torch.uint8).view(height, -1)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(height, width, 3)


def test_tiny_model_learns_to_fill_holes(example):
    torch.manual_seed(0)
    model = example.PConvUNet(widths=(16, 32, 32), kernels=(5, 3, 3))
    image, mask = example.sample(8, 32, seeded(123))  # a fixed test batch
    assert 0 < (1 - mask).mean() < 0.5
    _, valid_before, hole_before = example.evaluate(model, image, mask)
    history = example.train(model, steps=40, size=32, batch=8, seed=0, lr=3e-3, show_progress=False)
    output, valid_after, hole_after = example.evaluate(model, image, mask)
    assert output.shape == image.shape
    assert hole_after < 0.5 * hole_before
    assert valid_after < 0.5 * valid_before
    first, last = (sum(hole for _, hole in steps) / len(steps) for steps in (history[:5], history[-5:]))
    assert last < 0.5 * first


def test_holes_shrink_through_the_encoder(example):
    model = example.PConvUNet(widths=(4, 4, 4), kernels=(5, 3, 3))
    image, mask = example.sample(2, 32, seeded(1))
    x, m = image, mask.expand_as(image)
    holes = [float((m == 0).float().mean())]
    for block in model.encoder:
        x, m = block(x, m)
        holes.append(float((m == 0).float().mean()))
    assert holes[0] > 0 and holes[-1] < holes[0]
    assert all(b <= a for a, b in pairwise(holes))


def test_script_writes_the_grid(example, tmp_path):
    figure = tmp_path / "doc" / "grid.png"
    losses = example.main(
        ["--steps", "2", "--size", "32", "--batch", "2", "--out", str(tmp_path / "out"), "--figure", str(figure)]
    )
    assert set(losses) == {"valid_before", "hole_before", "valid", "hole"}
    first = read_png(tmp_path / "out" / "inpainting.png")
    assert torch.equal(first, read_png(figure))
    # Three rows (masked input, output, ground truth) of six 32-pixel images, zoomed twice, 2-pixel gaps.
    assert first.shape == (2 * (3 * 32 + 2 * 2), 2 * (6 * 32 + 5 * 2), 3)


def test_grid_shows_holes_in_white(example):
    image, mask = example.sample(2, 32, seeded(2))
    pixels = example.grid(image, mask, image, zoom=1)
    top = pixels[:32, :32]  # the first masked input
    assert (top[mask[0, 0] == 0] == 255).all()
    assert torch.equal(pixels[2 * 34 : 2 * 34 + 32, :32], (image[0].permute(1, 2, 0) * 255).round().to(torch.uint8))
