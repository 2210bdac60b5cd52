"""``python -m torch_pconv bench``: the options, the allocator and the progress of a run, and the files it writes."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .._progress import Progress
from . import allocator
from .configs import CONFIGS, DTYPES, Config, Settings
from .files import write_chart, write_csv, write_json
from .impls import load_baseline, load_v011
from .networks import deepest
from .records import environment, records
from .report import format_report
from .run import Run, plan, run_bench, ticks

PROG = "python -m torch_pconv bench"
# Timed calls per mode and implementation: more at the full sizes, whose figures are the published ones.
REPEATS, FULL_REPEATS = 9, 15


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number, ``low`` or more."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value}: must be at least {low}")
        return value

    return whole_number


def _fraction(text: str) -> float:
    """An argparse ``type``: a fraction of holes, from 0 (no mask) to 1 (every pixel a hole)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:  # NaN too
        raise argparse.ArgumentTypeError(f"{text}: must be a fraction from 0 (no mask) to 1 (all holes)")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m torch_pconv bench``."""
    names = [*CONFIGS, "custom"]
    parser.add_argument("--configs", nargs="+", choices=names, help=f"configs to run (default: {' '.join(CONFIGS)})")
    parser.add_argument(
        "--full", action="store_true", help="every config at its full size (default: the big ones shrunk, for CI)"
    )
    parser.add_argument("--device", default="cpu", help="torch device, such as cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="(default: float32)")
    parser.add_argument(
        "--repeats",
        type=_at_least(1),
        help=f"timed calls per mode and implementation (default: {REPEATS}; {FULL_REPEATS} with --full)",
    )
    parser.add_argument("--warmup", type=_at_least(0), default=1, help="untimed rounds first (default: 1)")
    parser.add_argument(
        "--out", type=Path, default=Path("bench-out"), help="folder for JSON, CSV and PNG (default: bench-out)"
    )
    parser.add_argument(
        "--batch", type=_at_least(1), help="batch size of every config run (default: each config's own)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--default-allocator",
        action="store_true",
        help="leave glibc's malloc at its defaults, which give freed memory back to the system (default: keep it)",
    )
    parser.add_argument("--threads", type=_at_least(1), help="torch.set_num_threads for the run (default: torch's own)")
    parser.add_argument("--v011", metavar="PATH", help="torch-pconv 0.1.1's wheel or folder, to measure it too")
    parser.add_argument(
        "--baseline", metavar="PATH", type=Path, help="another checkout of torch_pconv, to measure its PConv2d too"
    )
    custom = parser.add_argument_group("custom config (any of these runs it; the rest as in 'inpainting')")
    custom.add_argument("--in-channels", type=_at_least(1))
    custom.add_argument("--out-channels", type=_at_least(1))
    custom.add_argument("--kernel-size", type=_at_least(1))
    custom.add_argument("--padding", type=_at_least(0), help="(default: kernel-size // 2)")
    custom.add_argument("--size", type=_at_least(1), help="height and width of the input")
    custom.add_argument("--holes", type=_fraction, help="fraction of holes in the mask; 0: no mask (default: 0.5)")
    custom.add_argument("--layers", type=_at_least(1), help="more than 1: an encoder of conv → BatchNorm2d → ReLU")


_CUSTOM = ("in_channels", "out_channels", "kernel_size", "padding", "size", "holes", "layers")


def selected_configs(args: argparse.Namespace) -> list[Config]:
    """The configs named by --configs, at the size --full asks for, with --batch and the custom options."""
    custom_given = any(getattr(args, name) is not None for name in _CUSTOM)
    names = args.configs or (["custom"] if custom_given else list(CONFIGS))
    configs = []
    for name in names:
        config = _custom(args) if name == "custom" else CONFIGS[name].scaled(args.full)
        if args.batch is not None:
            config = replace(config, batch=args.batch)
        configs.append(config)
    return configs


def repeats_of(args: argparse.Namespace) -> int:
    """--repeats, or its default for the sizes run."""
    if args.repeats is not None:
        return int(args.repeats)
    return FULL_REPEATS if args.full else REPEATS


def _custom(args: argparse.Namespace) -> Config:
    base = CONFIGS["inpainting"].scaled(full=True)
    kernel = base.kernel_size if args.kernel_size is None else args.kernel_size
    holes = base.holes if args.holes is None else (None if args.holes == 0 else args.holes)
    return replace(
        base,
        name="custom",
        in_channels=base.in_channels if args.in_channels is None else args.in_channels,
        out_channels=base.out_channels if args.out_channels is None else args.out_channels,
        kernel_size=kernel,
        padding=kernel // 2 if args.padding is None else args.padding,
        size=base.size if args.size is None else args.size,
        holes=holes,
        layers=1 if args.layers is None else args.layers,
    )


def problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the options, in one line, found before anything runs; None if nothing.

    (The numbers are checked as they are parsed.) A custom config must fit its kernel into its
    size, a network's batch its BatchNorm; --out must be a folder, or one that can be made; --v011
    and --baseline must exist."""
    for config in selected_configs(args):
        if config.network is not None and config.batch * deepest(config) ** 2 < 2:
            return (
                f"--batch {config.batch}: {config.name} at {config.size}×{config.size} ends in 1×1 features, whose "
                "BatchNorm needs more than one value per channel in training: use --batch 2 or more, or --full"
            )
        shrink = config.kernel_size - 1 - 2 * config.padding  # per layer, at stride 1
        if config.size - config.layers * shrink < 1:
            layers = f" and --layers {config.layers}" if config.layers > 1 else ""
            return (
                f"--kernel-size {config.kernel_size} with --padding {config.padding}{layers} needs a --size of "
                f"at least {config.layers * shrink + 1}, not {config.size}: raise --size or --padding"
            )
    try:
        return _path_problem(args)
    except OSError as error:  # a path that cannot even be looked at
        return f"{error.filename}: {error.strerror or error}"


def _path_problem(args: argparse.Namespace) -> str | None:
    why = _out_problem(args.out)
    if why is not None:
        return f"--out {args.out}: {why}"
    if args.v011 and not Path(args.v011).exists():
        return f"--v011 {args.v011}: no such file or folder (torch-pconv 0.1.1's wheel, or its unpacked folder)"
    if args.baseline:
        path = Path(args.baseline)
        if not path.is_dir():
            what = "a file, not a folder" if path.exists() else "no such folder"
            return f"--baseline {path}: {what} (a checkout of torch_pconv)"
        if not (path / "torch_pconv" / "__init__.py").is_file() and not (path / "__init__.py").is_file():
            return f"--baseline {path}: no torch_pconv package there (a checkout, or its torch_pconv folder)"
    return None


_WRITTEN = ("bench.json", "bench.csv", "bench.png")


def _out_problem(out: Path) -> str | None:
    """Why the report's files cannot be written into the folder ``out``; None if they can."""
    if out.exists():
        if not out.is_dir():
            return "a file, not a folder: name another --out"
        taken = [name for name in _WRITTEN if (out / name).is_dir()]
        if taken:
            return f"{out / taken[0]} is a folder, where the report's file goes: name another --out"
        return None if os.access(out, os.W_OK | os.X_OK) else "a folder this user cannot write to"
    parent = out.absolute().parent
    while not parent.exists():  # the folder that mkdir would make the others in
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot be made: {parent} is a file, not a folder"
    return None if os.access(parent, os.W_OK | os.X_OK) else f"cannot be made: {parent} is not writable"


def main(args: argparse.Namespace) -> int:
    """``python -m torch_pconv bench``: run, print the report, write JSON, CSV and PNG to --out."""
    start = time.perf_counter()
    allocator.configure(keep_freed=not args.default_allocator)  # before the run's first tensor
    settings = Settings(args.device, DTYPES[args.dtype], repeats_of(args), args.warmup, args.seed, full=args.full)
    # Another build's code, which may raise anything: one line, and exit status 1.
    try:
        settings.v011 = load_v011(args.v011) if args.v011 else None
    except Exception as error:
        return _cannot_load("--v011", args.v011, error)
    try:
        if args.baseline:
            settings.baseline, settings.baseline_path = load_baseline(args.baseline), args.baseline
    except Exception as error:
        return _cannot_load("--baseline", args.baseline, error)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    configs = selected_configs(args)
    # On a terminal, a bar of the timed calls; elsewhere (a log, CI), a line per finished config.
    progress = Progress(
        ticks(plan(configs, settings)[0], settings),
        unit="call",
        bar=sys.stdout.isatty(),
        leave=False,
        stream=sys.stdout,
    )
    finished = 0

    def done(config: Config, seconds: float) -> None:
        nonlocal finished
        finished += 1
        progress.write(f"[{finished}/{len(configs)}] {config.name} done in {seconds:.1f} s")

    try:
        run = run_bench(configs, settings, tick=progress.update, done=done)
    finally:
        progress.close()
    recs, env = records(run), environment(run)
    notes, failed = list(run.notes), None
    if args.out is not None:
        try:
            notes = _write(args.out, run, recs, env)
        except OSError as error:  # what the checks before the run could not foresee: the report still prints
            failed = f"--out {args.out}: cannot write the report's files ({error.strerror or error})"
    print(format_report(run, recs, env, notes))
    print(f"\ndone in {time.perf_counter() - start:.0f} s")
    if failed is not None:
        print(f"{PROG}: error: {failed}", file=sys.stderr)
        return 1
    return 0


def _write(out: Path, run: Run, recs: list[dict[str, Any]], env: dict[str, Any]) -> list[str]:
    """Write JSON, CSV and PNG into ``out``; the run's notes, with what was written."""
    notes = list(run.notes)
    out.mkdir(parents=True, exist_ok=True)
    no_chart = write_chart(out / "bench.png", run, recs, env)
    notes += [no_chart] if no_chart else []
    files = ["bench.json", "bench.csv"] + ([] if no_chart else ["bench.png"])
    notes.append("wrote " + ", ".join(str(out / name) for name in files))
    write_json(out / "bench.json", run, recs, env, notes)
    write_csv(out / "bench.csv", recs)
    return notes


def _cannot_load(option: str, path: str | Path, error: Exception) -> int:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    why = f"{type(error).__name__}: {lines[-1]}" if lines else type(error).__name__
    print(f"{PROG}: error: {option} {path}: cannot load its PConv2d ({why})", file=sys.stderr)
    return 1
