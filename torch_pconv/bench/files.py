"""The benchmark's files: JSON (every record, the environment, the configs and the notes), CSV (the
records, one row each) and a PNG chart of the ratios to nn.Conv2d."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .configs import MEMORY, MODES, STEP
from .records import MEASURED, SHORT
from .run import Run


def write_json(path: Path, run: Run, recs: list[dict[str, Any]], env: dict[str, Any], notes: list[str]) -> None:
    data = {
        "environment": env,
        "measured": MEASURED,
        "configs": [{**asdict(c), "description": c.describe()} for c in run.configs],
        "notes": notes,
        "results": recs,
    }
    path.write_text(json.dumps(data, indent=1, allow_nan=True) + "\n")


# Each median (value, ratio_to_conv, ratio_to_nvidia, beyond_conv_us) next to its quartiles.
_MEDIANS = ("value", "ratio_to_conv", "ratio_to_nvidia", "beyond_conv_us")
CSV_FIELDS = ["config", "implementation", "metric", "unit"]
CSV_FIELDS += [field for name in _MEDIANS for field in (name, f"{name}_q1", f"{name}_q3")] + ["min", "max"]


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
    rows = dict.fromkeys(r["implementation"] for r in recs)
    color = {name: colors(i % 10) for i, name in enumerate(rows)}  # the same colour in every panel
    legend: dict[str, Any] = {}
    fig, axes = plt.subplots(len(shown), 2, figsize=(16, 3.2 * len(shown) + 1), squeeze=False)
    for (ax_time, ax_memory), config in zip(axes, shown, strict=True):
        get = {(r["implementation"], r["metric"]): r for r in recs if r["config"] == config.name}
        names = list(dict.fromkeys(name for name, _ in get))
        panels = [
            (ax_time, "time", [m for m in (*MODES, STEP) if m in config.modes]),
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
                found = [get[(name, f"{kind} {m}")] for m in metrics]
                ratios = [r["ratio_to_conv"] for r in found]
                spread = None  # time: a whisker from the ratio's first quartile to its third
                if kind == "time":
                    spread = [[r["ratio_to_conv"] - r["ratio_to_conv_q1"] for r in found]]
                    spread += [[r["ratio_to_conv_q3"] - r["ratio_to_conv"] for r in found]]
                legend[name] = bars = ax.bar(xs, ratios, step, yerr=spread, label=name, color=color[name])
                ax.bar_label(bars, fmt="%.2f", fontsize=6, rotation=90, padding=2)
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_xticks(range(len(metrics)), [SHORT.get(m, m) for m in metrics], fontsize=8)
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
