"""``python -m torch_pconv bench``: the options, the progress shown while it runs, and the files it writes."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

import torch

from .configs import CONFIGS, DTYPES, Config, Settings
from .impls import load_baseline, load_v011
from .report import environment, format_report, records, write_chart, write_csv, write_json
from .run import plan, run_bench, ticks

__all__ = ["Progress", "add_arguments", "main", "selected_configs"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m torch_pconv bench``."""
    names = [*CONFIGS, "custom"]
    parser.add_argument("--configs", nargs="+", choices=names, help=f"configs to run (default: {' '.join(CONFIGS)})")
    parser.add_argument(
        "--full", action="store_true", help="every config at its full size (default: the big ones shrunk, for CI)"
    )
    parser.add_argument("--device", default="cpu", help="torch device, such as cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="(default: float32)")
    parser.add_argument("--repeats", type=int, default=9, help="timed calls per mode and implementation (default: 9)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: 1)")
    parser.add_argument(
        "--out", type=Path, default=Path("bench-out"), help="folder for JSON, CSV and PNG (default: bench-out)"
    )
    parser.add_argument("--batch", type=int, help="batch size of every config run (default: each config's own)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads for the run (default: torch's own)")
    parser.add_argument("--v011", metavar="PATH", help="torch-pconv 0.1.1's wheel or folder, to measure it too")
    parser.add_argument(
        "--baseline", metavar="PATH", type=Path, help="another checkout of torch_pconv, to measure its PConv2d too"
    )
    custom = parser.add_argument_group("custom config (any of these runs it; the rest as in 'inpainting')")
    custom.add_argument("--in-channels", type=int)
    custom.add_argument("--out-channels", type=int)
    custom.add_argument("--kernel-size", type=int)
    custom.add_argument("--padding", type=int, help="(default: kernel-size // 2)")
    custom.add_argument("--size", type=int, help="height and width of the input")
    custom.add_argument("--holes", type=float, help="fraction of holes in the mask; 0: no mask (default: 0.5)")
    custom.add_argument("--layers", type=int, help="more than 1: an encoder of conv → BatchNorm2d → ReLU")


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


class Progress:
    """A tqdm bar on a terminal (where tqdm is installed); elsewhere, one plain line per finished config."""

    def __init__(self, total: int, configs: int, stream: TextIO | None = None) -> None:
        self.stream = sys.stdout if stream is None else stream
        self.configs, self.finished = configs, 0
        self.bar: Any = None
        if self.stream.isatty():
            try:
                from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]
            except ImportError:
                return
            self.bar = tqdm(total=total, unit="call", leave=False, file=self.stream)

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update()

    def done(self, config: Config, seconds: float) -> None:
        self.finished += 1
        line = f"[{self.finished}/{self.configs}] {config.name} done in {seconds:.1f} s"
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(args: argparse.Namespace) -> int:
    """``python -m torch_pconv bench``: run, print the report, write JSON, CSV and PNG to --out."""
    start = time.perf_counter()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = Settings(args.device, DTYPES[args.dtype], args.repeats, args.warmup, args.seed, full=args.full)
    if args.v011:
        settings.v011 = load_v011(args.v011)
    if args.baseline:
        settings.baseline, settings.baseline_path = load_baseline(args.baseline), args.baseline
    configs = selected_configs(args)
    progress = Progress(ticks(plan(configs, settings)[0], settings), len(configs))
    try:
        run = run_bench(configs, settings, tick=progress.tick, done=progress.done)
    finally:
        progress.close()
    recs, env = records(run), environment(run)
    notes = list(run.notes)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        no_chart = write_chart(args.out / "bench.png", run, recs, env)
        notes += [no_chart] if no_chart else []
        files = ["bench.json", "bench.csv"] + ([] if no_chart else ["bench.png"])
        notes.append("wrote " + ", ".join(str(args.out / name) for name in files))
        write_json(args.out / "bench.json", run, recs, env, notes)
        write_csv(args.out / "bench.csv", recs)
    print(format_report(run, recs, env, notes))
    print(f"\ndone in {time.perf_counter() - start:.0f} s")
    return 0
