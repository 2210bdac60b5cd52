"""The memory meter: the true peak of live tensor bytes in a call, and what the call leaves held.

On CUDA it reads the caching allocator's counters; on CPU, the profiler's allocation events (never
RSS, which cannot resolve a few percent, and which the benchmark's allocator setting would move).
"""

from __future__ import annotations

import gc
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile, record_function

from .. import _quirks
from .configs import HOOKS
from .impls import Inputs
from .timing import Step, forward, forward_backward, inference, sync

# What the profiler writes straight to file descriptor 2 while the meter runs, and that says nothing
# to the bench's reader: libkineto's log lines whenever a profile starts or stops
# ("USDT:<time> <pid>:<tid> SyncActivityProfilerHandler.cpp:52] profiler_start", at a level only an
# environment variable read once per process can change), and c10's notice that a tensor made
# before the profile was freed during it (the meter warms every step first, so that no window
# counts such a free).
_CHATTER = re.compile(
    r"^(USDT|STAGE|INFO|VERBOSE):\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \d+:\d+ \S+:\d+\] "
    r"|^\[W\d+ [\d:.]+ (\d+ )?\S*CPUAllocator\.cpp:\d+\] Memory block of unknown size was allocated before"
)


@contextmanager
def _without_profiler_chatter() -> Iterator[None]:
    """Route file descriptor 2 to a temporary file, then pass on all but the profiler's chatter."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 to redirect
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode(errors="replace")
            sys.stderr.write("".join(line for line in text.splitlines(True) if not _CHATTER.match(line)))


class LiveBytes:
    """Peak and final bytes of live tensors in named windows, relative to each window's start::

        with LiveBytes("cpu") as meter:
            ...                                 # make the tensors the windows will free
            with meter.window("name"):
                ...
        peak, end = meter.results["name"]

    CUDA reads the caching allocator's counters. CPU sums the profiler's allocation events in
    order: the profiler reports the free of a tensor only if it was running when the tensor was
    allocated, so everything a window may free must be made inside ``with meter``. Meanwhile,
    what the process writes to file descriptor 2 is held back and passed on at the end, less the
    profiler's chatter.
    """

    def __init__(self, device: str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.device = device
        self.results: dict[str, tuple[int, int]] = {}
        self._profile: profile | None = None
        self._quiet = ExitStack()

    def __enter__(self) -> LiveBytes:
        if not self.cuda:
            self._profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._quiet.enter_context(_without_profiler_chatter())
            self._profile.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._quiet:
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
        sync(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        start = torch.cuda.memory_allocated(self.device)
        yield
        sync(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - start
        self.results[name] = (peak, torch.cuda.memory_allocated(self.device) - start)


_WINDOW = "torch_pconv.bench.window:"


def _windows_from_profile(prof: profile) -> dict[str, tuple[int, int]]:
    """(peak, end) of the running sum of allocation sizes (frees are negative) in each window.

    ``prof.events()`` folds allocations into the operators that made them (losing the peaks
    inside an operator), so this reads the raw event tree, where each allocation and free is
    an event of its own with its size. Empty where this torch does not expose it.
    """
    found = _quirks.profile_events(prof)
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


def _pack(tensor: Tensor) -> Tensor:
    # The same data and version counter, as a new tensor object: the tensor itself would make a
    # graph that saves its own output a reference cycle through C++, which no collector frees.
    return tensor.detach()


def _unpack(tensor: Tensor) -> Tensor:
    return tensor


def hooked_forward(net: nn.Module, inputs: Inputs, mask: Tensor | None) -> Tensor:
    """The forward under a caller's saved-tensor hooks that keep every tensor as it is, in place of
    what checkpointing or offloading would install."""
    with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
        return forward(net, inputs, mask)


# window: (its step, the MEMORY figures it gives: (name, 0 for its peak or 1 for what it leaves))
_WINDOWS: dict[str, tuple[Step, tuple[tuple[str, int], ...]]] = {
    "forward": (forward, (("peak forward", 0), ("held forward→backward", 1))),
    "hooks": (hooked_forward, ((HOOKS, 1),)),
    "forward+backward": (forward_backward, (("peak forward+backward", 0),)),
    "inference": (inference, (("peak inference", 0),)),
}


def measure_memory(
    net: nn.Module, inputs: Inputs, mask: Tensor | None, metrics: tuple[str, ...], device: str
) -> dict[str, int]:
    """Bytes of each of ``metrics`` (names of configs.MEMORY); empty where they cannot be measured.

    A forward runs first under the meter in each grad mode measured: that fills the caches (the
    mask=None ratio, NVIDIA's stored masks) with tensors the meter has seen made, whose later
    frees it then counts. (A compiled network sees no grad mode it was not compiled for.) The
    garbage collector is paused meanwhile, so that no collection inside a window frees what was
    made before it.
    """
    windows = {name: window for name, window in _WINDOWS.items() if any(m in metrics for m, _ in window[1])}
    with _gc_paused(), LiveBytes(device) as meter:
        forward(net, inputs, mask)
        if "inference" in windows:
            inference(net, inputs, mask)
        for name, (step, _) in windows.items():
            with meter.window(name):
                output = step(net, inputs, mask)
            del output  # frees the graph, after the window: 'held' is what it kept
    if not meter.results:  # this torch's profiler does not expose allocations: no memory figures
        return {}
    return {
        metric: meter.results[name][which]
        for name, (_, figures) in windows.items()
        for metric, which in figures
        if metric in metrics
    }


@contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
