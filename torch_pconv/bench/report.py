"""The printed report: a header, per config a time table and a memory table, what was measured, and the notes.

Each time and ratio prints as its median ± half its interquartile range over the repeats.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .. import __version__
from .configs import Config
from .impls import CONV
from .records import MEASURED, SHORT, quartiles
from .run import Row, Run
from .training import CHECKS


def format_report(run: Run, recs: list[dict[str, Any]], env: dict[str, Any], notes: list[str]) -> str:
    """The whole report, from the run, its records and its environment (see records)."""
    head = (
        f"torch_pconv {__version__} bench: torch {env['torch']}, {env['hardware']}, {env['threads']} threads, "
        f"{env['dtype']}, median ± IQR/2 of {run.settings.repeats} interleaved repeats after "
        f"{run.settings.warmup} warm-up; " + ("full sizes" if env["full"] else "default sizes (--full: the full ones)")
    )
    lines = [head, f"allocator: {env['allocator']}"]
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
        heads = ("µs/call", "µs beyond") if config.fixed_cost else ("ms",)
        cell = "".join(f"{head:>{_WIDTH}}" for head in (*heads, "×conv", "×NVIDIA"))
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
            lines.append("memory".ljust(width) + "".join(f"{SHORT[m]:^{len(cell)}}" for m in memory))
            lines.append(" " * width + cell * len(memory))
            for name in names:
                cells = [_memory_cell(get[(config.name, name, f"memory {m}")]) for m in memory]
                lines.append(name.ljust(width) + "".join(cells))
    if config.compiled:
        lines += _compiled_summary(config, get)
    if config.network is not None:
        return lines + _network_agreement(config, rows)
    errors = [(row.impl.name, row.error) for row in rows if row.error is not None]
    lines.append("output, max|out - NVIDIA| / max|NVIDIA|: " + ", ".join(f"{n} {e:.0e}" for n, e in errors))
    tolerance = 1e-3 if settings.dtype in (torch.float32, torch.float64) else 3e-2
    lines += [f"WARNING: {n} does not compute what NVIDIA's layer computes" for n, e in errors if e > tolerance]
    return lines


_WIDTH = 14  # of a time cell: "12.3 ±0.45" and "1.05 ±0.03×" right-aligned, with room


def _spread(r: dict[str, Any], name: str, scale: float = 1.0, unit: str = "", digits: int | None = None) -> str:
    """The record's median ``name`` ± half its interquartile range, both times ``scale``: one cell."""
    median, half = r[name] * scale, (r[f"{name}_q3"] - r[f"{name}_q1"]) / 2 * scale
    if math.isnan(median):
        return f"{'-':>{_WIDTH}}"
    if digits is None:  # milliseconds: three significant digits or so, the spread to the same place
        digits = 0 if abs(median) >= 100 else 1 if abs(median) >= 10 else 2
    return f"{f'{median:.{digits}f} ±{half:.{digits}f}{unit}':>{_WIDTH}}"


def _time_cell(r: dict[str, Any], config: Config) -> str:
    ratios = _spread(r, "ratio_to_conv", unit="×", digits=2) + _spread(r, "ratio_to_nvidia", unit="×", digits=2)
    if config.fixed_cost:
        return _spread(r, "value", scale=1e3, digits=0) + _spread(r, "beyond_conv_us", digits=0) + ratios
    return _spread(r, "value") + ratios


def _memory_cell(r: dict[str, Any]) -> str:
    return f"{_num(r['value'] / 2**20):>9}{_times(r['ratio_to_conv']):>7}{_times(r['ratio_to_nvidia']):>8}"


def _compiled_summary(config: Config, get: dict[Any, dict[str, Any]]) -> list[str]:
    """The compiled rows put in words: ours ÷ conv, compiled and eager; compiled ÷ eager."""
    name = "PConv2d multi_channel" if config.network else "PConv2d"  # the U-Net's, or the layer's
    mode = config.modes[0]
    names = [CONV, name, f"{CONV} (compiled)", f"{name} (compiled)"]
    keys = [(config.name, name, f"time {mode}") for name in names]
    if not all(key in get for key in keys):
        return []
    conv, ours, conv_compiled, ours_compiled = (get[key] for key in keys)

    def slowdown(compiled: dict[str, Any], eager: dict[str, Any]) -> str:  # per repeat; not neighbours
        pairs = zip(compiled["samples_ms"], eager["samples_ms"], strict=True)
        q1, median, q3 = quartiles([c / e for c, e in pairs])
        return f"{median:.2f} ±{(q3 - q1) / 2:.2f}×"

    def to_conv(r: dict[str, Any]) -> str:
        return _spread(r, "ratio_to_conv", unit="×", digits=2).strip()

    return [
        f"{mode}, {name} ÷ nn.Conv2d: compiled {to_conv(ours_compiled)}, eager {to_conv(ours)}; "
        f"compiled ÷ eager: nn.Conv2d {slowdown(conv_compiled, conv)}, {name} {slowdown(ours_compiled, ours)}"
    ]


def _network_agreement(config: Config, rows: list[Row]) -> list[str]:
    """How far each partial network is from NVIDIA's twin (see training.agreement), and a warning
    where it is past the check's tolerance."""
    check = CHECKS[config.network or ""]
    size = min(check.size, config.size)
    where = f"{str(check.dtype).removeprefix('torch.')}, B={check.batch}, {size}×{size}"

    def error(value: float) -> str:
        return "0" if value == 0 else f"{value:.0e}"

    found = [(row.impl.name, row.error or 0.0, row.grad_error or 0.0) for row in rows if row.error is not None]
    text = "; ".join(f"{name}: output {error(out)}, gradients {error(grad)}" for name, out, grad in found)
    lines = [f"agreement with NVIDIA's twin ({where}), max|difference| / max|NVIDIA's|: {text}"]
    return lines + [
        f"WARNING: {name} does not compute what NVIDIA's twin computes (tolerance {check.tolerance:.0e})"
        for name, out, grad in found
        if max(out, grad) > check.tolerance
    ]


def _times(ratio: float) -> str:
    return "-" if math.isnan(ratio) else f"{ratio:.2f}×"


def _num(value: float) -> str:
    """Milliseconds (or MiB) to three significant digits or so."""
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"
