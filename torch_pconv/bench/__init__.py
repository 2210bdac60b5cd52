"""Benchmark: ``python -m torch_pconv bench``. Time and memory of PConv2d, NVIDIA's layer and nn.Conv2d.

A command line, not an API: ``python -m torch_pconv`` reaches it through :mod:`.cli`, and no module
here is meant to be imported from outside it. On glibc it keeps freed memory in the process while it
runs (see :mod:`.allocator`; ``--default-allocator`` leaves glibc's defaults), and its report's
header says which.

- :mod:`.configs`: the configs (shapes, and what to measure on each) and the run's settings;
- :mod:`.impls`: the implementations, the networks made of them, and the loaders of other builds;
- :mod:`.networks`: whole networks (the paper's U-Net, a ResNet-50), in each row's variant;
- :mod:`.allocator`: the C allocator's setting for the run (freed memory kept, on glibc);
- :mod:`.timing`: the measured calls and their interleaved timing;
- :mod:`.memory`: the live-bytes memory meter and each call's memory figures;
- :mod:`.training`: a whole network's training step, timed and metered;
- :mod:`.run`: a run over the configs;
- :mod:`.records`: the figures as flat records (medians with their quartiles, ratios), and the environment;
- :mod:`.report`: the printed report;
- :mod:`.files`: JSON, CSV and the chart;
- :mod:`.cli`: the command's options, and the run with its progress and files.
"""
