"""pytest configuration: the hypothesis profile, one intra-op thread, the report header.

The helpers the test files share are plain functions and classes in helpers.py, imported by name.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _xdist_controller(config: pytest.Config) -> bool:
    """Whether this process is pytest-xdist's controller, which runs no test: it hands them out
    (with --collect-only it collects them itself)."""
    distributing = config.getoption("dist", "no") != "no" and not config.getoption("collectonly")
    return distributing and not hasattr(config, "workerinput")


@pytest.hookimpl(tryfirst=True)  # before hypothesis's own, which loads a --hypothesis-profile
def pytest_configure(config: pytest.Config) -> None:
    # The controller skips importing torch and hypothesis (2 s, before any worker starts).
    if _xdist_controller(config) and not config.getoption("hypothesis_profile", None):
        return
    import torch
    from hypothesis import settings

    # Derandomized: every run draws the same examples, so CI is deterministic. HYPOTHESIS_PROFILE=dev
    # explores more (and differently) when hunting for bugs locally.
    settings.register_profile("ci", derandomize=True, max_examples=100, deadline=None, database=None, print_blob=True)
    settings.register_profile("dev", max_examples=500, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

    # The suites run tiny tensors, which gain nothing from intra-op threads; with pytest -n 2 on two
    # cores, two threads per worker oversubscribe them and OpenMP's spinning barriers make each
    # convolution up to a hundred times slower. One thread also fixes the order of every reduction,
    # whatever the machine's core count.
    torch.set_num_threads(1)

    # The suites run tiny tensors, which the layer gives to autograd's own ops when it records
    # (below pconv._FUNCTION_FROM entries). The suites test the autograd Function, which real sizes
    # take; the differential tests draw both paths, and test_autograd checks where the switch lies.
    from torch_pconv import pconv

    pconv._FUNCTION_FROM = 0


def pytest_report_header() -> str:
    import torch

    import torch_pconv

    return f"torch {torch.__version__}, torch_pconv {torch_pconv.__version__} from {Path(torch_pconv.__file__).parent}"
