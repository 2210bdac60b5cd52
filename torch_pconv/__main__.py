"""Command line: ``python -m torch_pconv bench`` (speed, memory), ``check`` (equivalence with NVIDIA's reference)
and ``inpaint`` (the inpainting network, in torch_pconv.inpainting)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import reference
from .bench import add_arguments as add_bench_arguments
from .bench import main as run_bench_command
from .check import compare
from .holes import random_holes, rectangle_holes, stroke_holes
from .pconv import PConv2d, PConv3d

__all__ = ["main"]


@dataclass(frozen=True)
class Case:
    """One configuration of the equivalence check."""

    name: str
    layer: dict[str, Any]  # nn.Conv2d/3d arguments of both layers
    mask: str  # none | single | broadcast | multi | shared
    holes: str = "random"  # random | rectangles | strokes
    dims: int = 2
    legacy: bool = False


CASES = [
    Case("3x3 single-channel, random holes", {"kernel_size": 3, "padding": 1}, "single"),
    Case("3x3 single-channel, legacy_behaviour", {"kernel_size": 3, "padding": 1}, "single", legacy=True),
    Case("5x5 stride 2, rectangles", {"kernel_size": 5, "stride": 2, "padding": 2}, "single", "rectangles"),
    Case("7x7 multi-channel, strokes", {"kernel_size": 7, "padding": 3}, "multi", "strokes"),
    Case("3x3 multi-channel, legacy_behaviour", {"kernel_size": 3, "padding": 1}, "multi", legacy=True),
    Case("(B, H, W) mask, 3x3 'same'", {"kernel_size": 3, "padding": "same"}, "shared", "strokes"),
    Case("(1, 1, H, W) batch-broadcast mask", {"kernel_size": 3, "padding": 1}, "broadcast"),
    Case(
        "3x5 kernel, dilation 2, groups 2", {"kernel_size": (3, 5), "padding": 2, "dilation": 2, "groups": 2}, "single"
    ),
    Case(
        "reflect padding, no bias", {"kernel_size": 3, "padding": 1, "padding_mode": "reflect", "bias": False}, "multi"
    ),
    Case("mask None (partial padding)", {"kernel_size": 3, "padding": 1}, "none"),
    Case("mask None, multi-channel", {"kernel_size": 3, "padding": 2, "stride": 2}, "none"),
    Case("3-D 3x3x3 single-channel", {"kernel_size": 3, "padding": 1}, "single", dims=3),
    Case("3-D multi-channel, stride 2", {"kernel_size": 3, "padding": 1, "stride": 2}, "multi", dims=3),
]


def _make_mask(case: Case, batch: int, channels: int, spatial: tuple[int, ...], gen: torch.Generator) -> Tensor | None:
    if case.mask == "none":
        return None
    leading = {"single": (batch, 1), "broadcast": (1, 1), "multi": (batch, channels), "shared": (batch,)}[case.mask]
    shape = (*leading, *spatial)
    if case.holes == "rectangles":
        return rectangle_holes(shape, generator=gen)
    if case.holes == "strokes":
        return stroke_holes(shape, generator=gen)
    return random_holes(shape, 0.5, generator=gen)


def run_check(device: str = "cpu", seed: int = 0, cases: Sequence[Case] = CASES) -> list[tuple[Case, torch.dtype, Any]]:
    """Compare PConv2d/3d with the reference on every case in float32 and float64."""
    rows = []
    for case in cases:
        for dtype in (torch.float32, torch.float64):
            gen = torch.Generator().manual_seed(seed)
            torch.manual_seed(seed)
            batch, c_in, c_out = 2, 4, 6
            spatial = (16, 16) if case.dims == 2 else (8, 8, 8)
            multi = case.mask in ("multi", "shared") or (case.mask == "none" and "multi" in case.name)
            ref_cls: Callable[..., Any] = reference.PartialConv2d if case.dims == 2 else reference.PartialConv3d
            ours_cls: Callable[..., Any] = PConv2d if case.dims == 2 else PConv3d
            ref = ref_cls(c_in, c_out, **case.layer, multi_channel=multi, return_mask=True).to(device, dtype)
            ours = ours_cls(
                c_in, c_out, **case.layer, multi_channel=multi, legacy_behaviour=case.legacy, device=device, dtype=dtype
            )
            x = torch.randn((batch, c_in, *spatial), generator=gen, dtype=dtype).to(device)
            mask = _make_mask(case, batch, c_in, spatial, gen)
            mask = None if mask is None else mask.to(device, dtype)
            ref_mask = mask
            if case.mask == "shared" and mask is not None:
                ref_mask = mask.unsqueeze(1).expand(-1, c_in, *spatial)
            rows.append((case, dtype, compare(ours, ref, x, mask, ref_mask, seed=seed)))
    return rows


def _check(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    rows = run_check(args.device, args.seed)
    names = ["output", "grad_input", "grad_weight", "grad_bias"]
    print(f"torch_pconv check: PConv2d/PConv3d against NVIDIA's reference on {args.device}, torch {torch.__version__}")
    print("errors are max|ours - ref| / max|ref|; each must stay within a bound derived from the arithmetic")
    print("(1e-12 in float64; see torch_pconv.check for float32); 'of bound' is the worst error / bound\n")
    header = f"{'case':<40} {'dtype':<8}" + "".join(f"{n:>13}" for n in names) + f"{'mask':>7}{'of bound':>10}  result"
    print(header)
    print("-" * len(header))
    failed = 0
    for case, dtype, cmp in rows:
        cells = "".join(f"{cmp.errors[n]:>13.2e}" if n in cmp.errors else f"{'-':>13}" for n in names)
        result = "ok" if cmp.ok else "FAIL: " + "; ".join(cmp.failures())
        failed += not cmp.ok
        same = "same" if cmp.mask_equal else "DIFF"
        margin = max(_fraction(cmp.errors[n], cmp.tolerances[n]) for n in cmp.errors)
        print(f"{case.name:<40} {str(dtype).removeprefix('torch.'):<8}{cells}{same:>7}{margin:>10.2f}  {result}")
    for dtype in (torch.float32, torch.float64):
        worst = {n: max((c.errors.get(n, 0.0) for _, d, c in rows if d == dtype), default=0.0) for n in names}
        print(f"worst {str(dtype).removeprefix('torch.')}: " + ", ".join(f"{n} {v:.2e}" for n, v in worst.items()))
    elapsed = time.perf_counter() - start
    if failed:
        print(f"\nFAIL: {failed} of {len(rows)} comparisons disagree with the reference ({elapsed:.1f} s)")
        return 1
    print(f"\nPASS: all {len(rows)} comparisons agree with the reference ({elapsed:.1f} s)")
    return 0


def _fraction(error: float, bound: float) -> float:
    """How much of its bound an error uses (a bound of 0 asks for bit-identical results)."""
    if bound > 0:
        return error / bound
    return 0.0 if error == 0 else float("inf")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["inpaint"]:  # its own parser; its dependencies (the inpainting extra) load only here
        from .inpainting.cli import main as inpaint_main

        return inpaint_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m torch_pconv", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="compare PConv2d/3d with NVIDIA's reference, exit 1 on a disagreement")
    check.add_argument("--device", default="cpu", help="torch device, such as cpu or cuda (default: cpu)")
    check.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    check.set_defaults(run=_check)
    bench = commands.add_parser("bench", help="time and memory of PConv2d, the reference and nn.Conv2d, side by side")
    add_bench_arguments(bench)
    bench.set_defaults(run=run_bench_command)
    commands.add_parser("inpaint", help="train, evaluate and fill with the paper's PConvUNet (see inpaint --help)")
    args = parser.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch build ({torch.__version__}) sees no CUDA device")
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
