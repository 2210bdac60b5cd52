"""Train the small configuration of torch_pconv.inpainting on scikit-image's photographs, then
hold it against mean-colour and diffusion fills on photographs it never saw.

    python examples/inpainting/train.py                               # about 10 minutes on 2 CPU cores
    python examples/inpainting/train.py --figure doc/inpainting.png   # also write the figure there

Needs the inpainting extra and scikit-image (for its bundled photographs):
pip install "torch_pconv[inpainting]" scikit-image
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from torch_pconv.inpainting import (
    BUCKETS,
    TrainConfig,
    evaluate,
    evaluation_set,
    format_table,
    inpaint,
    load_model,
    read_image,
    save_grid,
    train,
    write_image,
)
from torch_pconv.inpainting.evaluate import BASELINES

HERE = Path(__file__).resolve().parent
# Photographs in scikit-image's wheel (no download). The stereo pair stays on the evaluation
# side: its two views share most of their content, so one must not be trained on.
TRAIN = ("astronaut", "chelsea", "rocket", "hubble_deep_field", "retina", "ihc", "camera", "coins", "moon",
         "grass", "gravel", "brick", "page")  # fmt: skip
EVAL = ("motorcycle_left", "motorcycle_right", "coffee")


def photographs(names: tuple[str, ...], side: int) -> list[torch.Tensor]:
    """scikit-image's photographs as RGB in [0, 1], scaled so that the shorter side is ``side``."""
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    images = []
    for name in names:
        path = next(folder.glob(f"{name}.*"))
        image = read_image(path)
        scale = side / min(image.shape[-2:])
        shape = (round(image.shape[-2] * scale), round(image.shape[-1] * scale))
        images.append(F.interpolate(image[None], size=shape, mode="bilinear", antialias=True)[0].clamp(0, 1))
    return images


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=7500, help="first phase steps (default: %(default)s)")
    parser.add_argument("--fine-tune-steps", type=int, default=400, help="fine-tuning steps (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=3e-3, help="first phase peak learning rate (default: %(default)s)")
    parser.add_argument("--warmup-steps", type=int, default=100, help="warm-up of the cosine schedule")
    parser.add_argument("--mask-pool", type=int, default=3000, help="distinct generated masks (default: %(default)s)")
    parser.add_argument("--size", type=int, default=64, help="crop side (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=16, help="batch (default: %(default)s)")
    parser.add_argument("--layers", type=int, default=5, help="encoder depth (default: %(default)s)")
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128, 128], help="encoder widths")
    parser.add_argument("--side", type=int, default=256, help="photographs scaled to this shorter side")
    parser.add_argument("--crops", type=int, default=8, help="evaluation crops per photograph (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    # With the masks drawn once (the pool) and the photographs in memory, loading a batch costs
    # little next to the step: both cores compute, and no worker process competes with them.
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=HERE / "out", help="output folder")
    parser.add_argument("--figure", type=Path, help="also write the figure here (e.g. doc/inpainting.png)")
    parser.add_argument("--resume", action="store_true", help="continue the run in OUT (default: start afresh)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    # The training photographs go to a folder, as the command line would take them.
    folder = args.out / "train-images"
    for name, image in zip(TRAIN, photographs(TRAIN, args.side), strict=True):
        write_image(folder / f"{name}.png", image)
    config = TrainConfig(
        images=str(folder),
        out=str(args.out / "run"),
        size=args.size,
        batch=args.batch,
        steps=args.steps,
        fine_tune_steps=args.fine_tune_steps,
        lr=args.lr,
        schedule="cosine",
        warmup_steps=args.warmup_steps,
        mask_pool=args.mask_pool,
        layers=args.layers,
        widths=tuple(args.widths),
        kernels=None,
        vgg=None,  # no VGG-16 weights can be downloaded here: no perceptual and style terms
        samples_per_epoch=100 * len(TRAIN),
        workers=args.workers,
        cache_images=True,
        seed=args.seed,
        log_every=50,
        grid_every=args.steps + args.fine_tune_steps,
        checkpoint_every=1000,
        # A fresh run unless asked: a checkpoint left in OUT by a run with other settings must
        # not stand in for this one.
        resume=args.resume,
        progress=not args.no_progress,
    )
    start = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - start

    model = load_model(Path(config.out) / "checkpoint.pt")
    images, masks = evaluation_set(photographs(EVAL, args.side), args.size, args.crops, seed=args.seed + 1000)
    results = evaluate(model, images, masks, BASELINES)
    print(f"\n{result['step']} steps in {seconds:.0f} s; held-out crops of {', '.join(EVAL)}:\n")
    print(format_table(results))
    summary = {"train_seconds": seconds, "steps": result["step"], "config": vars(args) | {"out": str(args.out)},
               "results": results}  # fmt: skip
    summary["config"]["figure"] = str(args.figure)
    (args.out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")

    # The figure: one crop per bucket, from different photographs.
    pick = torch.tensor([b * 1 + (b % 3) * args.crops * len(BUCKETS) for b in range(len(BUCKETS))])
    image, mask = images[pick], masks[pick]
    with torch.no_grad():
        ours = inpaint(model, image * mask, mask)
    rows = [
        ("masked input", image * mask + (1 - mask)),
        ("mean colour", BASELINES["mean colour"](image * mask, mask)),
        ("diffusion", BASELINES["diffusion"](image * mask, mask)),
        ("PConvUNet", ours),
        ("ground truth", image),
    ]
    for path in [args.out / "inpainting.png", *([args.figure] if args.figure else [])]:
        save_grid(path, rows, zoom=2)
        print(f"wrote {path}")
    return summary


if __name__ == "__main__":
    main()
