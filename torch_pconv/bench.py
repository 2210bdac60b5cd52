"""Benchmark: ``python -m torch_pconv bench``. Time and memory of PConv2d, NVIDIA's reference and nn.Conv2d.

Every implementation of a config runs in the same process on the same input and weights, and the
timed calls are interleaved (round-robin within each repeat), so that machine noise hits all alike.
Memory is the true peak of live tensor bytes: on CUDA from the caching allocator's counters, on CPU
from the profiler's allocation events (never RSS, which cannot resolve a few percent).
"""

from __future__ import annotations

import csv
import json
import math
import platform
import statistics
import sys
import time
import types
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile, record_function

from . import __version__, reference
from .holes import random_holes
from .pconv import PConv2d
from .quirks import profile_events

__all__ = ["CONFIGS", "IMPLS", "MEASURED", "Config", "Impl", "LiveBytes", "Settings", "load_v011", "run_bench"]

MODES = ("forward", "forward+backward", "inference")
MEMORY = ("peak forward", "held forward→backward", "peak forward+backward", "peak inference")

MEASURED = """\
time: wall clock of one call, median and interquartile range (IQR) over the repeats after the warm-up;
  within each repeat the implementations run round-robin, so machine noise hits all alike.
  forward: the call with autograd recording; forward+backward: the call, then torch.autograd.grad
  of the output (given a fixed random gradient) for the input and all parameters; inference: the call
  under torch.no_grad(). Masks are 0/1 float tensors in the input's dtype, made before timing.
memory: bytes of live tensors, relative to just before the call (the parameters, input, mask and
  output gradient already exist and are not counted). CPU: the profiler's allocation events
  (torch.profiler with profile_memory=True: every allocation and free with its size), summed in
  order, taking the running maximum. CUDA: torch.cuda.max_memory_allocated after
  reset_peak_memory_stats, minus memory_allocated before. 'peak' is the maximum during the call;
  'held forward→backward' is what is still allocated after the forward, with the output and its
  graph alive: what training keeps until the backward runs. Caches (the reference's mask ratio,
  PConv2d's mask=None ratio) are warm: a forward with and one without autograd run first.
ratios: to nn.Conv2d (bias=True, same shape, same input) and to the reference with
  multi_channel=True (NVIDIA's PartialConv2d as torch_pconv.reference transcribes it)."""


@dataclass(frozen=True)
class Config:
    """A benchmark setting: one partial convolution, or an encoder of ``layers`` of them."""

    name: str
    batch: int
    in_channels: int
    out_channels: int
    kernel_size: int
    padding: int
    size: int  # height and width of the input
    holes: float | None = 0.5  # fraction of holes in the mask; None: no mask (partial padding)
    layers: int = 1  # more than 1: (conv → BatchNorm2d → ReLU) × layers, the mask carried along

    def describe(self) -> str:
        shape = f"{self.in_channels}→{self.out_channels}, k={self.kernel_size}, pad {self.padding}"
        what = f"{self.layers} × (conv → BatchNorm2d → ReLU), mask carried" if self.layers > 1 else "one layer"
        mask = "mask None" if self.holes is None else f"mask with {self.holes:.0%} holes"
        return f"{what}, B={self.batch}, {shape}, {self.size}×{self.size}, {mask}"


CONFIGS = {
    # The realistic inpainting layer of the issue.
    "inpainting": Config("inpainting", 4, 64, 64, 7, 3, 128),
    # An inpainting encoder, where the memory held for the backward limits training.
    "encoder": Config("encoder", 4, 64, 64, 3, 1, 128, layers=4),
    # torch-pconv 0.1.1's headline comparison (its batch of 16 with --full).
    "v011": Config("v011", 1, 64, 128, 9, 3, 256),
    # Partial-convolution-based padding in a ResNet-style 3×3 layer (ResNet's first stage).
    "padding": Config("padding", 8, 64, 64, 3, 1, 56, holes=None),
}
V011_FULL_BATCH = 16


@dataclass(frozen=True)
class Impl:
    """One implementation under test, and the mask layout it is given."""

    name: str
    kind: str  # conv | pconv | reference | v011
    multi_channel: bool = False
    mask: str = "single"  # multi: (B, C, H, W); single: (B, 1, H, W); shared: (B, H, W)


CONV = "nn.Conv2d"
REFERENCE = "reference multi_channel"
V011 = "torch-pconv 0.1.1"
IMPLS = [
    Impl(CONV, "conv", mask="none"),
    Impl("PConv2d multi_channel", "pconv", True, "multi"),
    Impl("PConv2d", "pconv", False, "single"),
    Impl("PConv2d (B,H,W) mask", "pconv", False, "shared"),
    Impl(REFERENCE, "reference", True, "multi"),
    Impl("reference", "reference", False, "single"),
    Impl(V011, "v011", False, "shared"),
]


@dataclass
class Settings:
    """How to run: where, in what dtype, how many times, and where 0.1.1 comes from."""

    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    repeats: int = 3
    warmup: int = 1
    seed: int = 0
    v011: type[nn.Module] | None = None  # torch-pconv 0.1.1's PConv2d, see load_v011


# ----------------------------------------------------------------------------------------------
# The networks and their inputs


class Network(nn.Module):
    """Convolutions in a row; with more than one, each followed by BatchNorm2d and ReLU.

    ``partial``: the convolutions take and return a mask, which is carried from layer to layer.
    """

    def __init__(self, convs: list[nn.Module], partial: bool) -> None:
        super().__init__()
        self.convs = nn.ModuleList(convs)
        width = [int(getattr(conv, "out_channels", 0)) for conv in convs]
        self.norms = nn.ModuleList([nn.BatchNorm2d(c) for c in width] if len(convs) > 1 else [])
        self.partial = partial

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        for i, conv in enumerate(self.convs):
            if self.partial:
                x, mask = conv(x, mask)
            else:
                x = conv(x)
            if self.norms:
                x = F.relu(self.norms[i](x))
        return x


def load_v011(path: str | Path) -> type[nn.Module]:
    """torch-pconv 0.1.1's ``PConv2d``, from its wheel or unpacked folder.

    Its package is also named ``torch_pconv``, so it cannot be installed next to this one; its
    ``pconv.py`` is loaded here as a private module instead. Get it with
    ``pip download --no-deps torch-pconv==0.1.1 -d DIR``.
    """
    path = Path(path)
    if path.is_file():  # a wheel is a zip archive
        with zipfile.ZipFile(path) as wheel:
            source = wheel.read("torch_pconv/pconv.py").decode()
    else:
        file = path / "torch_pconv" / "pconv.py"
        source = (file if file.exists() else path / "pconv.py").read_text()
    module = types.ModuleType("torch_pconv_v011")
    exec(compile(source, f"{path} (torch-pconv 0.1.1)", "exec"), module.__dict__)
    cls: type[nn.Module] = module.PConv2d
    return cls


def _layer(impl: Impl, in_channels: int, config: Config, settings: Settings) -> nn.Module:
    args = (in_channels, config.out_channels, config.kernel_size)
    kwargs: dict[str, Any] = {"padding": config.padding}
    if impl.kind == "conv":
        return nn.Conv2d(*args, **kwargs)
    if impl.kind == "pconv":
        return PConv2d(*args, **kwargs, multi_channel=impl.multi_channel)
    if impl.kind == "reference":
        return reference.PartialConv2d(*args, **kwargs, multi_channel=impl.multi_channel, return_mask=True)
    assert settings.v011 is not None
    return settings.v011(*args, **kwargs, bias=True)


def build_network(impl: Impl, config: Config, settings: Settings) -> Network:
    """The network of ``config`` made of ``impl``'s layers, with the same weights for every impl."""
    widths = [config.in_channels] + [config.out_channels] * (config.layers - 1)
    torch.manual_seed(settings.seed)  # the weights are drawn before any layer's own initialisation
    plains = [nn.Conv2d(c, config.out_channels, config.kernel_size, padding=config.padding) for c in widths]
    convs = []
    for in_channels, plain in zip(widths, plains, strict=True):
        layer = _layer(impl, in_channels, config, settings)
        if impl.kind == "v011":
            layer.set_weight(plain.weight)  # type: ignore[operator]
            layer.set_bias(plain.bias)  # type: ignore[operator]
        else:
            layer.load_state_dict(plain.state_dict())
        convs.append(layer)
    return Network(convs, partial=impl.kind != "conv").to(settings.device, settings.dtype)


@dataclass
class Inputs:
    """The input, one mask per layout, and the output gradient of a config."""

    x: Tensor
    masks: dict[str, Tensor | None]
    grad: Tensor


def make_inputs(config: Config, settings: Settings) -> Inputs:
    """A random input that requires grad (the layer sits inside a network) and its masks."""
    gen = torch.Generator().manual_seed(settings.seed)
    shape = (config.batch, config.in_channels, config.size, config.size)
    x = torch.randn(shape, generator=gen).to(settings.device, settings.dtype).requires_grad_()
    masks: dict[str, Tensor | None] = {"none": None, "multi": None, "single": None, "shared": None}
    if config.holes is not None:
        single = random_holes((config.batch, 1, config.size, config.size), config.holes, generator=gen).to(
            settings.device, settings.dtype
        )
        masks.update(multi=single.expand(shape).contiguous(), single=single, shared=single.squeeze(1).clone())
    out = config.size + config.layers * (2 * config.padding - config.kernel_size + 1)
    grad = torch.randn((config.batch, config.out_channels, out, out), generator=gen).to(settings.device, settings.dtype)
    return Inputs(x, masks, grad)


def applicable(impl: Impl, config: Config, settings: Settings) -> str | None:
    """None if ``impl`` runs on ``config``, else why not."""
    if impl.kind == "pconv" and impl.mask == "shared" and config.holes is None:
        return "with mask None it is the PConv2d row"
    if impl.kind != "v011":
        return None
    if settings.v011 is None:
        return "not given (--v011 PATH to its wheel: pip download --no-deps torch-pconv==0.1.1 -d DIR)"
    if config.holes is None:
        return "needs a mask"
    if settings.dtype != torch.float32:
        return "float32 only"
    return None


# ----------------------------------------------------------------------------------------------
# The measured calls


def forward(net: Network, inputs: Inputs, mask: Tensor | None) -> Tensor:
    output: Tensor = net(inputs.x, mask)
    return output


def forward_backward(net: Network, inputs: Inputs, mask: Tensor | None) -> None:
    output = net(inputs.x, mask)
    params = [p for p in net.parameters() if p.requires_grad]
    torch.autograd.grad(output, [inputs.x, *params], inputs.grad)


def inference(net: Network, inputs: Inputs, mask: Tensor | None) -> None:
    with torch.no_grad():
        net(inputs.x, mask)


STEPS: dict[str, Callable[[Network, Inputs, Tensor | None], object]] = {
    "forward": forward,
    "forward+backward": forward_backward,
    "inference": inference,
}


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(step: Callable[[], object], device: str) -> float:
    """Seconds one call of ``step`` takes, waiting for the device to finish."""
    _sync(device)
    start = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - start


class LiveBytes:
    """Peak and final bytes of live tensors in named windows, relative to each window's start::

        with LiveBytes("cpu") as meter:
            ...                                 # make the tensors the windows will free
            with meter.window("name"):
                ...
        peak, end = meter.results["name"]

    CUDA reads the caching allocator's counters. CPU sums the profiler's allocation events in
    order: the profiler reports the free of a tensor only if it was running when the tensor was
    allocated, so everything a window may free must be made inside ``with meter``.
    """

    def __init__(self, device: str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.device = device
        self.results: dict[str, tuple[int, int]] = {}
        self._profile: profile | None = None

    def __enter__(self) -> LiveBytes:
        if not self.cuda:
            self._profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._profile.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._profile is not None:
            self._profile.stop()
            if exc[0] is None:
                self.results.update(_windows_from_profile(self._profile))

    @contextmanager
    def window(self, name: str) -> Iterator[None]:
        if self._profile is not None:
            with record_function(_WINDOW + name):
                yield
            return
        _sync(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        start = torch.cuda.memory_allocated(self.device)
        yield
        _sync(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - start
        self.results[name] = (peak, torch.cuda.memory_allocated(self.device) - start)


_WINDOW = "torch_pconv.bench.window:"


def _windows_from_profile(prof: profile) -> dict[str, tuple[int, int]]:
    """(peak, end) of the running sum of allocation sizes (frees are negative) in each window.

    ``prof.events()`` folds allocations into the operators that made them (losing the peaks
    inside an operator), so this reads the raw event tree, where each allocation and free is
    an event of its own with its size. Empty where this torch does not expose it.
    """
    found = profile_events(prof)
    if found is None:
        return {}
    allocations, events = found
    results = {}
    for name, start, end in events:
        if not name.startswith(_WINDOW):
            continue
        live = peak = 0
        for when, size in allocations:
            if start <= when <= end:
                live += size
                peak = max(peak, live)
        results[name.removeprefix(_WINDOW)] = (peak, live)
    return results


# ----------------------------------------------------------------------------------------------
# One config


@dataclass
class Row:
    """Every figure of one implementation on one config."""

    config: str
    implementation: str
    times: dict[str, list[float]] = field(default_factory=dict)  # mode -> seconds of each repeat
    memory: dict[str, int] = field(default_factory=dict)  # MEMORY name -> bytes
    error: float | None = None  # max|out - reference out| / max|reference out|


def measure_times(
    impls: list[Impl], nets: dict[str, Network], inputs: Inputs, settings: Settings, tick: Callable[[], None]
) -> dict[str, dict[str, list[float]]]:
    """Seconds per call, interleaved: every repeat runs each mode of each implementation once."""
    times: dict[str, dict[str, list[float]]] = {impl.name: {mode: [] for mode in MODES} for impl in impls}
    for repeat in range(settings.warmup + settings.repeats):
        start = repeat % len(impls)  # rotate who goes first, so no one always follows the same neighbour
        for mode in MODES:
            for impl in impls[start:] + impls[:start]:
                net, mask = nets[impl.name], inputs.masks[impl.mask]
                seconds = time_call(lambda: STEPS[mode](net, inputs, mask), settings.device)  # noqa: B023
                if repeat >= settings.warmup:
                    times[impl.name][mode].append(seconds)
                tick()
    return times


def measure_memory(impl: Impl, config: Config, settings: Settings) -> dict[str, int]:
    """Peak and held bytes of each mode, on a network and inputs made under the meter."""
    with LiveBytes(settings.device) as meter:
        net, inputs = build_network(impl, config, settings), make_inputs(config, settings)
        mask = inputs.masks[impl.mask]
        # Warm the caches (in both grad modes) under the meter, so that their frees are seen.
        forward(net, inputs, mask)
        inference(net, inputs, mask)
        with meter.window("forward"):
            output = forward(net, inputs, mask)
        del output  # frees the graph
        with meter.window("forward+backward"):
            forward_backward(net, inputs, mask)
        with meter.window("inference"):
            inference(net, inputs, mask)
    results = meter.results
    if not results:  # this torch's profiler does not expose allocations: no memory figures
        return {}
    return {
        "peak forward": results["forward"][0],
        "held forward→backward": results["forward"][1],
        "peak forward+backward": results["forward+backward"][0],
        "peak inference": results["inference"][0],
    }


def agreement(nets: dict[str, Network], impls: list[Impl], inputs: Inputs) -> dict[str, float]:
    """Relative error of each partial implementation's output against the reference's: a check
    that every row computes the same thing."""
    with torch.no_grad():
        outputs = {impl.name: nets[impl.name](inputs.x, inputs.masks[impl.mask]).double() for impl in impls}
    ref = outputs[REFERENCE]
    scale = ref.abs().max().item() or 1.0
    return {impl.name: (outputs[impl.name] - ref).abs().max().item() / scale for impl in impls if impl.kind != "conv"}


def bench_config(config: Config, impls: list[Impl], settings: Settings, tick: Callable[[], None]) -> list[Row]:
    """Time, memory and agreement of every implementation on ``config``."""
    nets = {impl.name: build_network(impl, config, settings) for impl in impls}
    inputs = make_inputs(config, settings)
    errors = agreement(nets, impls, inputs)
    times = measure_times(impls, nets, inputs, settings, tick)
    del nets, inputs
    rows = []
    for impl in impls:
        memory = measure_memory(impl, config, settings)
        tick()
        rows.append(Row(config.name, impl.name, times[impl.name], memory, errors.get(impl.name)))
    return rows


# ----------------------------------------------------------------------------------------------
# Summaries and output


def time_stats(seconds: list[float]) -> dict[str, float]:
    """Median, quartiles, min and max, in milliseconds."""
    ms = sorted(s * 1e3 for s in seconds)
    q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else (ms[0],) * 3
    return {"median": statistics.median(ms), "q1": q1, "q3": q3, "min": ms[0], "max": ms[-1]}


def records(rows: list[Row]) -> list[dict[str, Any]]:
    """One flat record per figure, with its ratios to nn.Conv2d and to the reference."""
    by_name = {(row.config, row.implementation): row for row in rows}
    out = []
    for row in rows:
        base = {"config": row.config, "implementation": row.implementation}
        conv, ref = by_name[(row.config, CONV)], by_name[(row.config, REFERENCE)]
        for mode, seconds in row.times.items():
            stats = time_stats(seconds)
            out.append(
                {
                    **base,
                    "metric": f"time {mode}",
                    "unit": "ms",
                    "value": stats["median"],
                    "ratio_to_conv": stats["median"] / time_stats(conv.times[mode])["median"],
                    "ratio_to_reference": stats["median"] / time_stats(ref.times[mode])["median"],
                    **{k: stats[k] for k in ("q1", "q3", "min", "max")},
                    "samples_ms": [s * 1e3 for s in seconds],
                }
            )
        for name, value in row.memory.items():
            out.append(
                {
                    **base,
                    "metric": f"memory {name}",
                    "unit": "bytes",
                    "value": value,
                    "ratio_to_conv": _ratio(value, conv.memory[name]),
                    "ratio_to_reference": _ratio(value, ref.memory[name]),
                }
            )
        if row.error is not None:
            out.append({**base, "metric": "relative error vs reference", "unit": "", "value": row.error})
    return out


def _ratio(value: float, base: float) -> float:
    return value / base if base else math.nan


def format_tables(configs: list[Config], recs: list[dict[str, Any]], settings: Settings) -> str:
    """The printed report: per config, a time table and a memory table, with ratios."""
    lines = []
    get = {(r["config"], r["implementation"], r["metric"]): r for r in recs}
    dtype = str(settings.dtype).removeprefix("torch.")
    for config in configs:
        names = list(dict.fromkeys(r["implementation"] for r in recs if r["config"] == config.name))
        if not names:
            continue
        width = max(map(len, names)) + 1
        lines += ["", f"== {config.name}: {config.describe()} ({dtype}, {settings.device}) =="]
        lines.append("time, ms".ljust(width) + "".join(f"{mode:^37}" for mode in MODES))
        lines.append(" " * width + f"{'median':>9} {'[IQR]':<13}{'×conv':>7}{'×ref':>7}" * len(MODES))
        for name in names:
            row = name.ljust(width)
            for mode in MODES:
                r = get[(config.name, name, f"time {mode}")]
                spread = f"[{_ms(r['q1'])}–{_ms(r['q3'])}]"
                row += f"{_ms(r['value']):>9} {spread:<13}{r['ratio_to_conv']:>6.2f}×{r['ratio_to_reference']:>6.2f}×"
            lines.append(row)
        lines.append("")
        if not any(r["metric"].startswith("memory") for r in recs if r["config"] == config.name):
            lines.append("memory: not measured (this torch's profiler does not expose its allocation events)")
        else:
            lines += _memory_table(get, config, names, width)
        errors = [(n, get[(config.name, n, "relative error vs reference")]["value"]) for n in names if n != CONV]
        lines.append("output, max|out - ref| / max|ref|: " + ", ".join(f"{n} {e:.0e}" for n, e in errors))
        tolerance = 1e-3 if settings.dtype in (torch.float32, torch.float64) else 3e-2
        lines += [f"WARNING: {n} does not compute what the reference computes" for n, e in errors if e > tolerance]
    return "\n".join(lines)


def _memory_table(get: dict[Any, dict[str, Any]], config: Config, names: list[str], width: int) -> list[str]:
    lines = ["memory, MiB".ljust(width) + "".join(f"{metric:^23}" for metric in MEMORY)]
    lines.append(" " * width + f"{'MiB':>9}{'×conv':>7}{'×ref':>7}" * len(MEMORY))
    for name in names:
        row = name.ljust(width)
        for metric in MEMORY:
            r = get[(config.name, name, f"memory {metric}")]
            row += f"{_ms(r['value'] / 2**20):>9}{r['ratio_to_conv']:>6.2f}×{r['ratio_to_reference']:>6.2f}×"
        lines.append(row)
    return lines


def _ms(value: float) -> str:
    """Milliseconds (or MiB) to three significant digits or so."""
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def environment(settings: Settings) -> dict[str, Any]:
    """What ran where: versions, hardware, threads."""
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
        "dtype": str(settings.dtype).removeprefix("torch."),
        "repeats": settings.repeats,
        "warmup": settings.warmup,
        "seed": settings.seed,
        "torch-pconv 0.1.1": settings.v011 is not None,
    }


def _cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def write_json(
    path: Path, env: dict[str, Any], configs: list[Config], recs: list[dict[str, Any]], notes: list[str]
) -> None:
    data = {
        "environment": env,
        "measured": MEASURED,
        "configs": [{**asdict(c), "description": c.describe()} for c in configs],
        "notes": notes,
        "results": recs,
    }
    path.write_text(json.dumps(data, indent=1, allow_nan=True) + "\n")


CSV_FIELDS = ["config", "implementation", "metric", "unit", "value", "ratio_to_conv", "ratio_to_reference"]
CSV_FIELDS += ["q1", "q3", "min", "max"]


def write_csv(path: Path, recs: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(recs)


def write_chart(path: Path, configs: list[Config], recs: list[dict[str, Any]], env: dict[str, Any]) -> str | None:
    """A bar chart of every ratio to nn.Conv2d, one panel per config; None, or why it was skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'torch_pconv[bench]'): no chart"
    measured = {r["metric"] for r in recs}
    metrics = [m for m in [f"time {m}" for m in MODES] + [f"memory {m}" for m in MEMORY] if m in measured]
    labels = [m.removeprefix("time ").removeprefix("memory ").replace(" ", "\n", 1) for m in metrics]
    shown = [c for c in configs if any(r["config"] == c.name for r in recs)]
    colors = plt.get_cmap("tab10")
    fig, axes = plt.subplots(len(shown), 1, figsize=(13, 3.4 * len(shown)), squeeze=False)
    for ax, config in zip(axes[:, 0], shown, strict=True):
        names = list(dict.fromkeys(r["implementation"] for r in recs if r["config"] == config.name))
        get = {(r["implementation"], r["metric"]): r for r in recs if r["config"] == config.name}
        step = 0.8 / len(names)
        for i, name in enumerate(names):
            xs = [j + (i - (len(names) - 1) / 2) * step for j in range(len(metrics))]
            color = colors([impl.name for impl in IMPLS].index(name))  # the same colour in every panel
            ax.bar(xs, [get[(name, m)]["ratio_to_conv"] for m in metrics], step, label=name, color=color)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.axvline(len(MODES) - 0.5, color="grey", linestyle=":")  # time | memory
        ax.set_xticks(range(len(metrics)), labels, fontsize=8)
        ax.set_ylabel("× nn.Conv2d")
        ax.set_title(f"{config.name}: {config.describe()}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"torch_pconv bench: {env['hardware']}, {env['threads']} threads, torch {env['torch']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _progress(total: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """(tick, close) of a tqdm bar on a terminal; no-ops otherwise."""
    try:
        from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return lambda: None, lambda: None
    if not sys.stdout.isatty():
        return lambda: None, lambda: None
    bar = tqdm(total=total, unit="call", leave=False)
    return lambda: bar.update(), bar.close


def run_bench(
    configs: list[Config], settings: Settings, out: Path | None, progress: bool = True
) -> tuple[str, list[dict[str, Any]]]:
    """Run every config, write JSON, CSV and PNG to ``out``, and return the report and the records."""
    plan = []
    skipped: dict[str, list[str]] = {}  # why torch-pconv 0.1.1 did not run -> on which configs
    for config in configs:
        impls = []
        for impl in IMPLS:
            why = applicable(impl, config, settings)
            if why is None:
                impls.append(impl)
            elif impl.kind == "v011":
                skipped.setdefault(why, []).append(config.name)
        plan.append((config, impls))
    notes = [f"{V011} not measured on {', '.join(names)}: {why}" for why, names in skipped.items()]
    total = sum(len(impls) * (len(MODES) * (settings.warmup + settings.repeats) + 1) for _, impls in plan)
    tick, close = _progress(total) if progress else (lambda: None, lambda: None)
    rows = []
    try:
        for config, impls in plan:
            rows += bench_config(config, impls, settings, tick)
    finally:
        close()
    recs = records(rows)
    env = environment(settings)
    report = format_tables(configs, recs, settings)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        no_chart = write_chart(out / "bench.png", configs, recs, env)
        files = ["bench.json", "bench.csv"] + ([] if no_chart else ["bench.png"])
        notes += [no_chart] if no_chart else []
        notes.append("wrote " + ", ".join(str(out / name) for name in files))
        write_json(out / "bench.json", env, configs, recs, notes)
        write_csv(out / "bench.csv", recs)
    head = (
        f"torch_pconv {__version__} bench: torch {env['torch']}, {env['hardware']}, {env['threads']} threads, "
        f"{env['dtype']}, {settings.repeats} repeats after {settings.warmup} warm-up"
    )
    return "\n".join([head, report, "", MEASURED, "", *notes]), recs


def selected_configs(args: Any) -> list[Config]:
    """The configs named by --configs, with --batch, --full and the custom options applied."""
    custom_given = any(
        getattr(args, name) is not None
        for name in ("in_channels", "out_channels", "kernel_size", "padding", "size", "holes", "layers")
    )
    names = args.configs or (["custom"] if custom_given else list(CONFIGS))
    configs = []
    for name in names:
        if name == "custom":
            config = _custom(args)
        else:
            config = CONFIGS[name]
            if args.full and name == "v011":
                config = replace(config, batch=V011_FULL_BATCH)
        if args.batch is not None:
            config = replace(config, batch=args.batch)
        configs.append(config)
    return configs


def _custom(args: Any) -> Config:
    base = CONFIGS["inpainting"]
    kernel = base.kernel_size if args.kernel_size is None else args.kernel_size
    holes = base.holes if args.holes is None else (None if args.holes == 0 else args.holes)
    return Config(
        "custom",
        base.batch,
        base.in_channels if args.in_channels is None else args.in_channels,
        base.out_channels if args.out_channels is None else args.out_channels,
        kernel,
        kernel // 2 if args.padding is None else args.padding,
        base.size if args.size is None else args.size,
        holes,
        1 if args.layers is None else args.layers,
    )


DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def add_arguments(parser: Any) -> None:
    """The options of ``python -m torch_pconv bench``."""
    names = [*CONFIGS, "custom"]
    parser.add_argument("--configs", nargs="+", choices=names, help=f"configs to run (default: {' '.join(CONFIGS)})")
    parser.add_argument("--device", default="cpu", help="torch device, such as cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="(default: float32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per mode and implementation (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: 1)")
    parser.add_argument(
        "--out", type=Path, default=Path("bench-out"), help="folder for JSON, CSV and PNG (default: bench-out)"
    )
    parser.add_argument("--full", action="store_true", help=f"v011 at torch-pconv 0.1.1's batch of {V011_FULL_BATCH}")
    parser.add_argument("--batch", type=int, help="batch size of every config run (default: each config's own)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads for the run (default: torch's own)")
    parser.add_argument("--v011", metavar="PATH", help="torch-pconv 0.1.1's wheel or folder, to measure it too")
    custom = parser.add_argument_group("custom config (any of these runs it; the rest as in 'inpainting')")
    custom.add_argument("--in-channels", type=int)
    custom.add_argument("--out-channels", type=int)
    custom.add_argument("--kernel-size", type=int)
    custom.add_argument("--padding", type=int, help="(default: kernel-size // 2)")
    custom.add_argument("--size", type=int, help="height and width of the input")
    custom.add_argument("--holes", type=float, help="fraction of holes in the mask; 0: no mask (default: 0.5)")
    custom.add_argument("--layers", type=int, help="more than 1: an encoder of conv → BatchNorm2d → ReLU")


def main(args: Any) -> int:
    """``python -m torch_pconv bench``."""
    start = time.perf_counter()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = Settings(args.device, DTYPES[args.dtype], args.repeats, args.warmup, args.seed)
    if args.v011:
        settings.v011 = load_v011(args.v011)
    report, _ = run_bench(selected_configs(args), settings, args.out)
    print(report)
    print(f"\ndone in {time.perf_counter() - start:.0f} s")
    return 0
