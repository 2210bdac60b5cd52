"""Benchmark: ``python -m torch_pconv bench``. Time and memory of PConv2d, NVIDIA's layer and nn.Conv2d.

- :mod:`.configs`: the configs (shapes, and what to measure on each) and the run's settings;
- :mod:`.impls`: the implementations, the networks made of them, and the loaders of other builds;
- :mod:`.measure`: interleaved timing and the live-bytes memory meter;
- :mod:`.run`: a run over the configs;
- :mod:`.report`: records, the printed tables, JSON, CSV and the chart;
- :mod:`.cli`: the command's options and progress.
"""

from .configs import CONFIGS, MEMORY, MODES, Config, Settings
from .impls import IMPLS, Impl, load_baseline, load_v011
from .measure import LiveBytes, measure_memory, time_interleaved
from .report import MEASURED, records
from .run import Run, run_bench

__all__ = [
    "CONFIGS",
    "IMPLS",
    "MEASURED",
    "MEMORY",
    "MODES",
    "Config",
    "Impl",
    "LiveBytes",
    "Run",
    "Settings",
    "load_baseline",
    "load_v011",
    "measure_memory",
    "records",
    "run_bench",
    "time_interleaved",
]
