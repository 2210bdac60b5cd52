"""Running the benchmark: for each config, its implementations' times, memory and agreement."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ..check import relative_error
from .configs import HOOKS, Config, Settings
from .impls import (
    BASELINE,
    IMPLS,
    NVIDIA,
    V011,
    Impl,
    Inputs,
    applicable,
    build_network,
    conv_of,
    make_inputs,
    network_impls,
)
from .memory import hooked_forward, measure_memory
from .networks import UNET, unet_class
from .timing import STEPS, Samples, Step, forward, forward_backward, inference, time_interleaved
from .training import measure_networks


@dataclass
class Row:
    """Every figure of one implementation on one config."""

    config: Config
    impl: Impl
    times: dict[str, Samples]  # mode -> samples
    memory: dict[str, int]  # MEMORY name -> bytes
    error: float | None  # max|out - NVIDIA multi_channel's out| / max|NVIDIA's out|; None for nn.Conv2d
    # A whole network's: max|grad - NVIDIA's| over all its parameters / max|NVIDIA's grad| (see training)
    grad_error: float | None = None


@dataclass
class Run:
    """What a run measured, on which configs, and what it could not."""

    configs: list[Config]
    rows: list[Row]
    notes: list[str]
    settings: Settings


class Unavailable(RuntimeError):
    """A config this torch cannot run (torch.compile missing or failing); the run goes on without it."""


def plan(configs: list[Config], settings: Settings) -> tuple[list[tuple[Config, list[Impl]]], list[str]]:
    """The implementations that run on each config, and notes on the other builds that do not."""
    planned = []
    skipped: dict[tuple[str, str], list[str]] = {}  # (build, why) -> the configs it skips
    for config in configs:
        if config.network is not None:  # a whole network: its own rows, and no other build's
            planned.append((config, network_impls(config)))
            for name in [V011] * (settings.v011 is not None) + [BASELINE] * (settings.baseline is not None):
                skipped.setdefault((name, "a layer, not a whole network"), []).append(config.name)
            continue
        impls = []
        for impl in IMPLS:
            why = applicable(impl, config, settings.for_config(config))
            other_build = impl.kind == "v011" or (impl.kind == "baseline" and settings.baseline is not None)
            if why is None:
                impls.append(impl)
            elif other_build and not config.compiled:  # the compiled config has no other builds' rows
                skipped.setdefault((impl.name, why), []).append(config.name)
        planned.append((config, impls))
    notes = [f"{name} not measured on {', '.join(names)}: {why}" for (name, why), names in skipped.items()]
    return planned, notes


def ticks(planned: list[tuple[Config, list[Impl]]], settings: Settings) -> int:
    """How many times ``run_bench`` calls ``tick``: once per timed call and per memory measurement."""
    rounds = settings.warmup + settings.repeats
    timed = {c.name: sum(conv_of(impl) != impl for impl in impls) for c, impls in planned}  # all but the convs
    return sum(rounds * len(c.modes) * timed[c.name] + len(impls) * bool(c.memory) for c, impls in planned)


def run_bench(
    configs: list[Config],
    settings: Settings,
    *,
    tick: Callable[[], None] = lambda: None,
    done: Callable[[Config, float], None] = lambda config, seconds: None,
) -> Run:
    """Run every config; ``done`` is called after each with the seconds it took."""
    planned, notes = plan(configs, settings)
    if settings.baseline is not None:
        notes.append(f"{BASELINE}: PConv2d of {settings.baseline_path}")
    rows = []
    for config, impls in planned:
        start = time.perf_counter()
        try:
            rows += bench_config(config, impls, settings.for_config(config), tick, notes)
        except Unavailable as why:
            notes.append(f"{config.name} not measured: {why}")
        done(config, time.perf_counter() - start)
    return Run(configs, rows, notes, settings)


def bench_config(
    config: Config,
    impls: list[Impl],
    settings: Settings,
    tick: Callable[[], None] = lambda: None,
    notes: list[str] | None = None,
) -> list[Row]:
    """Time, memory and agreement of every implementation on ``config``; why another build that
    fails on this torch is left out goes to ``notes``."""
    if config.network is not None:
        return _bench_network(config, impls, settings, tick, [] if notes is None else notes)
    with _threads(config.threads):
        if not settings.full:
            _check_low_precision_speed(config, settings)
        nets: dict[str, nn.Module] = {impl.name: build_network(impl, config, settings) for impl in impls}
        inputs = make_inputs(config, settings)
        if config.compiled:
            _compile(nets, impls, inputs)
        impls = [impl for impl in impls if _runs(impl, nets[impl.name], inputs, config, notes)]
        errors = agreement(nets, impls, inputs, config, settings)
        steps: dict[str, dict[str, Callable[[], object]]] = {
            impl.name: {
                mode: functools.partial(STEPS[mode], nets[impl.name], inputs, inputs.masks[impl.mask])
                for mode in config.modes
            }
            for impl in impls
        }
        times = time_interleaved(
            steps,
            {impl.name: conv_of(impl).name for impl in impls},
            repeats=settings.repeats,
            warmup=settings.warmup,
            calls=config.calls,
            device=settings.device,
            tick=tick,
        )
        rows = []
        for impl in impls:
            memory = {}
            if config.memory:
                net, mask = nets[impl.name], inputs.masks[impl.mask]
                memory = measure_memory(net, inputs, mask, config.memory, settings.device)
                tick()
            rows.append(Row(config, impl, times[impl.name], memory, errors.get(impl.name)))
    return rows


def _bench_network(
    config: Config, impls: list[Impl], settings: Settings, tick: Callable[[], None], notes: list[str]
) -> list[Row]:
    """A whole network's rows (see training); Unavailable where the U-Net's extra is not installed."""
    if config.network == UNET:
        try:
            unet_class()
        except ImportError as error:
            raise Unavailable(str(error)) from None
    if any(impl.dtype for impl in impls) and settings.device == "cpu":
        # A step of a whole network on a reference kernel takes minutes: even --full leaves it out.
        layer = replace(config, in_channels=64, out_channels=64, kernel_size=3, padding=1, size=24)
        why = _slow_precision(layer, replace(settings, dtype=torch.bfloat16))
        if why is not None:
            notes.append(f"{config.name}'s bfloat16 rows not measured: {why}")
            impls = [impl for impl in impls if impl.dtype is None]
    found = measure_networks(config, impls, settings, tick, notes)
    return [
        Row(config, impl, found.times[impl.name], found.memory[impl.name], *found.errors.get(impl.name, (None, None)))
        for impl in found.rows
    ]


def _runs(impl: Impl, net: nn.Module, inputs: Inputs, config: Config, notes: list[str] | None) -> bool:
    """Whether ``impl`` runs every step the config measures; only another build (0.1.1, the
    baseline) is tried, and may fail: an older build may not support this torch."""
    if impl.kind not in ("v011", "baseline"):
        return True
    steps: list[Step] = [forward_backward, inference]  # between them, every step but the hooked forward
    if HOOKS in config.memory:
        steps.append(hooked_forward)
    try:
        for step in steps:
            step(net, inputs, inputs.masks[impl.mask])
    except Exception as error:  # whatever that build raises
        if notes is not None:
            notes.append(f"{impl.name} not measured on {config.name}: it fails ({_first_line(error)})")
        return False
    return True


# How much slower than float32 a half-precision convolution may be before the default run leaves
# its config out: CPUs without native bfloat16 or float16 arithmetic run a reference kernel,
# about 45 times slower on an AMD EPYC without AVX-512 (3.5 s a call at the bf16 config's size),
# which made the default run 8 minutes instead of half of one.
_SLOW_PRECISION = 10.0


def _check_low_precision_speed(config: Config, settings: Settings) -> None:
    """Raise Unavailable where ``settings.dtype`` is a half precision that this device convolves
    far slower than float32 (one call each, at the config's channels and kernel, a small size)."""
    why = _slow_precision(config, settings)
    if why is not None:
        raise Unavailable(f"{why}: left out of the default run; --full runs it")


def _slow_precision(config: Config, settings: Settings) -> str | None:
    """Why ``settings.dtype`` is too slow to measure here, if it is: see _check_low_precision_speed."""
    if settings.dtype not in (torch.float16, torch.bfloat16) or settings.device != "cpu":
        return None
    seconds = {}
    size = min(config.size, 24)
    for dtype in (torch.float32, settings.dtype):
        conv = nn.Conv2d(config.in_channels, config.out_channels, config.kernel_size, padding=config.padding)
        x = torch.randn(1, config.in_channels, size, size, dtype=dtype)
        conv = conv.to(dtype)
        # One thread: on a loaded machine, threads that wait on each other slow float32's small
        # convolution up to 20× and would hide a missing kernel.
        with torch.no_grad(), _threads(1):
            conv(x)  # the first call's setup is not the kernel's speed
            calls = []
            for _ in range(3):  # the quickest of three: one call on a shared machine can be off 10×
                start = time.perf_counter()
                conv(x)
                calls.append(time.perf_counter() - start)
            seconds[dtype] = min(calls)
    ratio = seconds[settings.dtype] / max(seconds[torch.float32], 1e-9)
    if ratio <= _SLOW_PRECISION:
        return None
    name = str(settings.dtype).removeprefix("torch.")
    return f"this CPU convolves {name} {ratio:.0f}x slower than float32 (no native {name} kernel)"


def _compile(nets: dict[str, nn.Module], impls: list[Impl], inputs: Inputs) -> None:
    """Put the compiled rows' networks through torch.compile and compile them now, by a first call,
    so that no timing or memory window sees the compiler; raise Unavailable where it fails."""
    compile = getattr(torch, "compile", None)
    if not callable(compile):
        raise Unavailable(f"this torch ({torch.__version__}) has no torch.compile")
    for impl in impls:
        if impl.compiled:
            try:
                nets[impl.name] = compile(nets[impl.name])
                forward(nets[impl.name], inputs, inputs.masks[impl.mask])
            except Exception as error:  # whatever a compiler raises: dynamo, inductor, a C++ toolchain
                raise Unavailable(f"torch.compile of {impl.name} failed ({_first_line(error)})") from None


def agreement(
    nets: dict[str, nn.Module], impls: list[Impl], inputs: Inputs, config: Config, settings: Settings
) -> dict[str, float]:
    """Relative error of each partial implementation's output against NVIDIA's multi-channel layer:
    a check that every row computes the same thing. Outputs come from a forward with autograd
    recording, the mode the compiled rows were compiled for."""
    nvidia = next(impl for impl in IMPLS if impl.name == NVIDIA)
    reference = nets.get(NVIDIA) or build_network(nvidia, config, settings)

    def output(net: nn.Module, mask: Tensor | None) -> Tensor:
        return forward(net, inputs, mask).detach().double()

    ref = output(reference, inputs.masks[nvidia.mask])
    return {
        impl.name: relative_error(output(nets[impl.name], inputs.masks[impl.mask]), ref)
        for impl in impls
        if impl.kind != "conv"
    }


def _first_line(error: Exception) -> str:
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first[:200]}"


@contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """torch.set_num_threads(count) inside, where count is not None."""
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
