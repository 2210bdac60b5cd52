"""The measured calls, and their interleaved wall-clock timing.

Every implementation is timed in the same process, on the same input and weights, round-robin
within each repeat, and each timed call sits between two calls of nn.Conv2d of the same shape, so
that each ratio to nn.Conv2d compares neighbours in time: machine noise hits both alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .impls import Inputs

# ----------------------------------------------------------------------------------------------
# The measured calls


def forward(net: nn.Module, inputs: Inputs, mask: Tensor | None) -> Tensor:
    output: Tensor = net(inputs.x, mask)
    return output


def forward_backward(net: nn.Module, inputs: Inputs, mask: Tensor | None) -> None:
    output = net(inputs.x, mask)
    params = [p for p in net.parameters() if p.requires_grad]
    torch.autograd.grad(output, [inputs.x, *params], inputs.grad)


def inference(net: nn.Module, inputs: Inputs, mask: Tensor | None) -> None:
    with torch.no_grad():
        net(inputs.x, mask)


Step = Callable[[nn.Module, Inputs, "Tensor | None"], object]
STEPS: dict[str, Step] = {"forward": forward, "forward+backward": forward_backward, "inference": inference}


# ----------------------------------------------------------------------------------------------
# Time


def sync(device: str) -> None:
    """Wait until ``device`` has run what was queued on it (CUDA); on CPU nothing is queued."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(step: Callable[[], object], calls: int, device: str) -> float:
    """Seconds per call of ``step``, over ``calls`` calls in a row, waiting for the device to finish."""
    sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        step()
    sync(device)
    return (time.perf_counter() - start) / calls


@dataclass
class Samples:
    """Seconds per call of one implementation in one mode, one per repeat, and next to each the
    mean of the two nn.Conv2d calls around it."""

    seconds: list[float] = field(default_factory=list)
    conv: list[float] = field(default_factory=list)


def time_interleaved(
    steps: dict[str, dict[str, Callable[[], object]]],
    convs: dict[str, str],
    *,
    repeats: int,
    warmup: int,
    calls: int = 1,
    device: str = "cpu",
    tick: Callable[[], None] = lambda: None,
) -> dict[str, dict[str, Samples]]:
    """Time ``steps[name][mode]``, each call between two calls of ``steps[convs[name]][mode]``.

    ``convs`` maps every name to the conv it is compared with, and each conv to itself. Each repeat
    runs, for each mode: conv, a, conv, b, conv, ... (a conv call sits between two neighbours with
    the same conv), the order of a, b, ... rotated from one repeat to the next so that no one
    always follows the same neighbour. A conv's sample of a repeat is the mean of its calls in
    that repeat. The first ``warmup`` repeats are not kept.
    """
    names = [name for name in steps if convs[name] != name]
    modes = list(next(iter(steps.values()), {}))
    found = {name: {mode: Samples() for mode in modes} for name in steps}
    for repeat in range(warmup + repeats):
        start = repeat % len(names) if names else 0
        for mode in modes:
            mode_steps = {name: steps[name][mode] for name in steps}
            timed, own = _round(mode_steps, convs, names[start:] + names[:start], calls, device, tick)
            if repeat < warmup:
                continue
            for name, (seconds, neighbours) in timed.items():
                found[name][mode].seconds.append(seconds)
                found[name][mode].conv.append(neighbours)
            for conv, samples in own.items():
                found[conv][mode].seconds.append(statistics.fmean(samples))
                found[conv][mode].conv.append(statistics.fmean(samples))
    return found


def _round(
    steps: dict[str, Callable[[], object]],
    convs: dict[str, str],
    order: list[str],
    calls: int,
    device: str,
    tick: Callable[[], None],
) -> tuple[dict[str, tuple[float, float]], dict[str, list[float]]]:
    """One repeat of one mode: each name's (seconds, mean of its two conv neighbours), and every
    conv call's seconds."""
    own: dict[str, list[float]] = {conv: [] for conv in dict.fromkeys(convs.values())}
    timed = {}
    last = None  # the conv of the latest call: the 'before' of a name with the same conv
    for name in order:
        conv = convs[name]
        if last != conv:
            own[conv].append(time_call(steps[conv], calls, device))
        seconds = time_call(steps[name], calls, device)
        own[conv].append(time_call(steps[conv], calls, device))
        timed[name] = (seconds, (own[conv][-2] + own[conv][-1]) / 2)
        last = conv
        tick()
    for conv, samples in own.items():  # a conv with nothing to compare: timed alone
        if not samples:
            samples.append(time_call(steps[conv], calls, device))
    return timed, own
