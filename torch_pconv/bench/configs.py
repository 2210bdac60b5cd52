"""What the benchmark runs: the configs (a shape, and what to measure on it) and the run's settings."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

# The timed calls. forward: with autograd recording; forward+backward: then torch.autograd.grad of
# the input and every parameter; inference: under torch.no_grad().
MODES = ("forward", "forward+backward", "inference")
# A whole network's timed call (see training.train_step): forward, loss, backward into every .grad.
STEP = "training step"
# The memory figures: 'held' is what stays allocated between forward and backward (what training
# keeps); 'hooks' runs the forward under a caller's identity saved-tensor hooks.
HOOKS = "held forward→backward, saved-tensor hooks"
MEMORY = ("peak forward", "held forward→backward", HOOKS, "peak forward+backward", "peak inference")

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Quick:
    """What the default run changes in a config, so that CI runs it within 3 minutes on 2 cores."""

    batch: int
    size: int
    modes: tuple[str, ...] | None = None  # None: the config's own; (): memory only
    extra_rows: bool = True  # False: without a network's bfloat16 and compiled rows


@dataclass(frozen=True)
class Config:
    """A benchmark setting: one partial convolution, or an encoder of ``layers`` of them, and what to measure."""

    name: str
    batch: int
    in_channels: int
    out_channels: int
    kernel_size: int
    padding: int
    size: int  # height and width of the input
    holes: float | None = 0.5  # fraction of holes in the mask; None: no mask (partial padding)
    layers: int = 1  # more than 1: (conv → BatchNorm2d → ReLU) × layers, the mask carried along
    modes: tuple[str, ...] = MODES  # the timed calls, of MODES
    memory: tuple[str, ...] = MEMORY  # the memory figures, of MEMORY
    dtype: str | None = None  # a key of DTYPES; None: the run's --dtype
    threads: int | None = None  # torch.set_num_threads while it runs; None: the run's
    calls: int = 1  # calls per timed sample: many, where one call takes microseconds
    compiled: bool = False  # torch.compile'd rows, each next to its eager self
    fixed_cost: bool = False  # the report gives µs per call beyond nn.Conv2d's
    quick: Quick | None = None  # the default run's changes; --full runs the config as given
    network: str | None = None  # "unet" or "classifier": a whole network (see networks), `layers` deep
    bfloat16: bool = False  # a network's rows again in bfloat16, each compared with its float32 self

    def scaled(self, full: bool) -> Config:
        """This config as given, or as the default run changes it."""
        quick = self.quick
        if full or quick is None:
            return replace(self, quick=None)
        modes = self.modes if quick.modes is None else quick.modes
        scaled = replace(self, batch=quick.batch, size=quick.size, modes=modes, quick=None)
        return scaled if quick.extra_rows else replace(scaled, compiled=False, bfloat16=False)

    def describe(self) -> str:
        if self.network is not None:
            return self._describe_network()
        shape = f"{self.in_channels}→{self.out_channels}, k={self.kernel_size}, pad {self.padding}"
        what = f"{self.layers} × (conv → BatchNorm2d → ReLU), mask carried" if self.layers > 1 else "one layer"
        mask = "mask None" if self.holes is None else f"mask with {self.holes:.0%} holes"
        extra = [self.dtype] if self.dtype else []
        extra += [f"{self.threads} thread" + "s" * (self.threads > 1)] if self.threads else []
        extra += ["torch.compile'd next to eager"] if self.compiled else []
        extra += ["µs per call beyond nn.Conv2d"] if self.fixed_cost else []
        return ", ".join([what, f"B={self.batch}", shape, f"{self.size}×{self.size}", mask, *extra])

    def _describe_network(self) -> str:
        if self.network == "unet":
            what = f"PConvUNet(layers={self.layers}), multi_channel masks"
            mask = f"irregular holes over {self.holes:.0%} ± 5 %" if self.holes else "no holes"
        else:
            what, mask = "ResNet-50 laid out as pd_resnet50, 1×1 convolutions included", "mask None"
        extra = ["bfloat16 rows"] if self.bfloat16 else []
        extra += ["torch.compile'd rows"] if self.compiled else []
        shape = f"{self.in_channels}×{self.size}×{self.size}"
        return ", ".join([what, f"one {STEP}", f"B={self.batch}", shape, mask, *extra])


# A whole network's memory: what its forward and loss leave for the backward, and the step's peak.
_NETWORK_MEMORY = ("held forward→backward", "peak forward+backward")


def _network(name: str, batch: int, size: int, layers: int, quick: Quick, **kwargs: Any) -> Config:
    """A whole network's config (see networks), named for it: one training step of a 3-channel image
    (kernel and padding are its first layer's)."""
    memory = _NETWORK_MEMORY
    return Config(
        name, batch, 3, 3, 7, 3, size, layers=layers, modes=(STEP,), memory=memory, network=name, quick=quick, **kwargs
    )


# The realistic inpainting layer.
_INPAINTING = Config("inpainting", 4, 64, 64, 7, 3, 128, quick=Quick(1, 56))

# The default run shrinks the big configs (``quick``) so that on 2 CPU cores it ends within CI's
# 3 minutes: every figure is a ratio to nn.Conv2d of the same shape, which moves far less with
# the size than the time does; the encoder and 0.1.1's headline, which are about memory, are not
# timed there. --full runs the configs as given here.
CONFIGS = {
    # Whole networks first, one training step each (what a user feels): the paper's U-Net, and the
    # ResNet-50 of partial-convolution-based padding. 7 layers take 128×128 at the least, whose 1×1
    # bottom needs a batch of 2 for BatchNorm: the default run's is about half the full one's work.
    "unet": _network("unet", 1, 256, 7, Quick(2, 128, extra_rows=False), holes=0.25, compiled=True, bfloat16=True),
    "classifier": _network("classifier", 2, 224, 50, Quick(1, 64), holes=None),
    "inpainting": _INPAINTING,
    # The 3×3 layer of most networks.
    "k3": Config("k3", 4, 64, 64, 3, 1, 128, quick=Quick(1, 48)),
    # A small layer, where the per-call cost beyond the convolution shows.
    "small": Config("small", 4, 16, 16, 3, 1, 64),
    # The fixed cost per call: a layer so small that the convolution costs almost nothing.
    "fixed": Config("fixed", 1, 8, 8, 3, 1, 16, modes=MODES[:2], memory=(), threads=1, calls=20, fixed_cost=True),
    # An inpainting encoder, where the memory held for the backward limits training.
    "encoder": Config("encoder", 4, 64, 64, 3, 1, 128, layers=4, quick=Quick(1, 64, modes=())),
    # Partial-convolution-based padding in a ResNet-style 3×3 layer (ResNet's first stage).
    "padding": Config("padding", 8, 64, 64, 3, 1, 56, holes=None, quick=Quick(1, 56)),
    # torch-pconv 0.1.1's headline comparison, at its batch of 16.
    "v011": Config("v011", 16, 64, 128, 9, 3, 256, quick=Quick(1, 48, modes=())),
    # The inpainting layer in bfloat16, forward.
    "bf16": replace(_INPAINTING, name="bf16", modes=MODES[:1], memory=(), dtype="bfloat16"),
    # The inpainting layer under torch.compile: compiled rows next to eager ones, forward.
    "compiled": replace(_INPAINTING, name="compiled", modes=MODES[:1], memory=MEMORY[1:2], compiled=True),
}


@dataclass
class Settings:
    """How to run: where, in what dtype, how many times, and the other builds to load."""

    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    repeats: int = 9
    warmup: int = 1
    seed: int = 0
    v011: type[nn.Module] | None = None  # torch-pconv 0.1.1's PConv2d, see impls.load_v011
    baseline: type[nn.Module] | None = None  # PConv2d of another checkout, see impls.load_baseline
    baseline_path: Path | None = None
    full: bool = False  # the configs at their full sizes (for the report: they are given as run)

    def for_config(self, config: Config) -> Settings:
        """These settings with the config's own dtype, if it fixes one."""
        return self if config.dtype is None else replace(self, dtype=DTYPES[config.dtype])
