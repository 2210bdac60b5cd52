"""Command line: ``python -m torch_pconv bench`` (speed, memory), ``check`` (equivalence with NVIDIA's layer)
and ``inpaint`` (the inpainting network of torch_pconv.inpainting).

A mistake in the options is answered with argparse's usage line, one line naming it, and exit
status 2, before anything runs or is written."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

import torch

from . import check
from .bench import cli as bench

# What torch.Generator.manual_seed takes: a signed or unsigned 64-bit integer.
_SEEDS = (-(2**63), 2**64 - 1)


def device_problem(name: str) -> str | None:
    """Why ``name`` is no device to run on here (not a device, or one this machine lacks, or one
    that holds no data, such as ``meta``), in a few words; None when it is one."""
    with warnings.catch_warnings():  # torch warns of deprecated device types, such as mkldnn
        warnings.simplefilter("ignore")
        try:
            device = torch.device(name)
        except (RuntimeError, ValueError, TypeError):
            return "not a torch device (such as cpu, cuda or cuda:1)"
        if device.type == "meta":
            return "meta tensors hold no data to compare or time: pass a device such as cpu or cuda"
        if device.type == "cuda":
            if not torch.cuda.is_available():
                return f"this torch build ({torch.__version__}) sees no CUDA device: pass --device cpu"
            if device.index is not None and device.index >= torch.cuda.device_count():
                return f"no CUDA device {device.index} (this machine has {torch.cuda.device_count()})"
        try:  # every other device type: whether a tensor can be made there and read back
            torch.zeros(1, device=device).cpu()
        except Exception as error:  # whatever a backend this build or machine lacks raises
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            why = lines[0][:160] if lines else type(error).__name__
            return f"this machine or torch build cannot hold tensors there ({type(error).__name__}: {why})"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["inpaint"]:  # its own parser; its dependencies (the inpainting extra) load only here
        from .inpainting.cli import main as inpaint_main

        return inpaint_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m torch_pconv", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    check_parser = commands.add_parser("check", help="compare PConv2d/3d with NVIDIA's layer, exit 1 on a disagreement")
    check.add_arguments(check_parser)
    check_parser.set_defaults(run=check.main)

    bench_parser = commands.add_parser(
        "bench", help="time and memory of PConv2d, NVIDIA's layer and nn.Conv2d, side by side"
    )
    bench.add_arguments(bench_parser)
    bench_parser.set_defaults(run=bench.main, problem=bench.problem)

    # Listed for --help; dispatched above, before this parser, to the inpainting extra's own.
    commands.add_parser("inpaint", help="train, evaluate and fill with the paper's PConvUNet (see inpaint --help)")

    args = parser.parse_args(argv)
    command = {"check": check_parser, "bench": bench_parser}[args.command]
    # Every option is checked before anything runs: a mistake is one line and exit status 2.
    if not _SEEDS[0] <= args.seed <= _SEEDS[1]:
        command.error(f"--seed {args.seed}: must lie between {_SEEDS[0]} and {_SEEDS[1]}")
    why = device_problem(args.device)
    if why is not None:
        command.error(f"--device {args.device}: {why}")
    problem = getattr(args, "problem", None)
    why = problem(args) if problem is not None else None
    if why is not None:
        command.error(why)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
