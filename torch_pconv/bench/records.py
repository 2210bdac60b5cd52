"""The benchmark's figures as flat records (medians, quartiles, ratios), what they mean, and where they
were measured: what the printed report and the JSON, CSV and PNG files are made from."""

from __future__ import annotations

import math
import platform
import statistics
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from . import allocator
from .configs import MEMORY
from .impls import conv_of, nvidia_of
from .run import Run

MEASURED = """\
time: wall clock of one call: the median over the repeats after the warm-up, ± half the
  interquartile range (IQR) of the same figure over the repeats, so that the middle half of the
  repeats lies within about that of the median (JSON and CSV: <figure>_q1 and <figure>_q3).
  In each repeat the implementations run round-robin, and every timed call sits between two calls of
  nn.Conv2d of the same shape (compiled ones for a compiled row): ×conv is the median over the
  repeats of the call's time over the mean of its two neighbours, so that machine noise hits both
  sides of each ratio alike; ×NVIDIA is the median of the ratio of two such ×conv, to NVIDIA's layer
  with the same multi_channel argument; µs beyond is the median of the call's time minus its
  neighbours' (where a config times several calls in a row, as the fixed config does, per call).
  forward: the call with autograd recording; forward+backward: the call, then torch.autograd.grad
  of the output (given a fixed random gradient) for the input and all parameters; inference: the call
  under torch.no_grad(). Masks are 0/1 tensors in the input's dtype, made before timing.
memory: bytes of live tensors, relative to just before the call (the parameters, input, mask and
  output gradient already exist and are not counted), measured once: a call repeats them to the byte.
  CPU: the profiler's allocation events (torch.profiler with profile_memory=True: every allocation
  and free with its size), summed in order, taking the running maximum. CUDA:
  torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus memory_allocated before.
  'peak' is the maximum during the call; 'held forward→backward' is what is still allocated after
  the forward, with the output and its graph alive: what training keeps until the backward runs;
  'hooks' is the same under a caller's saved-tensor hooks (torch.autograd.graph.saved_tensors_hooks,
  as checkpointing or offloading installs, that keep each tensor as it is: its data, not a copy).
  Caches (NVIDIA's stored mask ratio, PConv2d's mask=None ratio) are warm: a forward in each grad
  mode measured runs first.
allocator: on glibc the run keeps freed memory in the process (the header says how), so that a call
  reuses the pages the call before it freed instead of faulting fresh ones in from the system;
  --default-allocator leaves glibc's defaults. It moves the times, not the memory figures.
NVIDIA: NVIDIA's PartialConv2d as torch_pconv.reference transcribes it; every row's output is checked
  against its multi_channel layer's.
networks (unet, classifier): a training step but the optimizer's update (the same for every row):
  the forward, the loss (the U-Net: L1 to the image, whose holes, irregular strokes, are zeroed in
  its input; the classifier: cross-entropy to random labels) and the backward into every
  parameter's .grad, set to None first. Each row is the same network with the same weights, built of
  the layer it is named for (nn.Conv2d: plain convolutions, no mask); a bfloat16 row is timed next
  to nn.Conv2d's network in bfloat16. 'held fwd→bwd' is what the forward and the loss leave for the
  backward; 'peak fwd+bwd' the peak of the whole step, the gradients included. Each partial network
  is first checked against NVIDIA's twin, for a random output gradient: its output, and the largest
  difference in any parameter's gradient over the largest of NVIDIA's."""

NAN = math.nan

# The memory figures' short names, for the tables and the chart.
SHORT = dict(zip(MEMORY, ["peak fwd", "held fwd→bwd", "held, hooks", "peak fwd+bwd", "peak no_grad"], strict=True))


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile) of ``values``; NaN for none."""
    if not values:
        return NAN, NAN, NAN
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, statistics.median(values), q3


def _figure(name: str, values: list[float]) -> dict[str, float]:
    """``name``: the median of ``values``, with its quartiles as ``name_q1`` and ``name_q3``."""
    q1, median, q3 = quartiles(values)
    return {name: median, f"{name}_q1": q1, f"{name}_q3": q3}


def records(run: Run) -> list[dict[str, Any]]:
    """One flat record per figure: each time and ratio a median with its quartiles, each memory
    figure in bytes, with its ratios to nn.Conv2d and to NVIDIA's layer."""
    by_name = {(row.config.name, row.impl.name): row for row in run.rows}
    out = []
    for row in run.rows:
        conv = by_name[(row.config.name, conv_of(row.impl).name)]
        nvidia = by_name.get((row.config.name, nvidia_of(row.impl)))
        base = {"config": row.config.name, "implementation": row.impl.name}
        for mode, samples in row.times.items():
            pairs = list(zip(samples.seconds, samples.conv, strict=True))
            ratios = [s / c for s, c in pairs]
            to_nvidia = []
            if nvidia is not None:
                theirs = nvidia.times[mode]
                to_nvidia = [r * c / s for r, s, c in zip(ratios, theirs.seconds, theirs.conv, strict=True)]
            out.append(
                {
                    **base,
                    "metric": f"time {mode}",
                    "unit": "ms",
                    **_figure("value", [s * 1e3 for s in samples.seconds]),
                    "min": min(samples.seconds) * 1e3,
                    "max": max(samples.seconds) * 1e3,
                    **_figure("ratio_to_conv", ratios),
                    **_figure("ratio_to_nvidia", to_nvidia),
                    **_figure("beyond_conv_us", [(s - c) * 1e6 for s, c in pairs]),
                    "samples_ms": [s * 1e3 for s in samples.seconds],
                }
            )
        for name, value in row.memory.items():
            out.append(
                {
                    **base,
                    "metric": f"memory {name}",
                    "unit": "bytes",
                    "value": value,
                    "ratio_to_conv": _ratio(value, conv.memory.get(name, 0)),
                    "ratio_to_nvidia": NAN if nvidia is None else _ratio(value, nvidia.memory.get(name, 0)),
                }
            )
        if row.error is not None:
            out.append({**base, "metric": "relative error vs NVIDIA", "unit": "", "value": row.error})
        if row.grad_error is not None:  # a network's: its parameters' gradients
            out.append({**base, "metric": "gradient error vs NVIDIA", "unit": "", "value": row.grad_error})
    return out


def _ratio(value: float, base: float) -> float:
    return value / base if base else NAN


def environment(run: Run) -> dict[str, Any]:
    """What ran where: versions, hardware, threads, the allocator, sizes and the other builds."""
    settings = run.settings
    device = torch.device(settings.device)
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = _cpu_name() or platform.processor() or platform.machine()
    return {
        "torch_pconv": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": settings.device,
        "hardware": hardware,
        "threads": torch.get_num_threads(),
        "allocator": allocator.setting(),
        "dtype": str(settings.dtype).removeprefix("torch."),
        "repeats": settings.repeats,
        "warmup": settings.warmup,
        "seed": settings.seed,
        "full": settings.full,
        "torch-pconv 0.1.1": settings.v011 is not None,
        "baseline": None if settings.baseline_path is None else str(settings.baseline_path),
    }


def _cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
