"""``python -m torch_pconv inpaint train|eval|fill``: train (or fine-tune, or resume), evaluate
per hole-ratio bucket, and fill one image of any size.

A mistake in the options (a missing folder or file, a size the network cannot take, a resume
with other settings, ...) is answered with one line and exit status 2, before anything is
written; an image or checkpoint that cannot be read, with one line and status 1; Ctrl-C, with
one line (where the last checkpoint is) and status 130."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from ._deps import require
from .data import list_images, read_image, read_mask, write_image
from .evaluate import BASELINES, evaluate, evaluation_set
from .loss import InpaintingLoss, VGGWeightsError, VGGWeightsNotFoundError
from .masks import MaskFolder
from .metrics import format_table
from .model import PConvUNet, inpaint
from .train import (
    CHECKPOINT,
    SCHEDULES,
    CheckpointError,
    TrainConfig,
    UsageError,
    load_model,
    peek_checkpoint,
    resolve_device,
    train,
)

__all__ = ["build_parser", "main"]

_T = TypeVar("_T")


def _train(args: argparse.Namespace) -> int:
    config = _train_config(args)
    checkpoint = Path(config.out) / CHECKPOINT
    before = _modified(checkpoint)
    try:
        result = train(config)
    except VGGWeightsNotFoundError as error:  # a file named by an option (its default: torch's cache)
        raise UsageError(f"--vgg {args.vgg}: {error}, or pass --no-vgg (no perceptual and style terms)") from None
    except KeyboardInterrupt:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"{_PROG} train: {_interrupted(checkpoint, before, config.resume)}", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"step {result['step']}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items() if k != "step"))
    return 0


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed ``train`` options: the options named as its fields carry over as
    they are, and the few that differ in name or type are converted here."""
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    settings = {name: value for name, value in vars(args).items() if name in fields}
    # nargs="+" gives lists; a TrainConfig holds tuples (it is compared on resume, and saved).
    settings["widths"] = tuple(args.widths) if args.widths else None
    settings["kernels"] = tuple(args.kernels) if args.kernels else None
    settings["vgg"] = None if args.no_vgg else args.vgg
    # Only the weights given: the others stay InpaintingLoss's (the paper's).
    settings["weights"] = {name: getattr(args, name) for name in _LOSS_WEIGHTS if getattr(args, name) is not None}
    # Flags that turn a default off: their dataclass fields are True by default.
    settings["resume"] = not args.no_resume
    settings["progress"] = not args.no_progress
    return TrainConfig(**settings)


def _modified(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.is_file() else None


def _interrupted(checkpoint: Path, before: int | None, resume: bool) -> str:
    """What an interrupted run says: where its last checkpoint is, or that there is none."""
    # A checkpoint of this run: one it wrote, or (resuming) the one it started from.
    if _modified(checkpoint) is None or not (resume or _modified(checkpoint) != before):
        return f"interrupted before this run wrote a checkpoint: nothing to resume from ({checkpoint} not written)"
    try:
        step = f"of step {peek_checkpoint(checkpoint)['step']}"
    except CheckpointError:
        step = "unreadable"
    how = "the same command resumes from it" if resume else "run again without --no-resume to resume from it"
    return f"interrupted; the last checkpoint ({step}) is {checkpoint}: {how}"


def _eval(args: argparse.Namespace) -> int:
    if not args.checkpoint and not args.baselines:
        raise UsageError("nothing to evaluate: give --checkpoint, --baselines, or both")
    for option in ("size", "crops"):
        if getattr(args, option) < 1:
            raise UsageError(f"--{option} {getattr(args, option)}: must be at least 1")
    _folder(args.images, "--images")
    if args.masks:
        _folder(args.masks, "--masks")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: a file, not a folder: name another --out")
    device = resolve_device(args.device)
    files = _found(args.images, "--images", list_images)
    masks = None
    if args.masks:
        folder = _found(
            args.masks, "--masks", lambda root: MaskFolder(root, args.size, hole_value=args.hole_value, augment=False)
        )
        masks = [folder[i] for i in range(len(folder))]
    model = _load_model(args.checkpoint, device) if args.checkpoint else None
    images, hole_masks = evaluation_set(files, args.size, args.crops, masks, args.seed)
    baselines = BASELINES if args.baselines else None
    results = evaluate(model, images, hole_masks, baselines)
    print(format_table(results))
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    with (out / "metrics.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, ["method", "bucket", "images", "l1", "hole_l1", "psnr", "ssim"])
        writer.writeheader()
        for method, rows in results.items():
            for row in rows:
                writer.writerow({"method": method, **row})
    print(f"wrote {out / 'metrics.csv'} and {out / 'metrics.json'}")
    return 0


def _fill(args: argparse.Namespace) -> int:
    for option in ("checkpoint", "image", "mask"):
        _file(getattr(args, option), f"--{option}")
    out = Path(args.out)
    pil = require("PIL.Image")
    format_ = pil.registered_extensions().get(out.suffix.lower())
    if format_ is None or format_ not in pil.SAVE:
        raise UsageError(f"--out {out}: Pillow writes no image format of suffix {out.suffix!r}: name a .png file")
    if out.is_dir():
        raise UsageError(f"--out {out}: a folder, not an image file")
    device = resolve_device(args.device)
    image = read_image(args.image)[None]
    mask = read_mask(args.mask, args.hole_value)[None]
    if mask.shape[-2:] != image.shape[-2:]:
        raise UsageError(
            f"--mask {args.mask} is {_size(mask)} pixels, --image {args.image} {_size(image)}: "
            "give a mask of the image's size"
        )
    model = _load_model(args.checkpoint, device)
    image, mask = image.to(device), mask.to(device)
    with torch.no_grad():
        filled = inpaint(model, image, mask)
    write_image(args.out, filled[0])
    print(f"wrote {args.out}")
    return 0


def _size(image: torch.Tensor) -> str:
    return f"{image.shape[-1]}x{image.shape[-2]}"


def _load_model(path: str, device: torch.device) -> PConvUNet:
    """The network of the checkpoint at ``path`` (checked first: a CheckpointError names a
    file that is not one)."""
    _file(path, "--checkpoint")
    peek_checkpoint(path)
    try:
        return load_model(path, device)
    except ValueError as error:  # its contents do not build the network they describe
        raise CheckpointError(f"{path}: {error}") from error


def _file(path: str, option: str) -> None:
    if not Path(path).exists():
        raise UsageError(f"{option} {path}: no such file")
    if not Path(path).is_file():
        raise UsageError(f"{option} {path}: not a file")


def _folder(path: str, option: str) -> None:
    if not Path(path).exists():
        raise UsageError(f"{option} {path}: no such folder")
    if not Path(path).is_dir():
        raise UsageError(f"{option} {path}: a file, not a folder of images")


def _found(root: str, option: str, find: Callable[[str], _T]) -> _T:
    """What ``find`` finds under ``root``; a folder with no image is a UsageError."""
    try:
        return find(root)
    except FileNotFoundError as error:
        raise UsageError(f"{option} {root}: {error}") from None


_PROG = "python -m torch_pconv inpaint"
# The loss weights that `train` takes, one option each, as InpaintingLoss's arguments.
_LOSS_WEIGHTS = ("valid", "hole", "perceptual", "style", "tv")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_PROG, description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    t = commands.add_parser("train", help="train a PConvUNet; resumes from OUT/checkpoint.pt if present")
    # Every default is TrainConfig's: one source for each (_train_config builds one from the options).
    config = {field.name: field.default for field in dataclasses.fields(TrainConfig)}

    def setting(flag: str, **kwargs: Any) -> None:
        """An option for the TrainConfig field of its name (--fine-tune-lr: fine_tune_lr), with its default."""
        t.add_argument(flag, default=config[flag[2:].replace("-", "_")], **kwargs)

    t.add_argument("--images", required=True, help="folder of training images")
    setting("--masks", help="folder of mask images (default: the irregular mask generator)")
    setting("--out", help="checkpoints, log.jsonl and grids (default: %(default)s)")
    setting("--size", type=int, help="crop side (default: %(default)s)")
    setting("--batch", type=int, help="batch per process (default: the paper's %(default)s)")
    setting("--steps", type=int, help="first phase steps (default: %(default)s)")
    setting("--fine-tune-steps", type=int, help="second phase steps (default: %(default)s)")
    setting("--lr", type=float, help="first phase learning rate (default: %(default)s)")
    setting("--fine-tune-lr", type=float, help="fine-tuning learning rate (default: %(default)s)")
    setting(
        "--schedule",
        choices=SCHEDULES,
        help="first phase learning rate: constant (the paper) or a warm-up and cosine decay to 0 "
        "(default: %(default)s)",
    )
    setting("--warmup-steps", type=int, help="warm-up steps of the cosine schedule (default: %(default)s)")
    setting("--mask-pool", type=int, help="generated masks: draw this many, then flip and transpose them")
    setting("--layers", type=int, help="encoder depth: 7 for 256 px, 8 for 512 (default: %(default)s)")
    setting("--widths", type=int, nargs="+", help="encoder widths (default: the paper's)")
    setting("--kernels", type=int, nargs="+", help="encoder kernel sizes (default: the paper's)")
    setting("--vgg", help="VGG-16 weights file, or 'cache' for torch's checkpoint cache")
    t.add_argument("--no-vgg", action="store_true", help="no perceptual and style terms (no VGG-16 needed)")
    # Left out: InpaintingLoss's own default (TrainConfig.weights holds only the weights given).
    paper = InpaintingLoss().weights
    for name in _LOSS_WEIGHTS:
        t.add_argument(f"--{name}", type=float, help=f"{name} loss weight (default: {paper[name]:g})")
    setting("--samples-per-epoch", type=int, help="crops per epoch (default: one per image)")
    setting("--cache-images", action="store_true", help="keep decoded images in memory")
    setting("--workers", type=int, help="DataLoader workers (default: %(default)s)")
    setting("--log-every", type=int, help="steps between log lines (default: %(default)s)")
    setting("--grid-every", type=int, help="steps between PNG grids (default: %(default)s)")
    setting("--checkpoint-every", type=int, help="steps between checkpoints (default: %(default)s)")
    # Flags that turn off what TrainConfig turns on (resume, progress): _train_config inverts them.
    t.add_argument("--no-resume", action="store_true", help="start afresh even if OUT/checkpoint.pt exists")
    setting("--amp", action="store_true", help="mixed precision (autocast; a GradScaler on CUDA)")
    setting("--sync-bn", action="store_true", help="SyncBatchNorm across processes (CUDA only)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(run=_train)

    e = commands.add_parser("eval", help="metrics per hole-ratio bucket; prints them, writes CSV and JSON")
    e.add_argument("--checkpoint", help="a training checkpoint (omit to score the baselines alone)")
    e.add_argument("--images", required=True, help="folder of evaluation images")
    e.add_argument("--masks", help="folder of mask images (default: generated, every bucket for every crop)")
    e.add_argument("--size", type=int, default=256, help="crop side (default: %(default)s)")
    e.add_argument("--crops", type=int, default=2, help="crops per image (default: %(default)s)")
    e.add_argument("--baselines", action="store_true", help="also score mean-colour and diffusion fills")
    e.add_argument("--out", default="inpainting-eval", help="folder for metrics.csv and metrics.json")
    e.set_defaults(run=_eval)

    f = commands.add_parser("fill", help="fill the holes of one image of any size")
    f.add_argument("--checkpoint", required=True)
    f.add_argument("--image", required=True)
    f.add_argument("--mask", required=True, help="mask image, same size as the image")
    f.add_argument("--out", required=True, help="output image file")
    f.set_defaults(run=_fill)

    for sub in (t, e, f):
        sub.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
        sub.add_argument("--device", help="torch device, such as cpu or cuda:1 (default: cuda if available, else cpu)")
        sub.add_argument(
            "--hole-value", type=int, default=0, choices=(0, 255), help="mask value of holes (default: %(default)s)"
        )
    # train's, like its other defaults, are TrainConfig's.
    t.set_defaults(seed=config["seed"], device=config["device"], hole_value=config["hole_value"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; the exit status: 0, 1 (a file that cannot be read or written), 2 (a usage
    error; argparse's own exit with 2 too) or 130 (interrupted)."""
    args = build_parser().parse_args(argv)
    command = f"{_PROG} {args.command}"
    try:
        result: int = args.run(args)
    except UsageError as error:
        return _error(command, error, 2)
    except (CheckpointError, VGGWeightsError, OSError) as error:  # PIL's UnidentifiedImageError is an OSError
        return _error(command, error, 1)
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    return result


def _error(command: str, error: Exception, status: int) -> int:
    # One line: the last of a message that has several (an error raised in a DataLoader worker
    # comes with the worker's traceback in its message).
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    print(f"{command}: error: {lines[-1] if lines else type(error).__name__}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
