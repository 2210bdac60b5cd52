"""PConv1d/2d/3d are NVIDIA's partial convolution: equivalence with torch_pconv.reference.

Every comparison goes through :func:`torch_pconv.check.compare`: the forward output, the input,
weight and bias gradients (max|ours - ref| / max|ref| within 1e-12 in float64, within the bounds
``compare`` derives from the arithmetic in float32), and the returned mask (exactly equal, in the
input's dtype, once put in the reference's layout). The configuration space is explored with
hypothesis under the derandomized profile of conftest.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers import MaskCase, describe, make_pair, mask_cases, run_compare, seeded
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from torch_pconv._masks import MaskLayout
from torch_pconv.check import reference_mask, relative_error
from torch_pconv.holes import random_holes, rectangle_holes, stroke_holes

# Every layout, each with its batch-of-1 and multi_channel-flag variants (helpers.MaskCase). A
# SHARED mask is torch-pconv 0.1.1's (B, *S) mask; its oracle is the multi-channel reference with
# the mask expanded over the channels (torch_pconv.check.reference_mask), and our flag does not matter.
CASES = mask_cases()
MASKED = [case for case in CASES if case.layout is not MaskLayout.NONE]
HOLES = ("random", "rectangles", "strokes")

# PyTorch's notice that 'same' with an even kernel pads a copy: expected, and not a result.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")

FLOATS = st.sampled_from([torch.float32, torch.float64])
MASK_DTYPES = st.sampled_from(["float", torch.bool, torch.uint8])
SEEDS = st.integers(0, 2**16)
FRACTIONS = st.floats(0.1, 0.9)  # of random holes
PADDING_MODES = st.sampled_from(["zeros", "reflect", "replicate", "circular"])


def make_holes(kind: str, shape: tuple[int, ...], spatial_dims: int, gen: torch.Generator, fraction: float) -> Tensor:
    """A float 0/1 mask: independent holes (``fraction`` of them), boxes, or brush strokes."""
    if kind == "random":
        return random_holes(shape, fraction, generator=gen)
    if kind == "rectangles":
        return rectangle_holes(shape, spatial_dims=spatial_dims, generator=gen)
    return stroke_holes(shape, generator=gen)


def make_masks(
    case: MaskCase,
    input: Tensor,
    gen: torch.Generator,
    *,
    holes: str = "random",
    fraction: float = 0.5,
    mask_dtype: torch.dtype | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """Our mask in ``case`` (in ``mask_dtype``, default the input's), and the reference's mask
    for the same holes (in the input's dtype, in the reference's layout)."""
    batch, channels, *spatial = input.shape
    shape = case.shape(batch, channels, spatial)
    if shape is None:
        return None, None
    mask = make_holes(holes, shape, len(spatial), gen, fraction).to(input.dtype)
    return mask.to(mask_dtype or input.dtype), reference_mask(case.layout, mask, channels)


def _as_tuple(value: int | tuple[int, ...], dims: int) -> tuple[int, ...]:
    return value if isinstance(value, tuple) else (value,) * dims


def _sizes(dims: int, low: int, high: int) -> st.SearchStrategy[int | tuple[int, ...]]:
    """An int, or a tuple of ``dims`` ints (non-square kernels, strides...)."""
    return st.one_of(st.integers(low, high), st.tuples(*[st.integers(low, high)] * dims))


@st.composite
def geometries(draw: st.DrawFn, dims: int, spatial: tuple[int, int] = (5, 12)) -> dict[str, Any]:
    """nn.ConvNd arguments plus an input size on which the output is not empty."""
    groups = draw(st.sampled_from([1, 2, 3]))
    channels = st.sampled_from([c for c in range(3, 7) if c % groups == 0])
    kernel_size = draw(_sizes(dims, 1, 4 if dims < 3 else 3))
    dilation = draw(_sizes(dims, 1, 2))
    padding = draw(st.one_of(_sizes(dims, 0, 2), st.sampled_from(["same", "valid"])))
    stride = 1 if padding == "same" else draw(_sizes(dims, 1, 3))  # PyTorch refuses 'same' with strides
    extent = [d * (k - 1) + 1 for k, d in zip(_as_tuple(kernel_size, dims), _as_tuple(dilation, dims), strict=True)]
    size = tuple(draw(st.integers(max(spatial[0], e), max(spatial[1], e))) for e in extent)
    return {
        "in_channels": draw(channels),
        "out_channels": draw(channels),
        "kernel_size": kernel_size,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": groups,
        "bias": draw(st.booleans()),
        "padding_mode": draw(PADDING_MODES),
        "size": size,
    }


def _case(
    geometry: dict[str, Any],
    case: MaskCase,
    dtype: torch.dtype,
    seed: int,
    *,
    dims: int = 2,
    holes: str = "random",
    fraction: float = 0.5,
    mask_dtype: Any = "float",
    legacy: bool = False,
) -> tuple[Any, Any, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """A fresh (ours, reference) pair, an input and the two masks for one configuration."""
    layer = {k: v for k, v in geometry.items() if k != "size"}
    ours, ref = make_pair(
        dims, layer, dtype=dtype, ours_multi=case.ours_multi, ref_multi=case.ref_multi, legacy=legacy, seed=seed
    )
    gen = seeded(seed)
    shape = (2, layer["in_channels"], *geometry["size"])
    input = torch.randn(shape, generator=gen, dtype=dtype)
    if dims == 1:  # the reference sees (B, C, 1, L)
        input = input.unsqueeze(2)
    mask, ref_mask = make_masks(
        case,
        input.squeeze(2) if dims == 1 else input,
        gen,
        holes=holes,
        fraction=fraction,
        mask_dtype=None if mask_dtype == "float" else mask_dtype,
    )
    if dims == 1 and ref_mask is not None:
        ref_mask = ref_mask.unsqueeze(-2)
    return ours, ref, input, mask, ref_mask


def _check_returned_shape(run: Any, case: MaskCase, out_channels: int) -> None:
    """The mask comes back in the layout it came in (compare() checks its values once broadcast,
    which would hide a batch of 1 where B was due)."""
    expected = case.returned_shape(run.tensors["input"].shape[0], out_channels, run.tensors["out_ref"].shape[2:])
    assert run.tensors["mask_ours"].shape == expected, f"{case.name}: returned mask {run.tensors['mask_ours'].shape}"


def _context(**config: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items())


# ----------------------------------------------------------------------------- 2-D


@given(
    geometry=geometries(2),
    case=st.sampled_from(CASES),
    holes=st.sampled_from(HOLES),
    fraction=FRACTIONS,
    mask_dtype=MASK_DTYPES,
    dtype=FLOATS,
    seed=SEEDS,
)
def test_pconv2d_matches_reference(geometry, case, holes, fraction, mask_dtype, dtype, seed):
    ours, ref, x, mask, ref_mask = _case(
        geometry, case, dtype, seed, holes=holes, fraction=fraction, mask_dtype=mask_dtype
    )
    run = run_compare(ours, ref, x, mask, ref_mask, seed=seed)
    run.assert_equivalent(_context(case=case.name, holes=holes, mask_dtype=mask_dtype, dtype=dtype, **geometry))
    _check_returned_shape(run, case, geometry["out_channels"])


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
@pytest.mark.parametrize("holes", HOLES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_every_layout_and_holes(case, holes, dtype):
    """Each layout with each kind of holes on one plain geometry, whatever hypothesis draws."""
    geometry = {"in_channels": 4, "out_channels": 6, "kernel_size": 3, "padding": 1, "size": (12, 12)}
    ours, ref, x, mask, ref_mask = _case(geometry, case, dtype, seed=3, holes=holes)
    run = run_compare(ours, ref, x, mask, ref_mask, seed=3)
    run.assert_equivalent(_context(case=case.name, holes=holes, dtype=dtype))
    _check_returned_shape(run, case, geometry["out_channels"])


@given(
    geometry=geometries(2),
    case=st.sampled_from(CASES),
    holes=st.sampled_from(HOLES),
    mask_dtype=MASK_DTYPES,
    seed=SEEDS,
)
def test_legacy_behaviour_is_bit_identical(geometry, case, holes, mask_dtype, seed):
    """legacy_behaviour=True: float32 forward output and mask equal to the reference's, bit for bit
    (compare() also holds it to a zero output tolerance, and to its gradient bounds)."""
    ours, ref, x, mask, ref_mask = _case(
        geometry, case, torch.float32, seed, holes=holes, mask_dtype=mask_dtype, legacy=True
    )
    run = run_compare(ours, ref, x, mask, ref_mask, seed=seed)
    context = _context(case=case.name, holes=holes, mask_dtype=mask_dtype, **geometry)
    run.assert_equivalent(context)
    seen = run.tensors
    assert torch.equal(seen["out_ours"], seen["out_ref"]), context
    mask_ours = reference_mask(case.layout, seen["mask_ours"], geometry["out_channels"])
    assert torch.equal(mask_ours, seen["mask_ref"]), context


@given(
    geometry=geometries(2),
    case=st.sampled_from(MASKED),
    seed=SEEDS,
)
def test_fractional_masks_follow_the_reference(geometry, case, seed):
    """Float masks with values in [0, 1] (float64): the reference's arithmetic, to 1e-12."""
    ours, ref, x, mask, _ = _case(geometry, case, torch.float64, seed)
    soft = torch.rand(mask.shape, generator=seeded(seed + 1), dtype=torch.float64) * mask  # keep some exact zeros
    ref_soft = reference_mask(case.layout, soft, geometry["in_channels"])
    run = run_compare(ours, ref, x, soft, ref_soft, seed=seed)
    run.assert_equivalent(_context(case=case.name, **geometry))


# ----------------------------------------------------------------------------- chained layers


def _encoder(layout: MaskLayout, dtype: torch.dtype, legacy: bool) -> list[tuple[Any, Any]]:
    """Four stride-2 layers, 3 -> 4 -> 6 -> 6 -> 8 channels: the mask halves at each."""
    case = MaskCase(layout)
    shapes = [(3, 4, 5, 2), (4, 6, 3, 1), (6, 6, 3, 1), (6, 8, 3, 1)]
    return [
        make_pair(
            2,
            {"in_channels": i, "out_channels": o, "kernel_size": k, "stride": 2, "padding": p},
            dtype=dtype,
            ours_multi=case.ours_multi,
            ref_multi=case.ref_multi,
            legacy=legacy,
            seed=10 + n,
        )
        for n, (i, o, k, p) in enumerate(shapes)
    ]


def _encoder_masks(
    layout: MaskLayout, input: Tensor, gen: torch.Generator, holes: str
) -> tuple[Tensor | None, Tensor | None]:
    """Holes large enough to outlive the first layers: big boxes or thick strokes, shared by all
    channels (a multi-channel mask adds independent holes per channel on top); ours and the
    reference's."""
    if layout is MaskLayout.NONE:
        return None, None
    batch, channels, *spatial = input.shape
    shape = (batch, 1, *spatial)
    if holes == "rectangles":
        base = rectangle_holes(shape, count=2, max_size=0.5, generator=gen)
    else:
        base = stroke_holes(shape, width=0.3, generator=gen)
    base = base.to(input.dtype)
    if layout is MaskLayout.SHARED:
        mask = base[:, 0]
    elif layout is MaskLayout.MULTI:
        mask = base * random_holes((batch, channels, *spatial), 0.3, generator=gen).to(input.dtype)
    else:
        mask = base
    return mask, reference_mask(layout, mask, channels)


MASKED_LAYOUTS = [MaskLayout.SINGLE, MaskLayout.MULTI, MaskLayout.SHARED]


@pytest.mark.parametrize("layout", MASKED_LAYOUTS, ids=lambda layout: layout.value)
@pytest.mark.parametrize("holes", ["rectangles", "strokes"])
def test_chained_encoder_float64(layout, holes):
    """Each layer's mask feeds the next, and holes close as it shrinks: final output, every
    intermediate mask, and the gradients of the input and of every parameter, to 1e-12."""
    dtype = torch.float64
    generator = seeded(0)
    pairs = _encoder(layout, dtype, legacy=False)
    x = torch.randn(2, 3, 32, 32, generator=generator, dtype=dtype)
    mask, ref_mask = _encoder_masks(layout, x, generator, holes)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ours, out_ref = x_ours, x_ref
    holes_left = [1 - ref_mask.mean().item()]
    for n, (ours, ref) in enumerate(pairs):
        out_ours, mask = ours(out_ours, mask)
        out_ref, ref_mask = ref(out_ref, ref_mask)
        assert torch.equal(reference_mask(layout, mask, ours.out_channels), ref_mask), f"layer {n}: masks differ"
        holes_left.append(1 - ref_mask.mean().item())
    assert holes_left[1] > 0 and holes_left[-1] < holes_left[1], f"holes left after each layer: {holes_left}"
    grad = torch.randn(out_ref.shape, generator=generator, dtype=dtype)
    out_ours.backward(grad)
    out_ref.backward(grad)
    pairs_of_tensors = {"output": (out_ours, out_ref), "grad_input": (x_ours.grad, x_ref.grad)}
    for n, (ours, ref) in enumerate(pairs):
        pairs_of_tensors[f"grad_weight{n}"] = (ours.weight.grad, ref.weight.grad)
        pairs_of_tensors[f"grad_bias{n}"] = (ours.bias.grad, ref.bias.grad)
    errors = {name: relative_error(a, b) for name, (a, b) in pairs_of_tensors.items()}
    worst = max(errors, key=errors.__getitem__)
    assert errors[worst] <= 1e-12, f"{worst}: {errors[worst]:.3g}\n" + describe(
        **{
            f"{name}_{side}": t
            for name, pair in pairs_of_tensors.items()
            for side, t in zip(("ours", "ref"), pair, strict=True)
        }
    )


@pytest.mark.parametrize("layout", [*MASKED_LAYOUTS, MaskLayout.NONE], ids=lambda layout: layout.value)
def test_chained_encoder_legacy_float32_is_bit_identical(layout):
    """With legacy_behaviour=True each float32 layer is bit-identical, so the whole chain is."""
    generator = seeded(0)
    pairs = _encoder(layout, torch.float32, legacy=True)
    x = torch.randn(2, 3, 32, 32, generator=generator)
    mask, ref_mask = _encoder_masks(layout, x, generator, "strokes")
    out_ours, out_ref = x, x
    for n, (ours, ref) in enumerate(pairs):
        out_ours, mask = ours(out_ours, mask)
        out_ref, ref_mask = ref(out_ref, ref_mask)
        if layout is MaskLayout.NONE:  # partial-convolution-based padding at every layer
            mask = ref_mask = None
        else:
            assert torch.equal(reference_mask(layout, mask, ours.out_channels), ref_mask), f"layer {n}: masks differ"
        assert torch.equal(out_ours, out_ref), f"layer {n}: outputs differ"


# ----------------------------------------------------------------------------- 3-D


@given(
    geometry=geometries(3, spatial=(3, 6)),
    case=st.sampled_from(CASES),
    holes=st.sampled_from(["random", "rectangles"]),
    mask_dtype=MASK_DTYPES,
    dtype=FLOATS,
    seed=SEEDS,
)
def test_pconv3d_matches_reference(geometry, case, holes, mask_dtype, dtype, seed):
    """(B, D, H, W), (B|1, 1, D, H, W), (B|1, C, D, H, W) and None masks against PartialConv3d."""
    ours, ref, x, mask, ref_mask = _case(geometry, case, dtype, seed, dims=3, holes=holes, mask_dtype=mask_dtype)
    run = run_compare(ours, ref, x, mask, ref_mask, seed=seed)
    run.assert_equivalent(_context(case=case.name, holes=holes, mask_dtype=mask_dtype, dtype=dtype, **geometry))
    _check_returned_shape(run, case, geometry["out_channels"])


@given(geometry=geometries(3, spatial=(3, 6)), case=st.sampled_from(CASES), seed=SEEDS)
def test_pconv3d_legacy_behaviour_is_bit_identical(geometry, case, seed):
    ours, ref, x, mask, ref_mask = _case(geometry, case, torch.float32, seed, dims=3, legacy=True)
    run = run_compare(ours, ref, x, mask, ref_mask, seed=seed)
    run.assert_equivalent(_context(case=case.name, **geometry))
    assert torch.equal(run.tensors["out_ours"], run.tensors["out_ref"])


# ----------------------------------------------------------------------------- 1-D


@given(
    geometry=geometries(1, spatial=(5, 16)),
    case=st.sampled_from(CASES),
    holes=st.sampled_from(["random", "rectangles"]),
    mask_dtype=MASK_DTYPES,
    dtype=FLOATS,
    legacy=st.booleans(),
    seed=SEEDS,
)
def test_pconv1d_matches_reference_on_height_one(geometry, case, holes, mask_dtype, dtype, legacy, seed):
    """PConv1d on (B, C, L) is the 2-D reference on (B, C, 1, L) with a (1, k) kernel; masks
    (B, L), (B|1, 1, L), (B|1, C, L) and None."""
    legacy = legacy and dtype == torch.float32
    ours, ref, x, mask, ref_mask = _case(
        geometry, case, dtype, seed, dims=1, holes=holes, mask_dtype=mask_dtype, legacy=legacy
    )
    run = run_compare(ours, ref, x, mask, ref_mask, seed=seed)
    context = _context(case=case.name, holes=holes, mask_dtype=mask_dtype, dtype=dtype, legacy=legacy, **geometry)
    run.assert_equivalent(context)
    _check_returned_shape(run, case, geometry["out_channels"])
    if legacy:
        assert torch.equal(run.tensors["out_ours"], run.tensors["out_ref"]), context


# ----------------------------------------------------------------------------- the harness


def test_comparison_catches_a_wrong_mask():
    """The comparison can fail: the reference given no holes disagrees with ours given holes."""
    generator = seeded(0)
    ours, ref = make_pair(2, {"in_channels": 3, "out_channels": 4, "kernel_size": 3, "padding": 1})
    x = torch.randn(2, 3, 10, 10, generator=generator)
    mask, _ = make_masks(MaskCase(MaskLayout.SINGLE), x, generator)
    cmp = run_compare(ours, ref, x, mask, torch.ones_like(mask)).cmp
    assert not cmp.ok and cmp.errors["output"] > 1e-2, cmp.errors
