"""A whole network's training step, measured: its batch, the step, the agreement of the partial
networks with NVIDIA's twin, the interleaved step times and the step's memory."""

from __future__ import annotations

import copy
import functools
import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..check import relative_error
from ..holes import irregular_holes
from .configs import DTYPES, STEP, Config, Settings
from .impls import Impl, conv_of
from .memory import LiveBytes
from .networks import CLASSIFIER, UNET, build
from .timing import Samples, time_interleaved


class Check(NamedTuple):
    """Where a network's partial rows are checked against NVIDIA's twin, and within what: the
    batch, the size (no more than the config's own), the dtype, and the tolerance on both errors."""

    batch: int
    size: int
    dtype: torch.dtype
    tolerance: float


# The U-Net in float64: its layers have a bias, which NVIDIA's adds inside the convolution and
# takes out again, and ours never adds (rounding only). The classifier in float32, bit for bit:
# without bias or mask the arithmetic is the same, and float32's 1 + 1e-8 is 1, so that NVIDIA's
# unpadded 1×1 convolutions (which scale by window / (count + 1e-8)) equal convert's nn.Conv2d;
# in float64 they scale by 1 - 1e-8, which BatchNorm over few values can magnify past 1e-6.
# A batch of 2 gives BatchNorm in training the two values per channel it needs where the last
# stage is 1×1 (the U-Net's 7 layers at 128×128; the classifier at 32×32).
CHECKS = {UNET: Check(2, 128, torch.float64, 1e-12), CLASSIFIER: Check(2, 64, torch.float32, 0.0)}


@dataclass
class Batch:
    """A network's input, its mask (the U-Net's, ``(B, 1, H, W)``; None for the classifier) and the
    target of its loss: the whole image, or a class per image."""

    x: Tensor
    mask: Tensor | None
    target: Tensor


def make_batch(config: Config, batch: int, size: int, dtype: torch.dtype, device: str, seed: int) -> Batch:
    """The U-Net's masked image (irregular holes over ``config.holes`` ± 5 % of it), its mask and the
    image; or the classifier's random input and random labels."""
    gen = torch.Generator().manual_seed(seed)
    if config.network != UNET:
        x = torch.randn((batch, 3, size, size), generator=gen)
        return Batch(x.to(device, dtype), None, torch.randint(1000, (batch,), generator=gen).to(device))
    image = torch.rand((batch, 3, size, size), generator=gen)
    holes = config.holes or 0.0
    ratio = (max(holes - 0.05, 0.0), min(holes + 0.05, 1.0))
    mask = (
        irregular_holes((batch, 1, size, size), hole_ratio=ratio, generator=gen)
        if holes
        else torch.ones(batch, 1, size, size)
    )
    return Batch((image * mask).to(device, dtype), mask.to(device, dtype), image.to(device, dtype))


def output(net: nn.Module, batch: Batch) -> Tensor:
    out: Tensor = net(batch.x) if batch.mask is None else net(batch.x, batch.mask)
    return out


def loss(net: nn.Module, batch: Batch) -> Tensor:
    """L1 to the whole image (the U-Net), or cross-entropy (the classifier)."""
    out = output(net, batch)
    return F.cross_entropy(out, batch.target) if batch.mask is None else F.l1_loss(out, batch.target)


def train_step(net: nn.Module, batch: Batch) -> None:
    """One training step but the optimizer's update (the same for every network): forward, loss,
    and backward into every parameter's ``.grad``, set to None first."""
    net.zero_grad(set_to_none=True)
    torch.autograd.backward(loss(net, batch))


# ----------------------------------------------------------------------------------------------


def agreement(
    config: Config, nets: dict[str, nn.Module], impls: list[Impl], seed: int
) -> dict[str, tuple[float, float]]:
    """(output error, gradient error) of each partial network against NVIDIA's twin, as CHECKS says,
    on the CPU, on copies of ``nets`` (made before any call: NVIDIA's layer caches its masks keyed
    on the input's shape alone), for a random output gradient: ``relative_error`` of the output,
    and the largest difference in any parameter's gradient over the largest of NVIDIA's gradients."""
    check = CHECKS[config.network or UNET]
    batch = make_batch(config, check.batch, min(check.size, config.size), check.dtype, "cpu", seed)
    nvidia = _nvidia(impls)
    eager = [impl for impl in impls if impl.dtype is None and not impl.compiled]
    checked = [impl for impl in eager if impl.kind in ("pconv", "drop_in", "convert")]
    grad: Tensor | None = None

    def run(impl: Impl) -> tuple[Tensor, dict[str, Tensor]]:
        nonlocal grad
        net = copy.deepcopy(nets[impl.name]).to("cpu", check.dtype)
        out = output(net, batch)
        if grad is None:
            grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=check.dtype)
        named = dict(net.named_parameters())
        grads = torch.autograd.grad(out, list(named.values()), grad)
        return out.detach(), dict(zip(named, grads, strict=True))

    ref_out, ref_grads = run(next(impl for impl in impls if impl.name == nvidia))
    errors = {}
    for impl in checked:
        out, grads = run(impl)
        assert grads.keys() == ref_grads.keys(), f"{impl.name}: not the parameters of NVIDIA's twin"
        # Normwise over all of them: a convolution's bias before BatchNorm has a gradient of zero
        # but for rounding, whose error relative to itself means nothing.
        diff = max((grads[name] - ref_grads[name]).abs().max().item() for name in grads)
        scale = max(ref_grads[name].abs().max().item() for name in grads)
        errors[impl.name] = (relative_error(out, ref_out), diff / scale)
    return errors


def step_memory(net: nn.Module, batch: Batch, device: str) -> dict[str, int]:
    """Bytes the forward and loss leave for the backward ('held'), and the peak of a whole step.

    A step runs first under the meter, so that the caches (NVIDIA's stored masks, the mask=None
    ratio) and the gradients are made where the meter sees them; the garbage collector is paused."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        with LiveBytes(device) as meter:
            train_step(net, batch)
            net.zero_grad(set_to_none=True)
            with meter.window("forward"):
                held = loss(net, batch)
            del held  # frees the graph, after the window
            with meter.window("step"):
                train_step(net, batch)
    finally:
        if enabled:
            gc.enable()
    if not meter.results:  # this torch's profiler does not expose allocations
        return {}
    return {"held forward→backward": meter.results["forward"][1], "peak forward+backward": meter.results["step"][0]}


def _compiled(net: nn.Module, batch: Batch) -> nn.Module | str:
    """``net`` through torch.compile, compiled now by a first step; or why that failed."""
    compile = getattr(torch, "compile", None)
    if not callable(compile):
        return f"this torch ({torch.__version__}) has no torch.compile"
    try:
        compiled: nn.Module = compile(net)
        train_step(compiled, batch)
    except Exception as error:  # whatever a compiler raises: dynamo, inductor, a C++ toolchain
        return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:200]}"
    return compiled


@dataclass
class Measured:
    """What measure_networks found for each row it ran (``rows``; a row that could not run is left out)."""

    rows: list[Impl]
    times: dict[str, dict[str, Samples]]
    memory: dict[str, dict[str, int]]
    errors: dict[str, tuple[float, float]]


def measure_networks(
    config: Config, impls: list[Impl], settings: Settings, tick: Callable[[], None], notes: list[str]
) -> Measured:
    """Agreement first, then the interleaved step times, then each row's memory. Where torch.compile
    fails, the compiled rows are left out, with a note."""
    nets = {impl.name: build(config.network or "", impl, config.layers, settings.seed) for impl in impls}
    errors = agreement(config, nets, impls, settings.seed)
    ones = sum(getattr(m, "weight_maskUpdater", torch.empty(0)).nbytes for m in nets[_nvidia(impls)].modules())
    if ones >= 2**20:  # its multi-channel layers keep a ones kernel the size of their weight
        notes.append(f"{config.name}: NVIDIA's twin also keeps {ones / 2**20:.0f} MiB of weight_maskUpdater (ones)")
    batches: dict[torch.dtype, Batch] = {}
    for impl in impls:
        dtype = DTYPES[impl.dtype] if impl.dtype else settings.dtype
        nets[impl.name] = nets[impl.name].to(settings.device, dtype)
        if dtype not in batches:
            batches[dtype] = make_batch(config, config.batch, config.size, dtype, settings.device, settings.seed)
    batch_of = {impl.name: batches[DTYPES[impl.dtype] if impl.dtype else settings.dtype] for impl in impls}
    rows = list(impls)
    for impl in [impl for impl in impls if impl.compiled]:
        compiled = _compiled(nets[impl.name], batch_of[impl.name])
        if isinstance(compiled, str):  # without it, none: each compiled row is timed next to the compiled conv
            notes.append(
                f"{config.name}'s compiled rows not measured: torch.compile of {impl.name} failed ({compiled})"
            )
            rows = [impl for impl in rows if not impl.compiled]
            break
        nets[impl.name] = compiled
    steps: dict[str, dict[str, Callable[[], object]]] = {
        impl.name: {STEP: functools.partial(train_step, nets[impl.name], batch_of[impl.name])} for impl in rows
    }
    convs = {impl.name: conv_of(impl).name for impl in rows}
    times = time_interleaved(
        steps, convs, repeats=settings.repeats, warmup=settings.warmup, device=settings.device, tick=tick
    )
    memory = {}
    for impl in rows:
        memory[impl.name] = step_memory(nets[impl.name], batch_of[impl.name], settings.device)
        tick()
    return Measured(rows, times, memory, errors)


def _nvidia(impls: list[Impl]) -> str:
    return next(impl.name for impl in impls if impl.kind == "nvidia" and impl.dtype is None)
