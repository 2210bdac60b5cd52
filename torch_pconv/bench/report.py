"""The benchmark's output: flat records with their ratios, the printed tables, and JSON, CSV and PNG files."""

from __future__ import annotations

import csv
import json
import math
import platform
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from .configs import MEMORY, MODES, Config
from .impls import CONV, IMPLS, conv_of, nvidia_of
from .run import Row, Run

__all__ = ["MEASURED", "environment", "format_report", "records", "write_chart", "write_csv", "write_json"]

MEASURED = """\
time: wall clock of one call, median and interquartile range (IQR) over the repeats after the warm-up.
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
  output gradient already exist and are not counted). CPU: the profiler's allocation events
  (torch.profiler with profile_memory=True: every allocation and free with its size), summed in
  order, taking the running maximum. CUDA: torch.cuda.max_memory_allocated after
  reset_peak_memory_stats, minus memory_allocated before. 'peak' is the maximum during the call;
  'held forward→backward' is what is still allocated after the forward, with the output and its
  graph alive: what training keeps until the backward runs; 'hooks' is the same under a caller's
  saved-tensor hooks (torch.autograd.graph.saved_tensors_hooks, as checkpointing or offloading
  installs, that keep each tensor as it is: its data, not a copy). Caches (NVIDIA's stored mask
  ratio, PConv2d's mask=None ratio) are warm: a forward in each grad mode measured runs first.
NVIDIA: NVIDIA's PartialConv2d as torch_pconv.reference transcribes it; every row's output is checked
  against its multi_channel layer's."""

NAN = math.nan


# ----------------------------------------------------------------------------------------------
# Records


def time_stats(seconds: list[float]) -> dict[str, float]:
    """Median, quartiles, min and max, in milliseconds."""
    ms = sorted(s * 1e3 for s in seconds)
    q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else (ms[0],) * 3
    return {"median": statistics.median(ms), "q1": q1, "q3": q3, "min": ms[0], "max": ms[-1]}


def records(run: Run) -> list[dict[str, Any]]:
    """One flat record per figure, with its ratios to nn.Conv2d and to NVIDIA's layer."""
    by_name = {(row.config.name, row.impl.name): row for row in run.rows}
    out = []
    for row in run.rows:
        conv = by_name[(row.config.name, conv_of(row.impl).name)]
        nvidia = by_name.get((row.config.name, nvidia_of(row.impl)))
        base = {"config": row.config.name, "implementation": row.impl.name}
        for mode, samples in row.times.items():
            ratios = [s / c for s, c in zip(samples.seconds, samples.conv, strict=True)]
            to_nvidia = NAN
            if nvidia is not None:
                theirs = nvidia.times[mode]
                pairs = zip(ratios, theirs.seconds, theirs.conv, strict=True)
                to_nvidia = statistics.median(r * c / s for r, s, c in pairs)
            beyond = statistics.median(s - c for s, c in zip(samples.seconds, samples.conv, strict=True))
            stats = time_stats(samples.seconds)
            out.append(
                {
                    **base,
                    "metric": f"time {mode}",
                    "unit": "ms",
                    "value": stats["median"],
                    "ratio_to_conv": statistics.median(ratios),
                    "ratio_to_nvidia": to_nvidia,
                    "beyond_conv_us": beyond * 1e6,
                    **{k: stats[k] for k in ("q1", "q3", "min", "max")},
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
    return out


def _ratio(value: float, base: float) -> float:
    return value / base if base else NAN


# ----------------------------------------------------------------------------------------------
# The printed report

_SHORT = dict(zip(MEMORY, ["peak fwd", "held fwd→bwd", "held, hooks", "peak fwd+bwd", "peak no_grad"], strict=True))


def format_report(run: Run, recs: list[dict[str, Any]], env: dict[str, Any], notes: list[str]) -> str:
    """The header, per config a time table and a memory table, what was measured, and the notes."""
    head = (
        f"torch_pconv {__version__} bench: torch {env['torch']}, {env['hardware']}, {env['threads']} threads, "
        f"{env['dtype']}, median of {run.settings.repeats} interleaved repeats after {run.settings.warmup} warm-up; "
        + ("full sizes" if env["full"] else "default sizes (--full: the full ones)")
    )
    lines = [head]
    get = {(r["config"], r["implementation"], r["metric"]): r for r in recs}
    for config in run.configs:
        rows = [row for row in run.rows if row.config.name == config.name]
        if rows:
            lines += ["", *_config_tables(config, rows, get, run)]
    return "\n".join([*lines, "", MEASURED, "", *notes])


def _config_tables(config: Config, rows: list[Row], get: dict[Any, dict[str, Any]], run: Run) -> list[str]:
    names = [row.impl.name for row in rows]
    width = max(map(len, names)) + 1
    settings = run.settings.for_config(config)
    dtype = str(settings.dtype).removeprefix("torch.")
    lines = [f"== {config.name}: {config.describe()} ({dtype}, {settings.device}) =="]
    if config.modes:
        if config.fixed_cost:
            cell = f"{'µs/call':>9}{'µs beyond':>11}{'×conv':>7}{'×NVIDIA':>8}"
        else:
            cell = f"{'ms':>9} {'[IQR]':<15}{'×conv':>7}{'×NVIDIA':>8}"
        lines.append("time".ljust(width) + "".join(f"{mode:^{len(cell)}}" for mode in config.modes))
        lines.append(" " * width + cell * len(config.modes))
        for name in names:
            cells = [_time_cell(get[(config.name, name, f"time {mode}")], config) for mode in config.modes]
            lines.append(name.ljust(width) + "".join(cells))
    if config.memory:
        memory = [m for m in config.memory if any((config.name, n, f"memory {m}") in get for n in names)]
        if not memory:
            lines.append("memory: not measured (this torch's profiler does not expose its allocation events)")
        else:
            cell = f"{'MiB':>9}{'×conv':>7}{'×NVIDIA':>8}"
            lines.append("memory".ljust(width) + "".join(f"{_SHORT[m]:^{len(cell)}}" for m in memory))
            lines.append(" " * width + cell * len(memory))
            for name in names:
                cells = [_memory_cell(get[(config.name, name, f"memory {m}")]) for m in memory]
                lines.append(name.ljust(width) + "".join(cells))
    if config.compiled:
        lines += _compiled_summary(config, get)
    errors = [(row.impl.name, row.error) for row in rows if row.error is not None]
    lines.append("output, max|out - NVIDIA| / max|NVIDIA|: " + ", ".join(f"{n} {e:.0e}" for n, e in errors))
    tolerance = 1e-3 if settings.dtype in (torch.float32, torch.float64) else 3e-2
    lines += [f"WARNING: {n} does not compute what NVIDIA's layer computes" for n, e in errors if e > tolerance]
    return lines


def _time_cell(r: dict[str, Any], config: Config) -> str:
    tail = f"{r['ratio_to_conv']:>6.2f}×{_times(r['ratio_to_nvidia']):>8}"
    if config.fixed_cost:
        return f"{r['value'] * 1e3:>9.0f}{r['beyond_conv_us']:>+11.0f}{tail}"
    spread = f"[{_num(r['q1'])}–{_num(r['q3'])}]"
    return f"{_num(r['value']):>9} {spread:<15}{tail}"


def _memory_cell(r: dict[str, Any]) -> str:
    return f"{_num(r['value'] / 2**20):>9}{_times(r['ratio_to_conv']):>7}{_times(r['ratio_to_nvidia']):>8}"


def _compiled_summary(config: Config, get: dict[Any, dict[str, Any]]) -> list[str]:
    """The compiled config's rows put in words: ours ÷ conv, compiled and eager; compiled ÷ eager."""
    names = [CONV, "PConv2d", f"{CONV} (compiled)", "PConv2d (compiled)"]
    keys = [(config.name, name, "time forward") for name in names]
    if not all(key in get for key in keys):
        return []
    conv, ours, conv_compiled, ours_compiled = (get[key] for key in keys)

    def slowdown(compiled: dict[str, Any], eager: dict[str, Any]) -> float:  # per repeat; not neighbours
        pairs = zip(compiled["samples_ms"], eager["samples_ms"], strict=True)
        return float(statistics.median(c / e for c, e in pairs))

    return [
        f"forward, PConv2d ÷ nn.Conv2d: compiled {ours_compiled['ratio_to_conv']:.2f}×, "
        f"eager {ours['ratio_to_conv']:.2f}×; compiled ÷ eager: nn.Conv2d {slowdown(conv_compiled, conv):.2f}×, "
        f"PConv2d {slowdown(ours_compiled, ours):.2f}×"
    ]


def _times(ratio: float) -> str:
    return "-" if math.isnan(ratio) else f"{ratio:.2f}×"


def _num(value: float) -> str:
    """Milliseconds (or MiB) to three significant digits or so."""
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


# ----------------------------------------------------------------------------------------------
# Files


def environment(run: Run) -> dict[str, Any]:
    """What ran where: versions, hardware, threads, sizes and the other builds."""
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


def write_json(path: Path, run: Run, recs: list[dict[str, Any]], env: dict[str, Any], notes: list[str]) -> None:
    data = {
        "environment": env,
        "measured": MEASURED,
        "configs": [{**asdict(c), "description": c.describe()} for c in run.configs],
        "notes": notes,
        "results": recs,
    }
    path.write_text(json.dumps(data, indent=1, allow_nan=True) + "\n")


CSV_FIELDS = ["config", "implementation", "metric", "unit", "value", "ratio_to_conv", "ratio_to_nvidia"]
CSV_FIELDS += ["beyond_conv_us", "q1", "q3", "min", "max"]


def write_csv(path: Path, recs: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(recs)


def write_chart(path: Path, run: Run, recs: list[dict[str, Any]], env: dict[str, Any]) -> str | None:
    """Per config, a panel of time ratios and one of memory ratios to nn.Conv2d; None, or why it was skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'torch_pconv[bench]'): no chart"
    shown = [c for c in run.configs if any(r["config"] == c.name for r in recs)]
    if not shown:
        return "nothing measured: no chart"
    colors = plt.get_cmap("tab10")
    color = {impl.name: colors(i % 10) for i, impl in enumerate(IMPLS)}  # the same colour in every panel
    legend: dict[str, Any] = {}
    fig, axes = plt.subplots(len(shown), 2, figsize=(16, 3.2 * len(shown) + 1), squeeze=False)
    for (ax_time, ax_memory), config in zip(axes, shown, strict=True):
        get = {(r["implementation"], r["metric"]): r for r in recs if r["config"] == config.name}
        names = list(dict.fromkeys(name for name, _ in get))
        panels = [
            (ax_time, "time", [m for m in MODES if m in config.modes]),
            (ax_memory, "memory", [m for m in MEMORY if any((n, f"memory {m}") in get for n in names)]),
        ]
        for ax, kind, metrics in panels:
            if not metrics:
                ax.set_axis_off()
                ax.set_title(f"{config.name}: {kind} not measured", fontsize=8)
                continue
            step = 0.8 / len(names)
            for i, name in enumerate(names):
                xs = [j + (i - (len(names) - 1) / 2) * step for j in range(len(metrics))]
                ratios = [get[(name, f"{kind} {m}")]["ratio_to_conv"] for m in metrics]
                legend[name] = bars = ax.bar(xs, ratios, step, label=name, color=color[name])
                ax.bar_label(bars, fmt="%.2f", fontsize=6, rotation=90, padding=2)
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_xticks(range(len(metrics)), [_SHORT.get(m, m) for m in metrics], fontsize=8)
            compiled = " (compiled rows: compiled)" if config.compiled else ""
            ax.set_ylabel(f"{kind} ÷ nn.Conv2d{compiled}\n(lower is better)", fontsize=8)
            ax.margins(y=0.25)
            title = f"{config.name}, {kind}: {config.describe()}"
            ax.set_title(title if len(title) < 100 else title[:97] + "...", fontsize=8)
    inch = 1 / fig.get_figheight()  # the top inch holds the title, then the legend
    fig.suptitle(
        f"torch_pconv bench: each figure ÷ nn.Conv2d's of the same shape, lower is better. {env['hardware']}, "
        f"{env['threads']} threads, torch {env['torch']}, {env['dtype']}",
        fontsize=10,
        y=1 - 0.15 * inch,
    )
    fig.legend(
        legend.values(),
        legend.keys(),
        loc="upper center",
        ncol=min(len(legend), 6),
        fontsize=8,
        bbox_to_anchor=(0.5, 1 - 0.4 * inch),
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 1.0 * inch))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None
