"""Differential fuzzing of torch_pconv's layers against NVIDIA's reference (issue 15, section 3).

Hypothesis draws a :class:`Scenario` (a chain of one or two layers, an input, a mask, a mode of
execution and a dtype), runs it through our layers and through :mod:`torch_pconv.reference`, and
compares every tensor the mode yields: the output, every returned mask, and every gradient,
second-order gradient, tangent or Jacobian. What the strategy covers, dimension by dimension:

- configuration (:func:`layer_configs`): kernel (int or per-dimension tuple, so non-square),
  stride, padding (int, tuple, ``'same'``, ``'valid'``), dilation, groups, padding mode (zeros,
  reflect, replicate, circular), bias, dims 1/2/3, ``multi_channel``, ``return_mask`` (the class
  default, True or False), ``legacy_behaviour``, and both classes (``PConvNd``, ``PartialConvNd``).
  1-D layers are held against the 2-D reference on a height-1 axis (:func:`_ref_call`): kernel,
  stride, dilation ``(1, k)``, padding ``(0, p)`` (``'same'``/``'valid'`` as they are), the input
  ``(B, C, 1, L)``, the mask with a height-1 axis before its last, the weight ``(O, I, 1, k)``
  as a reshape of ours (so gradients flow to our 1-D leaves). A ``(1, k)`` kernel over a height-1
  input with no height padding sums exactly the terms of the 1-D convolution (and every padding
  mode pads the width alone); window sizes and counts are the same numbers (``C_in * k`` or
  ``k``), so the reference's arithmetic is the 1-D one, operation for operation.
- mask (:func:`scenarios`, :func:`_make_mask`): None, float 0/1, fractional, bool, uint8
  (0/255), int64 (random nonzero values of either sign); layouts ``(B, *S)`` (SHARED: NVIDIA's
  equivalent is its multi-channel mask expanded over C_in), ``(B, 1, *S)``, ``(B, C, *S)``; a
  mask batch of 1 under a batch of inputs, and an input batch of 1 under a batch of masks (which
  NVIDIA broadcasts to the mask's batch); a chain of two layers, the first's returned mask fed to
  the second, against a chain of two reference layers; that mask edited in place between them
  (:class:`Edit`: an ordinary indexed write, a write through ``.data``, a write through
  ``m.numpy()``; one channel or all). PConvNd returns a multi-channel mask as a read-only
  expanded view, which torch itself refuses to write to except through numpy: there, numpy
  edits of every channel. The reference's own returned mask is edited on a clone: it is the
  tensor NVIDIA's layer multiplied its output by, which autograd saved, so an edit of it through
  ``.data`` would change NVIDIA's first-layer gradients (its quirk, not the semantics).
- mode (:data:`MODES`): ``grad`` (input, weight, bias gradients, and the mask's when a float mask
  requires grad, which NVIDIA gives through ``input * mask``), ``no_grad``, ``inference_mode``,
  ``torch.func`` ``jvp`` / ``grad`` / ``vmap`` (against a loop over the reference) / ``jacfwd``
  (against ``jacrev`` of the reference), ``forward_ad`` (dual tensors of
  ``torch.autograd.forward_ad``, which reach PartialConvFunction's own jvp rule where torch.func
  takes the plain ops), the forward-mode ones and vmap inside ``torch.no_grad()`` too,
  ``double_backward`` (the gradients of half the squared norm of every first-order gradient),
  ``autocast`` (forward and backward), and ``parametrization`` (spectral_norm, weight_norm or a
  scaling parametrization on both layers, each followed by a parametrization that counts its
  calls: exactly one per forward; spectral_norm's vectors compared after the forward). Tangents
  are given to the input, weights and biases, not to the mask: NVIDIA computes its counts under
  ``torch.no_grad()``, which forward-mode AD ignores, so its mask tangent would differ from the
  transpose of its mask gradient.
- dtype: float64, float32, float16 (where this torch has a CPU float16 convolution: not 2.1),
  bfloat16, and autocast to bfloat16 or float16 (where CPU autocast supports it: not 2.1); the
  eager modes draw every dtype, the torch.func and second-order modes float64 and float32, the
  parametrizations float64 (a spectral norm in float32 adds the power iteration's rounding).

How results are compared (:func:`_compare`):

- float64: ``max|ours - ref| <= 1e-12 * max|ref|``, as torch_pconv.check does.
- every other dtype against the float64 reference run on the operands ours sees (the input,
  weights and mask rounded to the dtype, upcast exactly), element by element:
  ``|ours - ref| <= K * M + 32 * tiny * eps`` (the last term for subnormal results), where ``M``
  is the same computation on absolute values (the reference run on ``|x|, |w|, |b|`` and the
  mask, with cotangent ``|g|`` and tangents ``|t|``).
  Every quantity here is a sum of products, and the computed sum of n terms has error at most
  ``gamma_n * sum|terms|``; ``M`` bounds that sum of absolute terms. ``K`` counts roundings
  (:func:`_bound_factor`), per layer:

  * accumulation, in float32 for every dtype below float64 (CPU convolutions accumulate half
    types in float32): ``n`` products per output (``C_in/g * prod(k)`` forward,
    ``C_out/g * prod(k)`` input gradient, ``B * prod(S')`` weight and bias gradients);
  * the count: up to ``n_c = C_in * prod(k)`` nonnegative mask entries, summed in float32 or
    float64 (relative error ``n_c * u``), then the ratio ``W / (c + eps) * clamp(c)`` (three
    roundings) and the update (relative ``n_c * u``): ``2 n_c + 4`` in the count's dtype;
  * in the compute dtype ``u``: the operands (autocast rounds x, w and the mask, the masked
    product rounds once more: 4), the convolution's result (1), the product by ratio * update
    (2), the bias term and its sum (2), the input gradient's cotangent scaling and masking (2),
    so 16 with a margin; ``legacy_behaviour`` computes ``(conv + b - b) * ratio``, whose
    cancellation leaves ``u * |b|`` magnified by the ratio (at most the window size W = n_c):
    ``n_c + 2`` more (torch_pconv.check's ``|b| * (1 + ratio)`` term);
  * so ``K = sum over layers of (n_max + 2 n_c + 16) * u32 + (16 [+ n_c + 2]) * u``; a chain
    adds its layers' (the first layer's error enters the second through ``M``, which is the
    chain on absolute values), and second-order quantities are products of two first-order
    ones: 3 K.

  Below float64 the float64 reference is the oracle, not the reference run in the low dtype: in
  float16 NVIDIA's ``1e-8`` rounds to 0 (``W / 0 * 0 = NaN`` in every window with no valid entry), and its
  counts above 2048 (float16) or 256 (bfloat16) are inexact (see test_precision.py). Under
  autocast our output keeps autocast's dtype where NVIDIA's comes out float32: both are upcast
  to float64 before comparing.
- returned masks: exactly equal for 0/1, bool and integer masks (in the reference's layout);
  fractional masks by the rule above. Output dtype: the layer's (autocast's under autocast);
  returned mask dtype: the layer input's.
- ``legacy_behaviour=True`` in float32 with 0/1 masks: the forward output bit-identical with the
  float32 reference as well.

Budgets: ``test_differential`` draws :data:`QUICK` examples per mode in the default suite,
``test_differential_fuzz`` :data:`SLOW` per mode under ``-m slow``. The known bugs of issue 15
(and every other example found here) stay as parametrized regression cases (:data:`REGRESSIONS`).
"""

from __future__ import annotations

import math
import warnings
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from helpers import seeded
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.func import functional_call

from torch_pconv import PartialConv1d, PartialConv2d, PartialConv3d, PConv1d, PConv2d, PConv3d, pconv, reference
from torch_pconv.check import relative_error

pytestmark = [
    # PyTorch's notice that 'same' with an even kernel pads a copy, and torch.func's internal use of
    # the deprecated torch.jit.script: expected, not results.
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
]

QUICK = 4  # examples per mode in the default suite
SLOW = 200  # examples per mode under -m slow

_OURS = {(1, False): PConv1d, (2, False): PConv2d, (3, False): PConv3d}
_OURS.update({(1, True): PartialConv1d, (2, True): PartialConv2d, (3, True): PartialConv3d})
_REFERENCE = {1: reference.PartialConv2d, 2: reference.PartialConv2d, 3: reference.PartialConv3d}

LAYOUTS = ("none", "shared", "single", "multi")
MASK_KINDS = ("float", "fractional", "bool", "uint8", "int64")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
EDITS = ("inplace", "data", "numpy")
PARAMETRIZATIONS = ("count", "spectral_norm", "weight_norm")
MODES = (
    "grad",
    "no_grad",
    "inference_mode",
    "autocast",
    "parametrization",
    "double_backward",
    "func_grad",
    "jvp",
    "forward_ad",
    "vmap",
    "jacfwd",
)
# Modes that run the chain eagerly, so that a returned mask can be edited between the layers.
EAGER = ("grad", "no_grad", "inference_mode", "autocast", "parametrization", "double_backward")
# Modes that differentiate with respect to the mask, when a float mask requires grad.
MASK_GRAD_MODES = ("grad", "autocast", "parametrization", "double_backward", "func_grad")


# ----------------------------------------------------------------------------- what this torch has


def _cpu_conv_works(dtype: torch.dtype) -> bool:
    """Whether this build has a CPU convolution for ``dtype`` (torch 2.1 has none for float16)."""
    ones = torch.ones(1, 1, 3, 3, dtype=dtype)
    try:
        F.conv2d(ones, ones)
    except (RuntimeError, NotImplementedError):
        return False
    return True


def _cpu_autocast_works(dtype: torch.dtype) -> bool:
    """Whether CPU autocast runs convolutions in ``dtype`` (torch 2.1 refuses float16 and disables itself)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.autocast("cpu", dtype=dtype):
                out = F.conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 3, 3))
        except (RuntimeError, NotImplementedError):
            return False
    return out.dtype == dtype


LOW = [dtype for dtype in (torch.float16, torch.bfloat16) if _cpu_conv_works(dtype)]
AUTOCAST = [dtype for dtype in (torch.bfloat16, torch.float16) if _cpu_autocast_works(dtype)]
DTYPES = {
    "grad": [torch.float64, torch.float32, *LOW],
    "no_grad": [torch.float64, torch.float32, *LOW],
    "inference_mode": [torch.float64, torch.float32, *LOW],
    "autocast": AUTOCAST,
    # float64: a spectral norm in float32 would add the power iteration's own rounding to the bound.
    "parametrization": [torch.float64],
    "double_backward": [torch.float64, torch.float32],
    "func_grad": [torch.float64, torch.float32],
    "jvp": [torch.float64, torch.float32],
    "forward_ad": [torch.float64, torch.float32],
    "vmap": [torch.float64, torch.float32],
    "jacfwd": [torch.float64, torch.float32],
}


# ----------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Layer:
    """One layer's arguments: nn.ConvNd's, our flags, and which class (``drop_in``: PartialConvNd)."""

    in_channels: int
    out_channels: int
    kernel_size: int | tuple[int, ...]
    stride: int | tuple[int, ...] = 1
    padding: int | tuple[int, ...] | str = 0
    dilation: int | tuple[int, ...] = 1
    groups: int = 1
    bias: bool = True
    padding_mode: str = "zeros"
    multi_channel: bool = False
    return_mask: bool | None = None  # None: the class's default (PConvNd True, PartialConvNd False)
    legacy: bool = False
    drop_in: bool = False

    @property
    def returns_mask(self) -> bool:
        return (not self.drop_in) if self.return_mask is None else self.return_mask

    def conv_args(self) -> dict[str, Any]:
        names = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups")
        return {**{n: getattr(self, n) for n in names}, "bias": self.bias, "padding_mode": self.padding_mode}


@dataclass(frozen=True)
class Edit:
    """An in-place write of 0 into the returned mask before the next layer reads it.

    ``how``: ``m[box] = 0``, ``m.data[box] = 0`` or ``m.numpy()[box] = 0``; ``box``: (start, stop)
    per spatial dimension; ``channel``: one channel of a (B, C, *S) mask, or None for all.
    """

    how: str
    box: tuple[tuple[int, int], ...]
    channel: int | None = None


@dataclass(frozen=True)
class Scenario:
    """Everything one differential example runs; its repr is a reproduction."""

    dims: int
    layers: tuple[Layer, ...]
    size: tuple[int, ...]  # the input's spatial size
    batch: int = 2  # the input's batch
    mask_batch: int | None = None  # None: the input's
    layout: str = "single"  # of the first layer's mask: none | shared | single | multi
    mask_kind: str = "float"  # float | fractional | bool | uint8 | int64
    holes: float = 0.4  # fraction of holes
    mask_grad: bool = False  # a float mask that requires grad
    mode: str = "grad"
    dtype: torch.dtype = torch.float64  # what the layer computes in (under autocast: autocast's dtype)
    edit: Edit | None = None  # of the mask between the two layers of a chain
    parametrization: str | None = None  # mode parametrization: count | spectral_norm | weight_norm
    vmap_mask: bool = False  # mode vmap: the mask batched too
    grad_enabled: bool = True  # modes jvp, forward_ad, jacfwd, vmap: False runs them inside torch.no_grad()
    seed: int = 0

    @property
    def layer_dtype(self) -> torch.dtype:
        return torch.float32 if self.mode == "autocast" else self.dtype

    @property
    def exact(self) -> bool:
        return self.dtype == torch.float64 and self.mode != "autocast"

    def layouts(self) -> list[str]:
        """The layout of the mask each layer reads, then that of the mask the last one returns."""
        out = [self.layout]
        for layer in self.layers:
            out.append(_returned_layout(out[-1], layer))
        return out

    def spatial_sizes(self) -> list[tuple[int, ...]]:
        """Each layer's input spatial size, then the last one's output size."""
        sizes = [self.size]
        for layer in self.layers:
            sizes.append(out_size(layer, sizes[-1], self.dims))
        return sizes


def _returned_layout(layout: str, layer: Layer) -> str:
    """The layout of the mask a layer returns: the one it read; (1, 1, *S') or (B, C_out, *S') for none."""
    if layout == "none":
        return "multi" if layer.multi_channel else "single"
    return layout


def _ref_multi(layout: str, layer: Layer) -> bool:
    """The reference's multi_channel flag for a mask of ``layout`` (a SHARED mask is its multi-channel
    mask, expanded; for no mask our flag decides the returned mask's channels)."""
    return layout in ("shared", "multi") or (layout == "none" and layer.multi_channel)


def _tuple(value: Any, dims: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, tuple) else (value,) * dims


def out_size(layer: Layer, size: tuple[int, ...], dims: int) -> tuple[int, ...]:
    """nn.ConvNd's output size."""
    if layer.padding == "same":
        return size
    padding = (0,) * dims if layer.padding == "valid" else _tuple(layer.padding, dims)
    kernel, stride, dilation = (_tuple(v, dims) for v in (layer.kernel_size, layer.stride, layer.dilation))
    return tuple(
        (s + 2 * p - d * (k - 1) - 1) // t + 1
        for s, p, d, k, t in zip(size, padding, dilation, kernel, stride, strict=True)
    )


def _per_dim(draw: st.DrawFn, options: list[list[int]]) -> int | tuple[int, ...]:
    """One value for every dimension (an int), or one per dimension (a tuple); shrinks to the int."""
    common = sorted(set.intersection(*map(set, options)))
    if common and not draw(st.booleans()):
        return draw(st.sampled_from(common))
    return tuple(draw(st.sampled_from(o)) for o in options)


@st.composite
def layer_configs(
    draw: st.DrawFn,
    dims: int,
    size: tuple[int, ...],
    in_channels: int | None,
    multi_channel: bool | None,
    must_return_mask: bool,
    max_channels: int = 4,
) -> Layer:
    """A valid layer for an input of spatial ``size``: the kernel's extent fits, reflect padding is
    smaller than the input, 'same' only with stride 1, groups divide both channel counts."""
    if in_channels is None:
        groups = draw(st.integers(1, max_channels))
        in_channels = groups * draw(st.integers(1, max_channels // groups))
    else:
        groups = draw(st.sampled_from([g for g in range(1, in_channels + 1) if in_channels % g == 0]))
    out_channels = groups * draw(st.integers(1, max_channels // groups))
    dilation = _per_dim(draw, [[1, 2] if s >= 3 else [1] for s in size])
    dil = _tuple(dilation, dims)
    max_kernel = 3 if dims == 3 else 4
    kernel_size = _per_dim(
        draw, [[k for k in range(1, max_kernel + 1) if d * (k - 1) + 1 <= s] for s, d in zip(size, dil, strict=True)]
    )
    padding_kind = draw(st.sampled_from(["int", "same", "valid"]))
    if padding_kind == "int":
        padding: int | tuple[int, ...] | str = _per_dim(draw, [list(range(min(2, s - 1) + 1)) for s in size])
    else:
        padding = padding_kind
    stride = 1 if padding == "same" else _per_dim(draw, [[1, 2, 3]] * dims)
    drop_in = draw(st.booleans())
    if must_return_mask:
        return_mask: bool | None = True if drop_in else draw(st.sampled_from([None, True]))
    else:
        return_mask = draw(st.sampled_from([None, True, False]))
    return Layer(
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=draw(st.booleans()),
        padding_mode=draw(st.sampled_from(PADDING_MODES)),
        multi_channel=draw(st.booleans()) if multi_channel is None else multi_channel,
        return_mask=return_mask,
        legacy=draw(st.booleans()),
        drop_in=drop_in,
    )


def _flag_for(layout: str) -> bool | None:
    """Our multi_channel flag as a layout needs it (None: free, it does not matter or it chooses)."""
    return {"single": False, "multi": True}.get(layout)


def _parametrizations(layers: list[Layer], dims: int) -> list[str]:
    """The parametrizations whose gradient is not identically zero for these layers: weight_norm of
    rows of one entry is ``g * sign(v)``, spectral_norm of a 1x1 matrix ``sign(w)`` (their exact
    gradient is 0, and both sides give rounding noise of each other's size)."""
    fan_in = [layer.in_channels // layer.groups * math.prod(_tuple(layer.kernel_size, dims)) for layer in layers]
    kinds = ["count"]
    if all(f > 1 for f in fan_in):
        kinds.append("weight_norm")
    if all(f > 1 or layer.out_channels > 1 for f, layer in zip(fan_in, layers, strict=True)):
        kinds.append("spectral_norm")
    return kinds


@st.composite
def scenarios(draw: st.DrawFn, mode: str) -> Scenario:
    """A valid scenario of ``mode``: the dtype, sizes, one or two layers (the second fitting the
    first's output and the layout of its returned mask), the mask, an edit between the layers."""
    dims = draw(st.sampled_from([1, 2, 3]))
    dtype = draw(st.sampled_from(DTYPES[mode]))
    small = mode == "jacfwd"  # a Jacobian has (output size) x (input size) entries
    high = (4 if dims == 3 else 5) if small else 8
    size = tuple(draw(st.integers(3, high)) for _ in range(dims))
    n_layers = draw(st.integers(1, 2))
    layout = draw(st.sampled_from(LAYOUTS))
    max_channels = 3 if small else 4

    first = draw(layer_configs(dims, size, None, _flag_for(layout), n_layers > 1, max_channels))
    layers = [first]
    layouts = [layout, _returned_layout(layout, first)]
    if n_layers > 1:
        layers.append(
            draw(
                layer_configs(
                    dims, out_size(first, size, dims), first.out_channels, _flag_for(layouts[1]), False, max_channels
                )
            )
        )

    batch = draw(st.integers(1, 2 if small else 3))
    mask_batch = None
    if layout != "none":
        variant = draw(st.sampled_from(["same", "one", "input_one"]))
        if variant == "one":
            mask_batch = 1
        elif variant == "input_one":  # an input batch of 1 under a batch of masks
            batch, mask_batch = 1, draw(st.integers(2, 3))
    kind = "float" if layout == "none" else draw(st.sampled_from(MASK_KINDS))
    mask_grad = mode in MASK_GRAD_MODES and layout != "none" and kind in ("float", "fractional") and draw(st.booleans())

    edit = None
    if n_layers > 1 and mode in EAGER and draw(st.booleans()):
        edited = layouts[1]  # the layout of the mask between the layers
        expanded = edited == "multi" and not first.drop_in  # PConvNd's read-only expanded view
        hows = ["numpy"] if expanded else list(EDITS)
        if dtype == torch.bfloat16 and mode != "autocast":
            hows = [h for h in hows if h != "numpy"]  # numpy has no bfloat16
        if hows:
            between = out_size(first, size, dims)
            box = []
            for s in between:
                start = draw(st.integers(0, s - 1))
                box.append((start, draw(st.integers(start + 1, s))))
            channel = None
            if edited == "multi" and not expanded and draw(st.booleans()):
                channel = draw(st.integers(0, first.out_channels - 1))
            edit = Edit(draw(st.sampled_from(hows)), tuple(box), channel)

    return Scenario(
        dims=dims,
        layers=tuple(layers),
        size=size,
        batch=batch,
        mask_batch=mask_batch,
        layout=layout,
        mask_kind=kind,
        holes=draw(st.sampled_from([0.0, 0.3, 0.6, 0.9])),
        mask_grad=mask_grad,
        mode=mode,
        dtype=dtype,
        edit=edit,
        parametrization=draw(st.sampled_from(_parametrizations(layers, dims))) if mode == "parametrization" else None,
        vmap_mask=mode == "vmap" and layout != "none" and draw(st.booleans()),
        grad_enabled=draw(st.booleans()) if mode in ("jvp", "forward_ad", "jacfwd", "vmap") else True,
        seed=draw(st.integers(0, 2**16)),
    )


# ----------------------------------------------------------------------------- building a scenario


class Counted(nn.Module):
    """A parametrization that multiplies by ``scale`` and counts its calls."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.calls = 0

    def forward(self, weight: Tensor) -> Tensor:
        self.calls += 1
        return weight * self.scale


def _parametrize(module: nn.Module, kind: str) -> Counted:
    """Parametrize ``module.weight`` by ``kind``, then by a counter (the last parametrization)."""
    if kind == "spectral_norm":
        nn.utils.parametrizations.spectral_norm(module)
    elif kind == "weight_norm":
        nn.utils.parametrizations.weight_norm(module)
    counter = Counted(0.5 if kind == "count" else 1.0)
    nn.utils.parametrize.register_parametrization(module, "weight", counter)
    return counter


def _ref_args(layer: Layer, dims: int) -> dict[str, Any]:
    """The reference's nn.ConvNd arguments: ours, or for 1-D the 2-D ones on a height-1 axis."""
    args = layer.conv_args()
    if dims == 1:
        for name, height in (("kernel_size", 1), ("stride", 1), ("padding", 0), ("dilation", 1)):
            value = args[name]
            if not isinstance(value, str):
                args[name] = (height, _tuple(value, 1)[0])
    return args


@dataclass
class Built:
    """The layers and tensors of one scenario."""

    sc: Scenario
    ours: list[nn.Module]
    refs: list[nn.Module]  # float64
    counters: list[Counted] = field(default_factory=list)
    ref_counters: list[Counted] = field(default_factory=list)
    x: Tensor = None  # type: ignore[assignment]  # in the layer's dtype
    x_alt: Tensor = None  # type: ignore[assignment]  # vmap's second input
    mask: Tensor | None = None  # ours, in its kind
    mask_alt: Tensor | None = None  # vmap's second mask
    ref_mask: Tensor | None = None  # ours as float64 (nonzero -> 1 for bool and integers), our layout
    ref_mask_alt: Tensor | None = None
    tangents: dict[str, Tensor] = field(default_factory=dict)  # jvp, in the layer's dtype
    cotangent: Tensor | None = None  # in the output's dtype, set once the output's shape is known


def _make_mask(sc: Scenario, gen: torch.Generator, channels: int) -> tuple[Tensor | None, Tensor | None]:
    """Our mask in the scenario's kind and layout, and the reference's view of it (float64, our layout)."""
    if sc.layout == "none":
        return None, None
    batch = sc.mask_batch or sc.batch
    leading = {"shared": (batch,), "single": (batch, 1), "multi": (batch, channels)}[sc.layout]
    shape = (*leading, *sc.size)
    keep = torch.rand(shape, generator=gen, dtype=torch.float64) >= sc.holes
    if sc.mask_kind == "float":
        mask = keep.to(sc.layer_dtype)
    elif sc.mask_kind == "fractional":
        mask = (torch.rand(shape, generator=gen, dtype=torch.float64) * keep).to(sc.layer_dtype)
    elif sc.mask_kind == "bool":
        mask = keep
    elif sc.mask_kind == "uint8":
        mask = keep.to(torch.uint8) * 255
    else:  # int64: any nonzero value is valid
        values = torch.randint(1, 1000, shape, generator=gen) * (2 * torch.randint(0, 2, shape, generator=gen) - 1)
        mask = values * keep
    ref = mask.double() if mask.is_floating_point() else (mask != 0).double()
    return mask, ref


def _random(shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype, scale: float = 1.0) -> Tensor:
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def build(sc: Scenario) -> Built:
    """Our layers (in the layer dtype) and the float64 reference's with the same parameters (ours,
    rounded to the layer dtype, upcast), the inputs, masks and tangents, all drawn from ``sc.seed``."""
    gen = seeded(sc.seed)
    dtype = sc.layer_dtype
    layouts = sc.layouts()
    ours, refs = [], []
    for i, layer in enumerate(sc.layers):
        cls = _OURS[sc.dims, layer.drop_in]
        kwargs: dict[str, Any] = {"multi_channel": layer.multi_channel, "legacy_behaviour": layer.legacy}
        if layer.return_mask is not None:
            kwargs["return_mask"] = layer.return_mask
        our = cls(**layer.conv_args(), **kwargs, dtype=dtype)
        ref = _REFERENCE[sc.dims](
            **_ref_args(layer, sc.dims),
            multi_channel=_ref_multi(layouts[i], layer),
            return_mask=True,
            dtype=torch.float64,
        )
        with torch.no_grad():  # standard normal inputs, weights of fan-in variance, a bias as large as the output
            fan_in = our.weight[0].numel()
            our.weight.copy_(_random(tuple(our.weight.shape), gen, dtype, 1 / math.sqrt(fan_in)))
            if our.bias is not None:
                our.bias.copy_(_random(tuple(our.bias.shape), gen, dtype))
        ours.append(our)
        refs.append(ref)
    b = Built(sc, ours, refs)
    if sc.mode == "parametrization":
        assert sc.parametrization is not None
        with torch.random.fork_rng(devices=[]):  # spectral_norm draws its vectors (the reference gets ours)
            torch.manual_seed(sc.seed)
            for our, ref in zip(ours, refs, strict=True):
                b.counters.append(_parametrize(our, sc.parametrization))
                b.ref_counters.append(_parametrize(ref, sc.parametrization))
    for our, ref in zip(ours, refs, strict=True):  # the same parameters (and spectral_norm's vectors)
        ref_state = ref.state_dict()
        ref.load_state_dict({k: v.detach().double().reshape(ref_state[k].shape) for k, v in our.state_dict().items()})
    for counter in (*b.counters, *b.ref_counters):
        counter.calls = 0
    channels = sc.layers[0].in_channels
    b.x = _random((sc.batch, channels, *sc.size), gen, dtype)
    b.x_alt = _random((sc.batch, channels, *sc.size), gen, dtype)
    b.mask, b.ref_mask = _make_mask(sc, gen, channels)
    b.mask_alt, b.ref_mask_alt = _make_mask(sc, gen, channels)
    if sc.mode in ("jvp", "forward_ad"):
        b.tangents["input"] = _random(tuple(b.x.shape), gen, dtype)
        for i, our in enumerate(ours):
            for name, p in our.named_parameters():
                b.tangents[f"{name}/{i}"] = _random(tuple(p.shape), gen, dtype)
    return b


# ----------------------------------------------------------------------------- the two sides


def _edit_index(sc: Scenario, layout: str, has_channels: bool) -> tuple[Any, ...]:
    assert sc.edit is not None
    box = tuple(slice(a, b) for a, b in sc.edit.box)
    if not has_channels:
        return (slice(None), *box)
    channel = sc.edit.channel if layout == "multi" and sc.edit.channel is not None else slice(None)
    return (slice(None), channel, *box)


def _edit_ours(sc: Scenario, layout: str, mask: Tensor) -> Tensor:
    assert sc.edit is not None
    index = _edit_index(sc, layout, layout != "shared")
    if sc.edit.how == "inplace":
        mask[index] = 0
    elif sc.edit.how == "data":
        mask.data[index] = 0
    else:
        mask.numpy()[index] = 0
    return mask


def _edit_ref(sc: Scenario, layout: str, mask: Tensor) -> Tensor:
    mask = mask.clone()  # NVIDIA's returned mask was saved by autograd for its output's backward
    mask[_edit_index(sc, layout, True)] = 0
    return mask


def _to_ref_layout(layout: str, mask: Tensor, channels: int, lead: int = 0) -> Tensor:
    """A mask of ours as the reference has it: a SHARED mask (B, *S) expanded to (B, C, *S)."""
    if layout != "shared":
        return mask
    mask = mask.unsqueeze(lead + 1)
    return mask.expand(*mask.shape[: lead + 1], channels, *mask.shape[lead + 2 :])


def _ref_call(dims: int, ref: nn.Module, x: Tensor, mask: Tensor | None, params: dict[str, Tensor] | None) -> Any:
    """The reference on our shapes: for 1-D, a height-1 axis in and out, and weights reshaped."""
    if dims == 1:
        x = x.unsqueeze(2)
        mask = None if mask is None else mask.unsqueeze(-2)
    if params is None:
        out, update = ref(x, mask)
    else:
        shapes = {name: p.shape for name, p in ref.named_parameters()}
        out, update = functional_call(ref, {k: v.reshape(shapes[k]) for k, v in params.items()}, (x, mask))
    if dims == 1:
        out, update = out.squeeze(2), update.squeeze(-2)
    return out, update


def _ref_chain(
    sc: Scenario, refs: list[nn.Module], x: Tensor, mask: Tensor | None, params: list[dict[str, Tensor]] | None
) -> tuple[Tensor, dict[str, Tensor]]:
    """The reference chain on (x, our-layout float mask); masks returned in the reference's layout."""
    layouts = sc.layouts()
    out = x
    m = None if mask is None else _to_ref_layout(layouts[0], mask, sc.layers[0].in_channels, 0)
    masks = {}
    for i, ref in enumerate(refs):
        if i and sc.edit is not None:
            m = _edit_ref(sc, layouts[i], m)
        out, m = _ref_call(sc.dims, ref, out, m, None if params is None else params[i])
        masks[f"mask/{i}"] = m
    return out, masks


def _ours_chain(
    sc: Scenario, call: Any, x: Tensor, mask: Tensor | None, problems: list[str]
) -> tuple[Tensor, dict[str, Tensor]]:
    """Our chain; checks each layer's return type and its returned mask's dtype on the way."""
    layouts = sc.layouts()
    out, m = x, mask
    masks = {}
    for i, layer in enumerate(sc.layers):
        if i and sc.edit is not None:
            m = _edit_ours(sc, layouts[i], m)
        in_dtype = out.dtype
        result = call(i, out, m)
        if isinstance(result, tuple) != layer.returns_mask:
            problems.append(f"layer {i}: returned {type(result).__name__}, return_mask={layer.returns_mask}")
        if isinstance(result, tuple):
            out, m = result
            # As returned: the edit below writes into this very tensor.
            masks[f"mask/{i}"] = m.detach().clone() if sc.edit is not None and i + 1 < len(sc.layers) else m
            if m.dtype != in_dtype:
                problems.append(f"layer {i}: returned mask dtype {m.dtype}, input dtype {in_dtype}")
        else:
            out, m = result, None
    return out, masks


def _mode_context(sc: Scenario) -> AbstractContextManager[Any]:
    if sc.mode == "no_grad" or not sc.grad_enabled:
        return torch.no_grad()
    if sc.mode == "inference_mode":
        return torch.inference_mode()
    if sc.mode == "autocast":
        return torch.autocast("cpu", dtype=sc.dtype)
    return nullcontext()


def _flat(params: list[dict[str, Tensor]]) -> tuple[list[str], list[Tensor]]:
    names = [f"{name}/{i}" for i, p in enumerate(params) for name in p]
    return names, [t for p in params for t in p.values()]


def _unflat(names: list[str], tensors: tuple[Tensor, ...], n: int) -> list[dict[str, Tensor]]:
    params: list[dict[str, Tensor]] = [{} for _ in range(n)]
    for name, t in zip(names, tensors, strict=True):
        key, i = name.rsplit("/", 1)
        params[int(i)][key] = t
    return params


def _second_order(outputs: dict[str, Tensor | None], leaves: dict[str, Tensor]) -> dict[str, Tensor | None]:
    """Gradients of half the squared norm of every first-order gradient that carries a graph."""
    terms = [0.5 * g.square().sum() for g in outputs.values() if g is not None and g.requires_grad]
    if not terms:
        return {f"grad2 {name}": None for name in leaves}
    grads = torch.autograd.grad(sum(terms), list(leaves.values()), allow_unused=True)
    return {f"grad2 {name}": g for name, g in zip(leaves, grads, strict=True)}


def run_reference(b: Built, absolute: bool = False) -> dict[str, Tensor | None]:
    """Every result of the scenario's mode, from the float64 reference: with ``absolute``, on
    absolute values (the magnitudes of the bound)."""
    sc = b.sc
    fix = torch.abs if absolute else (lambda t: t)
    x = fix(b.x.detach().double())
    mask = None if b.ref_mask is None else b.ref_mask.clone()
    if sc.mode == "parametrization":
        params = None
        leaves_params = {f"{n}/{i}": p for i, ref in enumerate(b.refs) for n, p in ref.named_parameters()}
    else:
        params = [{n: fix(p.detach().double()) for n, p in our.named_parameters()} for our in b.ours]
        names, flat = _flat(params)
        leaves_params = dict(zip(names, flat, strict=True))
    res: dict[str, Tensor | None] = {}

    if sc.mode in ("grad", "no_grad", "inference_mode", "autocast", "parametrization", "double_backward", "func_grad"):
        grad = sc.mode not in ("no_grad", "inference_mode")
        if grad:
            x.requires_grad_()
            for p in leaves_params.values():
                p.requires_grad_()
        if sc.mask_grad:
            assert mask is not None
            mask.requires_grad_()
        out, masks = _ref_chain(sc, b.refs, x, mask, params)
        res["output"] = out
        res.update(masks)
        if grad:
            leaves = {"input": x, **leaves_params, **({"mask": mask} if sc.mask_grad else {})}
            if b.cotangent is None:
                gen = seeded(sc.seed + 1)
                out_dtype = sc.dtype  # ours: the layer's dtype, or autocast's
                b.cotangent = _random(tuple(out.shape), gen, out_dtype)
            g = fix(b.cotangent.double())
            double = sc.mode == "double_backward"
            grads = torch.autograd.grad(out, list(leaves.values()), g, allow_unused=True, create_graph=double)
            first = {f"grad {name}": t for name, t in zip(leaves, grads, strict=True)}
            if double:
                res.update(_second_order(first, leaves))
            res.update({k: None if v is None else v.detach() for k, v in first.items()})
    elif sc.mode in ("jvp", "forward_ad"):  # both against torch.func.jvp on the reference
        names, flat = _flat(params)  # type: ignore[arg-type]
        tangents = [fix(b.tangents["input"].double())] + [fix(b.tangents[n].double()) for n in names]

        def f(x: Tensor, *flat: Tensor) -> tuple[Tensor, ...]:
            out, masks = _ref_chain(sc, b.refs, x, mask, _unflat(names, flat, len(sc.layers)))
            return (out, *masks.values())

        primals, tangents_out = torch.func.jvp(f, (x, *flat), tuple(tangents))
        keys = ["output", *[f"mask/{i}" for i in range(len(sc.layers))]]
        res.update(zip(keys, primals, strict=True))
        res.update({f"tangent {k}": t for k, t in zip(keys, tangents_out, strict=True)})
    elif sc.mode == "vmap":  # a loop over the reference
        xs = (x, fix(b.x_alt.double()))
        alt = None if b.ref_mask_alt is None else b.ref_mask_alt
        ms = (mask, alt if sc.vmap_mask else mask)
        runs = [_ref_chain(sc, b.refs, xi, mi, params) for xi, mi in zip(xs, ms, strict=True)]
        res["output"] = torch.stack([r[0] for r in runs])
        for key in runs[0][1]:
            res[key] = torch.stack([r[1][key] for r in runs])
    elif sc.mode == "jacfwd":  # against reverse mode on the reference
        names, flat = _flat(params)  # type: ignore[arg-type]

        def g(x: Tensor, *flat: Tensor) -> Tensor:
            return _ref_chain(sc, b.refs, x, mask, _unflat(names, flat, len(sc.layers)))[0]

        jac = torch.func.jacrev(g, argnums=tuple(range(1 + len(flat))))(x, *flat)
        res["output"] = g(x, *flat)
        res.update({f"jac {n}": j for n, j in zip(["input", *names], jac, strict=True)})
    if sc.mode == "parametrization":
        for i, ref in enumerate(b.refs):
            for n, buf in ref.named_buffers():
                res[f"buffer {n}/{i}"] = buf.detach().clone()
    return res


def run_ours(b: Built) -> tuple[dict[str, Tensor | None], list[str]]:
    """Every result of the scenario's mode, from our layers, and any API problem seen on the way."""
    sc = b.sc
    problems: list[str] = []
    res: dict[str, Tensor | None] = {}
    x = b.x.detach().clone()
    mask = None if b.mask is None else b.mask.detach().clone()
    n = len(sc.layers)

    def module_call(i: int, x: Tensor, m: Tensor | None) -> Any:
        return b.ours[i](x, m)

    if sc.mode in EAGER:
        grad = sc.mode not in ("no_grad", "inference_mode")
        if grad:
            x.requires_grad_()
        if sc.mask_grad:
            assert mask is not None
            mask.requires_grad_()
        with _mode_context(sc):
            out, masks = _ours_chain(sc, module_call, x, mask, problems)
        res["output"] = out
        res.update(masks)
        if b.counters:
            calls = [c.calls for c in b.counters]
            if calls != [1] * n:
                problems.append(f"the parametrization ran {calls} times in one forward (one per layer expected)")
        if grad:
            leaves = {"input": x}
            leaves.update({f"{name}/{i}": p for i, our in enumerate(b.ours) for name, p in our.named_parameters()})
            if sc.mask_grad:
                leaves["mask"] = mask  # type: ignore[assignment]
            assert b.cotangent is not None
            double = sc.mode == "double_backward"
            grads = torch.autograd.grad(
                out, list(leaves.values()), b.cotangent.to(out.dtype), allow_unused=True, create_graph=double
            )
            first = {f"grad {name}": t for name, t in zip(leaves, grads, strict=True)}
            if double:
                res.update(_second_order(first, leaves))
            res.update({k: None if v is None else v.detach() for k, v in first.items()})
        if sc.mode == "parametrization":
            for i, our in enumerate(b.ours):
                for name, buf in our.named_buffers():
                    res[f"buffer {name}/{i}"] = buf.detach().clone()
        return res, problems

    params = [{name: p.detach() for name, p in our.named_parameters()} for our in b.ours]
    names, flat = _flat(params)

    def functional(x: Tensor, m: Tensor | None, flat: tuple[Tensor, ...]) -> tuple[Tensor, dict[str, Tensor]]:
        ps = _unflat(names, flat, n)
        return _ours_chain(sc, lambda i, x, m: functional_call(b.ours[i], ps[i], (x, m)), x, m, problems)

    with _mode_context(sc):
        if sc.mode == "func_grad":
            assert b.cotangent is not None
            g = b.cotangent.to(sc.dtype)

            def loss(x: Tensor, *args: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
                m = args[-1] if sc.mask_grad else mask
                out, masks = functional(x, m, args[: len(flat)])
                return (out * g).sum(), (out, *masks.values())

            args = (x, *flat, *([mask] if sc.mask_grad else []))
            grads, aux = torch.func.grad(loss, argnums=tuple(range(len(args))), has_aux=True)(*args)
            keys = ["input", *names, *(["mask"] if sc.mask_grad else [])]
            res.update({f"grad {k}": t for k, t in zip(keys, grads, strict=True)})
            res["output"] = aux[0]
            res.update({f"mask/{i}": t for i, t in enumerate(aux[1:])})
        elif sc.mode == "jvp":

            def f(x: Tensor, *flat: Tensor) -> tuple[Tensor, ...]:
                out, masks = functional(x, mask, flat)
                return (out, *masks.values())

            tangents = (b.tangents["input"], *(b.tangents[k] for k in names))
            primals, tangents_out = torch.func.jvp(f, (x, *flat), tangents)
            keys = ["output", *[f"mask/{i}" for i in range(n) if sc.layers[i].returns_mask]]
            res.update(zip(keys, primals, strict=True))
            res.update({f"tangent {k}": t for k, t in zip(keys, tangents_out, strict=True)})
        elif sc.mode == "forward_ad":  # dual tensors: the Function's own jvp rule, where it runs
            keys = ["output", *[f"mask/{i}" for i in range(n) if sc.layers[i].returns_mask]]
            with fwAD.dual_level():
                dual_x = fwAD.make_dual(x, b.tangents["input"])
                dual_flat = tuple(fwAD.make_dual(t, b.tangents[k]) for k, t in zip(names, flat, strict=True))
                out, masks = functional(dual_x, mask, dual_flat)
                for key, t in zip(keys, (out, *masks.values()), strict=True):
                    primal, tangent = fwAD.unpack_dual(t)
                    res[key] = primal.clone()
                    res[f"tangent {key}"] = None if tangent is None else tangent.clone()
        elif sc.mode == "vmap":
            xs = torch.stack([x, b.x_alt])
            if sc.vmap_mask:
                assert mask is not None and b.mask_alt is not None
                ms = torch.stack([mask, b.mask_alt])

                def v(x: Tensor, m: Tensor) -> tuple[Tensor, ...]:
                    out, masks = _ours_chain(sc, module_call, x, m, problems)
                    return (out, *masks.values())

                results = torch.func.vmap(v)(xs, ms)
            else:

                def v1(x: Tensor) -> tuple[Tensor, ...]:
                    out, masks = _ours_chain(sc, module_call, x, mask, problems)
                    return (out, *masks.values())

                results = torch.func.vmap(v1)(xs)
            keys = ["output", *[f"mask/{i}" for i in range(n) if sc.layers[i].returns_mask]]
            res.update(zip(keys, results, strict=True))
        elif sc.mode == "jacfwd":

            def j(x: Tensor, *flat: Tensor) -> Tensor:
                return functional(x, mask, flat)[0]

            jac = torch.func.jacfwd(j, argnums=tuple(range(1 + len(flat))))(x, *flat)
            res["output"] = j(x, *flat)
            res.update({f"jac {k}": t for k, t in zip(["input", *names], jac, strict=True)})
    return res, problems


# ----------------------------------------------------------------------------- the comparison


def _bound_factor(sc: Scenario) -> float:
    """K of the module docstring: the roundings between our result and the exact one, in units of
    each dtype's unit roundoff, times those units."""
    u = torch.finfo(sc.dtype).eps / 2  # the compute dtype's (autocast's under autocast)
    u32 = torch.finfo(torch.float32).eps / 2  # accumulations and counts, for every dtype below float64
    batch = max(sc.batch, sc.mask_batch or 0)
    total = 0.0
    for layer, out in zip(sc.layers, sc.spatial_sizes()[1:], strict=True):
        window = math.prod(_tuple(layer.kernel_size, sc.dims))
        n_forward = layer.in_channels // layer.groups * window
        n_input = layer.out_channels // layer.groups * window
        n_weight = batch * math.prod(out)
        n_count = layer.in_channels * window
        legacy = (n_count + 2) if layer.legacy and layer.bias else 0
        total += (max(n_forward, n_input, n_weight) + 2 * n_count + 16) * u32 + (16 + legacy) * u
    return 3 * total if sc.mode == "double_backward" else total


def _compare(
    sc: Scenario, name: str, ours: Tensor | None, ref: Tensor | None, magnitude: Tensor | None, factor: float
) -> str | None:
    """A failure message, or None."""
    if ours is None and ref is None:
        return None
    if ours is None:
        assert ref is not None
        return None if not ref.detach().any() else f"{name}: ours is None, the reference's is not zero"
    if ref is None:
        return None if not ours.detach().any() else f"{name}: the reference's is None, ours is not zero"
    ours, ref = ours.detach(), ref.detach()
    if ours.shape != ref.shape:
        return f"{name}: shape {tuple(ours.shape)}, the reference's {tuple(ref.shape)}"
    if sc.exact:
        error = relative_error(ours, ref)
        return None if error <= 1e-12 else f"{name}: relative error {error:.3g} > 1e-12"
    assert magnitude is not None
    diff = (ours.double() - ref.double()).abs()
    # Below the smallest normal number a rounding errs by up to the subnormal spacing, tiny * eps,
    # whatever the magnitude: 32 of them (float16's is 6e-8; float32's and bfloat16's negligible),
    # in the coarser of the result's dtype and the compute dtype (under a float16 autocast, a
    # float32 input gradient was computed in float16, its subnormals included).
    spacing = max(torch.finfo(dtype).tiny * torch.finfo(dtype).eps for dtype in (ours.dtype, sc.dtype))
    bound = factor * magnitude.detach().double() + 32 * spacing
    bad = ~(diff <= bound)
    if not bad.any():
        return None
    excess = torch.where(bad, diff / bound, 0.0)
    worst = int(excess.flatten().argmax())
    return (
        f"{name}: {int(bad.sum())} entries out of bound, worst {diff.flatten()[worst].item():.3g} "
        f"> {bound.flatten()[worst].item():.3g} (K {factor:.3g} * magnitude "
        f"{magnitude.flatten()[worst].item():.3g}); ours {ours.flatten()[worst].item():.6g}, "
        f"ref {ref.flatten()[worst].item():.6g}; max relative {relative_error(ours, ref):.3g}"
    )


def _as_reference(sc: Scenario, key: str, ours: Tensor | None, ref: Tensor | None) -> tuple[str | None, Tensor | None]:
    """Our result as the reference has it: a returned SHARED mask expanded over C_out (its shape
    checked first), a gradient of a parameter in the reference's shape reshaped to ours."""
    if ours is None or ref is None:
        return None, ours
    base = key.removeprefix("tangent ")
    if sc.dims == 1 and sc.mode == "parametrization" and ours.shape != ref.shape and ours.numel() == ref.numel():
        return None, ours.reshape(ref.shape)  # a parameter of ours, (O, I, k), the reference's (O, I, 1, k)
    if base.startswith("mask/"):
        i = int(base.split("/")[1])
        layout = sc.layouts()[i + 1]
        lead = 1 if sc.mode == "vmap" else 0
        if layout == "shared":
            expected = (*ref.shape[: lead + 1], *ref.shape[lead + 2 :])
            if tuple(ours.shape) != expected:
                return f"{key}: shape {tuple(ours.shape)}, expected {expected} (a (B, *S) layout)", ours
            return None, _to_ref_layout(layout, ours, ref.shape[lead + 1], lead)
    return None, ours


def check(sc: Scenario) -> None:
    """Run ``sc`` on both sides and fail with every disagreement."""
    b = build(sc)
    expected = run_reference(b)
    magnitudes = None if sc.exact else run_reference(b, absolute=True)
    ours, problems = run_ours(b)
    factor = _bound_factor(sc)
    failures = list(problems)

    out = ours.get("output")
    if out is not None:
        want = sc.dtype if sc.mode == "autocast" else sc.layer_dtype
        if out.dtype != want:
            failures.append(f"output dtype {out.dtype}, expected {want}")
    for key, ref in expected.items():
        if key.removeprefix("tangent ").startswith("mask/") and key not in ours:
            i = int(key.removeprefix("tangent ").split("/")[1])
            if not sc.layers[i].returns_mask:
                continue  # ours returned no mask (return_mask=False)
        if key not in ours:
            failures.append(f"{key}: missing from our results")
            continue
        problem, mine = _as_reference(sc, key, ours[key], ref)
        if problem:
            failures.append(problem)
            continue
        magnitude = None if magnitudes is None else magnitudes[key]
        if key.removeprefix("tangent ").startswith("mask/") and sc.mask_kind != "fractional" and ref is not None:
            # 0/1 masks: exactly equal (their tangents exactly zero; forward_ad's None is zero).
            if mine is None and key.startswith("tangent "):
                mine = torch.zeros_like(ref)
            if mine is None:
                failures.append(f"{key}: ours is None")
                continue
            if not torch.equal(mine.detach().double(), ref.detach().double()):
                failures.append(f"{key}: differs from the reference's ({(mine.double() != ref).sum().item()} entries)")
            continue
        failure = _compare(sc, key, mine, ref, magnitude, factor)
        if failure:
            failures.append(failure)

    if not failures and _legacy_bit_identical(sc):
        failures += _check_bit_identical(b, ours)
    if failures:
        pytest.fail(f"{sc!r}\n" + "\n".join(failures), pytrace=False)


def _legacy_bit_identical(sc: Scenario) -> bool:
    return (
        sc.dtype == torch.float32
        and sc.mode in ("grad", "no_grad", "inference_mode")
        and all(layer.legacy for layer in sc.layers)
        and sc.mask_kind != "fractional"
    )


def _check_bit_identical(b: Built, ours: dict[str, Tensor | None]) -> list[str]:
    """legacy_behaviour in float32 with a 0/1 mask: the output equals the float32 reference's."""
    sc = b.sc
    layouts = sc.layouts()
    refs = [
        _REFERENCE[sc.dims](
            **_ref_args(layer, sc.dims), multi_channel=_ref_multi(layouts[i], layer), return_mask=True
        ).float()
        for i, layer in enumerate(sc.layers)
    ]
    params = [{n: p.detach() for n, p in our.named_parameters()} for our in b.ours]
    mask = None if b.ref_mask is None else b.ref_mask.float()
    with torch.no_grad():
        out, _ = _ref_chain(sc, refs, b.x, mask, params)
    mine = ours["output"]
    assert mine is not None
    if torch.equal(mine.detach(), out):
        return []
    return [f"legacy_behaviour float32 output not bit-identical: max diff {(mine - out).abs().max().item():.3g}"]


# ----------------------------------------------------------------------------- the tests

_SETTINGS = {"suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large], "deadline": None}

# Where the layer records autograd, it masks the convolution through its autograd Function, or,
# below pconv._FUNCTION_FROM input entries, through autograd's own ops: every test draws one path.
PATHS = st.sampled_from(["function", "plain ops"])


def _path(path: str) -> AbstractContextManager[Any]:
    return mock.patch.object(pconv, "_FUNCTION_FROM", 0 if path == "function" else 1 << 62)


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=QUICK, **_SETTINGS)  # type: ignore[arg-type]
@given(data=st.data())
def test_differential(mode: str, data: st.DataObject) -> None:
    if not DTYPES[mode]:
        pytest.skip(f"torch {torch.__version__} has no {mode} in a dtype this test runs it in")
    with _path(data.draw(PATHS, label="path")):
        check(data.draw(scenarios(mode), label="scenario"))


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=SLOW, **_SETTINGS)  # type: ignore[arg-type]
@given(data=st.data())
def test_differential_fuzz(mode: str, data: st.DataObject) -> None:
    if not DTYPES[mode]:
        pytest.skip(f"torch {torch.__version__} has no {mode} in a dtype this test runs it in")
    with _path(data.draw(PATHS, label="path")):
        check(data.draw(scenarios(mode), label="scenario"))


# ----------------------------------------------------------------------------- regressions

_K3 = {"kernel_size": 3, "padding": 1}


def _case(id: str, sc: Scenario) -> Any:
    return pytest.param(sc, id=id)


REGRESSIONS = [
    # issue 15, bug 1: forward-mode AD with a bool or integer mask gave a zero tangent where the
    # plain ops ran: another padding mode, 'same' with an even window, or under torch.no_grad().
    _case(
        "issue15-1-jvp-bool-mask-reflect",
        Scenario(
            2, (Layer(3, 4, **_K3, padding_mode="reflect", drop_in=True),), (6, 6), 1, mask_kind="bool", mode="jvp"
        ),
    ),
    _case(
        "issue15-1-jvp-uint8-mask-same-even",
        Scenario(2, (Layer(3, 4, 2, padding="same"),), (6, 6), 2, mask_kind="uint8", mode="jvp"),
    ),
    _case(
        "issue15-1-jvp-int64-mask-no-grad",
        Scenario(2, (Layer(3, 4, **_K3),), (6, 6), 2, mask_kind="int64", mode="jvp", grad_enabled=False),
    ),
    _case(
        "issue15-1-jacfwd-bool-mask-circular",
        Scenario(1, (Layer(2, 3, 3, padding=1, padding_mode="circular"),), (5,), 1, mask_kind="bool", mode="jacfwd"),
    ),
    # bug 2: a returned multi-channel mask of PartialConv2d edited through .data or a numpy view
    # was read stale by the next layer.
    *[
        _case(
            f"issue15-2-edit-{how}-one-channel",
            Scenario(
                2,
                (
                    Layer(3, 4, **_K3, multi_channel=True, drop_in=True, return_mask=True),
                    Layer(4, 2, **_K3, multi_channel=True, drop_in=True),
                ),
                (6, 6),
                2,
                layout="multi",
                edit=Edit(how, ((1, 4), (0, 6)), channel=1),
            ),
        )
        for how in EDITS
    ],
    # bug 3: a weight parametrization ran 2-3 times per forward.
    *[
        _case(
            f"issue15-3-{kind}-{layout}",
            Scenario(2, (Layer(3, 4, **_K3),), (6, 6), 2, layout=layout, mode="parametrization", parametrization=kind),
        )
        for kind in PARAMETRIZATIONS
        for layout in ("none", "single")
    ],
    # bug 4: a float mask that requires grad got no gradient (NVIDIA's flows through input * mask).
    *[
        _case(
            f"issue15-4-mask-grad-{layout}-{mode}",
            Scenario(
                2,
                (Layer(3, 4, **_K3, multi_channel=layout == "multi"),),
                (6, 6),
                2,
                layout=layout,
                mask_kind="fractional",
                mask_grad=True,
                mode=mode,
            ),
        )
        for layout in ("shared", "single", "multi")
        for mode in ("grad", "func_grad", "double_backward")
    ],
    # bug 5: an input of batch 1 under a mask of batch B raised (NVIDIA broadcasts to B).
    *[
        _case(
            f"issue15-5-input-batch-1-{layout}",
            Scenario(2, (Layer(3, 4, **_K3, multi_channel=layout == "multi"),), (6, 6), 1, mask_batch=3, layout=layout),
        )
        for layout in ("shared", "single", "multi")
    ],
    # Found by a random hunt (600 examples per mode): a float16 autocast's input gradient of
    # 5e-7, below float16's smallest normal number, erred by 1.2e-8, a fifth of float16's
    # subnormal spacing; the bound took the subnormal spacing of the gradient's float32.
    _case(
        "fp16-autocast-subnormal-input-gradient",
        Scenario(
            2,
            (Layer(1, 1, 1, bias=False), Layer(1, 1, 1, bias=False)),
            (3, 5),
            1,
            layout="shared",
            mask_kind="fractional",
            holes=0.0,
            mode="autocast",
            dtype=torch.float16,
        ),
    ),
]


@pytest.mark.parametrize("path", ["function", "plain ops"])
@pytest.mark.parametrize("scenario", REGRESSIONS)
def test_regression(scenario: Scenario, path: str) -> None:
    if scenario.dtype not in DTYPES[scenario.mode]:
        pytest.skip(f"torch {torch.__version__} has no {scenario.mode} in {scenario.dtype} on the CPU")
    with _path(path):
        check(scenario)
