"""Command line: ``python -m torch_pconv bench`` (speed, memory), ``check`` (equivalence with NVIDIA's layer)
and ``inpaint`` (the inpainting network of torch_pconv.inpainting)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from . import check
from .bench import cli as bench

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["inpaint"]:  # its own parser; its dependencies (the inpainting extra) load only here
        from .inpainting.cli import main as inpaint_main

        return inpaint_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m torch_pconv", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    command = commands.add_parser("check", help="compare PConv2d/3d with NVIDIA's layer, exit 1 on a disagreement")
    check.add_arguments(command)
    command.set_defaults(run=check.main)

    command = commands.add_parser(
        "bench", help="time and memory of PConv2d, NVIDIA's layer and nn.Conv2d, side by side"
    )
    bench.add_arguments(command)
    command.set_defaults(run=bench.main)

    # Listed for --help; dispatched above, before this parser, to the inpainting extra's own.
    commands.add_parser("inpaint", help="train, evaluate and fill with the paper's PConvUNet (see inpaint --help)")

    args = parser.parse_args(argv)
    device = getattr(args, "device", None)
    if device is not None and torch.device(device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {device}: this torch build ({torch.__version__}) sees no CUDA device")
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
