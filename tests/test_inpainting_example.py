"""examples/inpainting/train.py on scikit-image's photographs, in a tiny setting: it trains,
evaluates on the held-out photographs against both baselines, and writes its figure."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("PIL")
pytest.importorskip("pytorch_msssim")
pytest.importorskip("skimage")

from torch_pconv.inpainting import BUCKETS, read_image

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "inpainting" / "train.py"


def _example():
    spec = importlib.util.spec_from_file_location("inpainting_example", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_split_keeps_the_stereo_pair_on_one_side():
    example = _example()
    assert {"motorcycle_left", "motorcycle_right"} <= set(example.EVAL)
    assert not set(example.TRAIN) & set(example.EVAL)


def test_photographs_are_real_and_scaled():
    example = _example()
    images = example.photographs(("coffee", "camera"), 64)
    assert [min(i.shape[-2:]) for i in images] == [64, 64]
    assert all(i.shape[0] == 3 and 0 <= i.min() and i.max() <= 1 for i in images)
    assert images[0].std() > 0.05  # a photograph, not a blank


@pytest.mark.slow
def test_tiny_run_writes_metrics_and_figure(tmp_path):
    threads = torch.get_num_threads()
    try:
        argv = "--steps 2 --fine-tune-steps 1 --size 16 --batch 2 --layers 2 --widths 4 8 --side 32 --crops 1"
        argv += " --workers 0 --no-progress"
        summary = _example().main(
            [*argv.split(), "--out", str(tmp_path), "--figure", str(tmp_path / "doc" / "fig.png")]
        )
    finally:
        torch.set_num_threads(threads)
    assert summary["steps"] == 3
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert set(saved["results"]) == {"PConvUNet", "mean colour", "diffusion"}
    assert saved["results"]["diffusion"][-1]["images"] == 3 * len(BUCKETS)  # 3 photographs, 1 crop each
    figure = read_image(tmp_path / "doc" / "fig.png")
    assert torch.equal(figure, read_image(tmp_path / "inpainting.png"))
    assert figure.shape[-2] == 5 * 32 + 4 * 2  # five labelled rows of 16-pixel crops, zoomed twice
