"""The one home of the helpers the test files share; they import them (pytest puts this folder on
sys.path). conftest.py only configures pytest.

- :func:`seeded`: a seeded CPU generator, the source of every random tensor in the tests;
  :func:`image`, :func:`holes` (:func:`holes_and_a_box`) and :func:`randomize` draw an
  input, a mask and a layer's parameters from it.
- :class:`MaskCase` and :func:`random_mask`: a mask layout (:class:`torch_pconv._masks.MaskLayout`,
  the one home of the layout table) plus the test-only variants on top of it, and a random mask
  in it.
- :func:`make_pair`, :func:`run_compare`, :class:`Run`, :func:`describe`: a layer of ours and
  NVIDIA's reference with the same weights, compared by :func:`torch_pconv.check.compare`, with
  a failure message that shows every tensor.
- :class:`ThreeLayerNet`, :func:`cached_tensors`: a small network carrying its mask, and the
  tensors a module keeps outside its parameters (the mask=None cache).

The max-abs relative error is :func:`torch_pconv.check.relative_error`, and the conversion to the
reference's mask layout :func:`torch_pconv.check.reference_mask`: the tests use the library's own.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from pshape import pshape
from torch import Tensor, nn
from torch.func import functional_call

from torch_pconv import PConv1d, PConv2d, PConv3d, reference
from torch_pconv._masks import MaskLayout
from torch_pconv.check import Comparison, compare, mask_shape, reference_multi_channel
from torch_pconv.holes import random_holes

__all__ = [
    "LAYERS",
    "MaskCase",
    "OnHeightOne",
    "Run",
    "ThreeLayerNet",
    "cached_tensors",
    "describe",
    "holes",
    "holes_and_a_box",
    "image",
    "make_pair",
    "mask_cases",
    "random_mask",
    "randomize",
    "run_compare",
    "seeded",
    "tensors_in",
]

LAYERS = {1: PConv1d, 2: PConv2d, 3: PConv3d}
_REFERENCE = {2: reference.PartialConv2d, 3: reference.PartialConv3d}


def seeded(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


def image(shape: Sequence[int], seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal values, drawn in float64 and cast to ``dtype`` (any dtype, integers too)."""
    return torch.randn(tuple(shape), generator=seeded(seed), dtype=torch.float64).to(dtype)


def holes(shape: Sequence[int], seed: int = 1, dtype: torch.dtype = torch.float32, fraction: float = 0.4) -> Tensor:
    """A 0/1 mask with about ``fraction`` of random holes."""
    return random_holes(tuple(shape), fraction, generator=seeded(seed)).to(dtype)


def holes_and_a_box(shape: Sequence[int], seed: int = 0) -> Tensor:
    """30 % random holes plus a 4x5 box of them in the last two dimensions, wider than a 3x3
    kernel, so that some windows count 0."""
    mask = holes(shape, seed, fraction=0.3)
    mask[..., 1:5, 2:7] = 0
    return mask


def randomize(module: nn.Module, seed: int = 2) -> nn.Module:
    """``module`` with standard normal parameters (a non-zero bias, so that its handling shows)."""
    gen = seeded(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype))
    return module


# --- Mask layouts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskCase:
    """A mask layout as a test spells it: a :class:`MaskLayout` and two test-only options.

    ``broadcast``: a mask batch of 1, broadcast over the input's batch. ``multi_flag``:
    ``multi_channel=True`` on our layer where the layout does not need it: SHARED (the flag is then
    ignored) and NONE (the returned mask has C_out channels, as NVIDIA's multi-channel layer's).
    """

    layout: MaskLayout
    broadcast: bool = False
    multi_flag: bool = False

    def __post_init__(self) -> None:
        if not _applies(self.layout, self.broadcast, self.multi_flag):
            raise ValueError(f"no such variant: {self}")

    @property
    def name(self) -> str:
        return "-".join([self.layout.value] + ["broadcast"] * self.broadcast + ["multi_flag"] * self.multi_flag)

    @property
    def ours_multi(self) -> bool:
        """Our layer's ``multi_channel`` flag."""
        return self.layout is MaskLayout.MULTI or self.multi_flag

    @property
    def ref_multi(self) -> bool:
        """The reference's: what the layout needs, or, for mask None, our flag (which decides the
        returned mask's channels)."""
        return reference_multi_channel(self.layout) or self.multi_flag

    def shape(self, batch: int, in_channels: int, spatial: Sequence[int]) -> tuple[int, ...] | None:
        """The mask's shape for an input ``(batch, in_channels, *spatial)``; None for NONE."""
        return mask_shape(self.layout, 1 if self.broadcast else batch, in_channels, spatial)

    def returned_shape(self, batch: int, out_channels: int, spatial: Sequence[int]) -> tuple[int, ...]:
        """The shape of the mask our layer returns for an output ``(batch, out_channels, *spatial)``:
        the layout the mask came in, with C_out channels; for mask None, NVIDIA's ``(1, 1, *S')``,
        or ``(B, C_out, *S')`` with the multi-channel flag."""
        if self.layout is not MaskLayout.NONE:
            shape = self.shape(batch, out_channels, spatial)
        elif self.multi_flag:
            shape = mask_shape(MaskLayout.MULTI, batch, out_channels, spatial)
        else:
            shape = mask_shape(MaskLayout.SINGLE, 1, out_channels, spatial)
        assert shape is not None
        return shape


def _applies(layout: MaskLayout, broadcast: bool, multi_flag: bool) -> bool:
    """Whether the variants apply: no batch to broadcast without a mask; the flag is a variant
    of the layouts that do not need it (SINGLE with it is MULTI's error, MULTI has it anyway)."""
    return not (broadcast and layout is MaskLayout.NONE) and (
        not multi_flag or layout in (MaskLayout.SHARED, MaskLayout.NONE)
    )


def mask_cases() -> list[MaskCase]:
    """Every layout with every test-only variant that applies to it."""
    flags = (False, True)
    return [MaskCase(lay, b, f) for lay in MaskLayout for b in flags for f in flags if _applies(lay, b, f)]


def random_mask(
    layout: MaskLayout | MaskCase,
    batch: int,
    in_channels: int,
    spatial: Sequence[int],
    generator: torch.Generator,
    fraction: float = 0.4,
    dtype: torch.dtype = torch.float32,
) -> Tensor | None:
    """A 0/1 mask in ``layout`` with about ``fraction`` of random holes; None for NONE."""
    case = layout if isinstance(layout, MaskCase) else MaskCase(layout)
    shape = case.shape(batch, in_channels, spatial)
    return None if shape is None else random_holes(shape, fraction, generator=generator).to(dtype)


# --- Our layer against the reference -------------------------------------------------------------


class OnHeightOne(nn.Module):
    """A PConv1d seen as a 2-D layer on height-1 inputs, so that it can be held against the 2-D
    reference: input (B, C, 1, L) ↔ (B, C, L), weight (O, I, 1, k) ↔ (O, I, k), returned mask
    (..., 1, L') ↔ (..., L'). It owns the 2-D-shaped parameters; the PConv1d runs on views of them."""

    def __init__(self, layer: PConv1d) -> None:
        super().__init__()
        self.weight = nn.Parameter(layer.weight.detach().unsqueeze(2).clone())
        bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())
        self.register_parameter("bias", bias)
        self.legacy_behaviour = layer.legacy_behaviour
        self.layer = (layer,)  # a tuple hides it from nn.Module: its parameters are ours, reshaped

    def forward(self, input: Tensor, mask_in: Tensor | None = None) -> tuple[Tensor, Tensor]:
        params = {"weight": self.weight.squeeze(2)}
        if self.bias is not None:
            params["bias"] = self.bias
        output, mask = functional_call(self.layer[0], params, (input.squeeze(2), mask_in))
        return output.unsqueeze(2), mask.unsqueeze(-2)


def _on_height_one(layer: dict[str, Any]) -> dict[str, Any]:
    """nn.Conv1d arguments as the equivalent nn.Conv2d arguments on height-1 inputs."""

    def widen(value: Any, height: int) -> Any:
        if isinstance(value, str):
            return value  # 'same' and 'valid' mean the same with a height-1 kernel
        (width,) = value if isinstance(value, tuple) else (value,)
        return (height, width)

    return {
        **layer,
        "kernel_size": widen(layer["kernel_size"], 1),
        "stride": widen(layer.get("stride", 1), 1),
        "padding": widen(layer.get("padding", 0), 0),
        "dilation": widen(layer.get("dilation", 1), 1),
    }


def make_pair(
    dims: int,
    layer: dict[str, Any],
    *,
    dtype: torch.dtype = torch.float32,
    ours_multi: bool = False,
    ref_multi: bool = False,
    legacy: bool = False,
    seed: int = 0,
) -> tuple[nn.Module, nn.Module]:
    """(ours, reference) with the same seeded weights and bias, the reference returning its mask.

    ``layer`` holds nn.ConvNd arguments. For ``dims == 1`` the reference is the 2-D one on
    height-1 inputs and ours is wrapped in :class:`OnHeightOne`.
    """
    ref_layer = _on_height_one(layer) if dims == 1 else layer
    ref = _REFERENCE[max(dims, 2)](**ref_layer, multi_channel=ref_multi, return_mask=True, dtype=dtype)
    gen = seeded(seed)
    with torch.no_grad():
        fan_in = ref.weight[0].numel()
        ref.weight.copy_(torch.randn(ref.weight.shape, generator=gen, dtype=dtype) / math.sqrt(fan_in))
        if ref.bias is not None:  # a bias as large as the output, so that its handling shows
            ref.bias.copy_(torch.randn(ref.bias.shape, generator=gen, dtype=dtype))
    ours: nn.Module = LAYERS[dims](**layer, multi_channel=ours_multi, legacy_behaviour=legacy, dtype=dtype)
    if dims == 1:
        ours = OnHeightOne(ours)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


@dataclass
class Run:
    """One comparison and the tensors it saw, kept for the failure message."""

    cmp: Comparison
    tensors: dict[str, Tensor | None] = field(default_factory=dict)

    def assert_equivalent(self, context: str = "") -> None:
        """Fail, showing errors, tolerances and every tensor's shape, unless within tolerance."""
        bad = self.cmp.failures()
        bad += [f"{k}: tolerance {t} is not finite" for k, t in self.cmp.tolerances.items() if not math.isfinite(t)]
        if bad:
            pytest.fail(
                f"{context}\n{'; '.join(bad)}\nerrors     {_fmt(self.cmp.errors)}\n"
                f"tolerances {_fmt(self.cmp.tolerances)}\n{describe(**self.tensors)}",
                pytrace=False,
            )


def run_compare(
    ours: nn.Module,
    ref: nn.Module,
    input: Tensor,
    mask: Tensor | None = None,
    ref_mask: Tensor | None = None,
    *,
    seed: int = 0,
) -> Run:
    """:func:`torch_pconv.check.compare`, recording both layers' forward results on the way."""
    seen: dict[str, Any] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: tuple[Tensor, Tensor]) -> None:
            seen[f"out_{name}"], seen[f"mask_{name}"] = (t.detach() for t in output)

        return hook

    handles = [ours.register_forward_hook(record("ours")), ref.register_forward_hook(record("ref"))]
    try:
        cmp = compare(ours, ref, input, mask, ref_mask, seed=seed)
    finally:
        for handle in handles:
            handle.remove()
    return Run(cmp, {"input": input, "mask": mask, "ref_mask": ref_mask, **seen})


def describe(**tensors: Tensor | None) -> str:
    """pshape's line (shape, device, dtype, min, mean, max) for each of the given tensors."""
    width = max(map(len, tensors), default=0)
    lines = []
    for name, tensor in tensors.items():
        value = None if tensor is None else tensor.detach()
        out = io.StringIO()
        pshape(value, heading=False, out=out)
        # pshape names each row after the variable it was called with; put the real name there.
        lines.append(name.ljust(width) + out.getvalue().rstrip().removeprefix("value"))
    return "\n".join(lines)


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in values.items())


# --- Networks and module state -------------------------------------------------------------------


class ThreeLayerNet(nn.Module):
    """Three partial convolutions carrying the mask from one to the next, one of them strided."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = PConv2d(3, 8, 3, padding=1)
        self.c2 = PConv2d(8, 8, 3, padding=1, stride=2)
        self.c3 = PConv2d(8, 2, 3, padding=1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, mask = self.c1(x, mask)
        x, mask = self.c2(torch.relu(x), mask)
        return self.c3(torch.relu(x), mask)


def tensors_in(value: object) -> Iterator[Tensor]:
    """Every tensor reachable from ``value`` through dicts (keys and values), lists and tuples."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from tensors_in(k)
            yield from tensors_in(v)
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from tensors_in(v)


def cached_tensors(module: nn.Module) -> list[Tensor]:
    """Every tensor a module holds outside its parameters, buffers and submodules: the mask=None cache."""
    return [
        t
        for name, value in vars(module).items()
        if name not in ("_parameters", "_buffers", "_modules")
        for t in tensors_in(value)
    ]
