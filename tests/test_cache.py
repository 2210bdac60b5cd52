"""The mask=None ratio cache: correct across sizes, dtypes and grad modes, bounded, never aliased,
never stale (unlike NVIDIA's), and safe under deepcopy, pickling, .to() and replication."""

from __future__ import annotations

import copy
import importlib
import io
import pickle

import pytest
import torch
from helpers import cached_tensors, image, make_pair, random_mask, randomize, run_compare, seeded, tensors_in
from torch import Tensor, nn

from torch_pconv import PConv2d
from torch_pconv import reference as nvidia
from torch_pconv._masks import MaskLayout
from torch_pconv.check import reference_mask, reference_multi_channel, relative_error
from torch_pconv.pconv import _CACHE_SIZE

IN, OUT = 3, 4
# float64 must agree to 1e-12 normwise; float32 to a few units of roundoff (the reference adds
# and removes the bias, which the default path does not).
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


def _layer(multi_channel: bool = False, bias: bool = True, legacy: bool = False, seed: int = 0) -> PConv2d:
    """A layer whose mask=None ratio is not all ones (padding 2, dilation 2), with seeded weights."""
    layer = PConv2d(
        IN, OUT, 3, padding=2, dilation=(1, 2), bias=bias, multi_channel=multi_channel, legacy_behaviour=legacy
    )
    return randomize(layer, seed)


def _conv_args(layer: PConv2d) -> tuple:
    """``layer``'s nn.Conv2d arguments, in order."""
    names = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups")
    return (*(getattr(layer, name) for name in names), layer.bias is not None, layer.padding_mode)


def _fresh_reference(layer: PConv2d, dtype: torch.dtype) -> nvidia.PartialConv2d:
    """A new NVIDIA layer with ``layer``'s configuration and weights: its cache cannot be stale."""
    ref = nvidia.PartialConv2d(*_conv_args(layer), multi_channel=layer.multi_channel, return_mask=True)
    ref.load_state_dict(layer.state_dict())
    return ref.to(dtype)


def _assert_matches(layer: PConv2d, out: Tensor, mask: Tensor, x: Tensor) -> None:
    """``layer(x)`` returned (out, mask): check it against a fresh reference."""
    with torch.no_grad():
        ref_out, ref_mask = _fresh_reference(layer, x.dtype)(x.detach())
    assert out.shape == ref_out.shape and out.dtype == ref_out.dtype
    assert torch.equal(mask, ref_mask.expand_as(mask)) and mask.shape == ref_mask.shape
    if layer.legacy_behaviour:
        assert torch.equal(out, ref_out)
    else:
        assert relative_error(out, ref_out) <= TOLERANCE[x.dtype]


def _reference_grads(layer: PConv2d, x: Tensor) -> list[Tensor]:
    ref = _fresh_reference(layer, x.dtype)
    x = x.detach().requires_grad_()
    ref(x)[0].square().sum().backward()
    return [x.grad, *(p.grad for p in ref.parameters())]


def _grads(layer: PConv2d, x: Tensor) -> list[Tensor]:
    layer.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    out, mask = layer(x)
    _assert_matches(layer, out, mask, x)
    out.square().sum().backward()
    return [x.grad, *(p.grad for p in layer.parameters())]


# --- Correctness across calls --------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("multi_channel", [False, True])
def test_changing_sizes(legacy, multi_channel):
    layer = _layer(multi_channel=multi_channel, legacy=legacy)
    # Sizes come back after others, batches change at a fixed size (NVIDIA keys on the batch too).
    for batch, h, w in [(2, 6, 7), (2, 9, 5), (1, 6, 7), (3, 6, 7), (2, 9, 5), (1, 4, 4), (2, 6, 7)]:
        x = image((batch, IN, h, w), seed=h * w + batch)
        out, mask = layer(x)
        _assert_matches(layer, out, mask, x)


@pytest.mark.parametrize("legacy", [False, True])
def test_changing_dtypes(legacy):
    layer = _layer(legacy=legacy)
    for dtype in [torch.float32, torch.float64, torch.float32, torch.float64]:
        layer.to(dtype)
        for size in [(5, 6), (8, 8)]:
            x = image((2, IN, *size), dtype=dtype)
            out, mask = layer(x)
            assert mask.dtype == dtype
            _assert_matches(layer, out, mask, x)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("multi_channel", [False, True])
def test_grad_modes_then_a_training_step(bias, multi_channel):
    # Inference tensors cannot be saved for backward: a ratio cached under inference_mode must not
    # reach a training call (the no-bias path saves the ratio itself, the bias path the update).
    layer = _layer(multi_channel=multi_channel, bias=bias).double()
    x = image((2, IN, 7, 6), dtype=torch.float64)
    # inference_mode first: a cache keyed without the mode would hand its tensors to every later call.
    for context in (torch.inference_mode, torch.no_grad, torch.inference_mode):
        with context():
            out, mask = layer(x)
        _assert_matches(layer, out, mask, x)
    expected = _reference_grads(layer, x)
    for _ in range(2):  # the second step uses the training-mode cache entry
        for ours, ref in zip(_grads(layer, x), expected, strict=True):
            assert relative_error(ours, ref) <= 1e-12
        with torch.inference_mode():
            layer(x)


def test_training_step_first_then_inference():
    layer = _layer().double()
    x = image((2, IN, 6, 6), dtype=torch.float64)
    _grads(layer, x)
    with torch.inference_mode():
        out, mask = layer(x)
    assert out.is_inference()
    _assert_matches(layer, out, mask, x)


def test_masked_calls_do_not_touch_the_cache():
    layer = _layer()
    x = image((2, IN, 6, 6))
    layer(x)
    before = [t.clone() for t in cached_tensors(layer)]
    mask = (torch.rand(2, 1, 6, 6, generator=seeded(3)) > 0.5).float()
    layer(x, mask)
    after = cached_tensors(layer)
    assert len(after) == len(before)
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_nvidia_stale_cache_is_not_reproduced():
    """NVIDIA's layer, after a masked call, reuses that call's ratio for mask=None at the same
    shape. Ours, reused across masked and mask=None calls of changing sizes and layouts, matches a
    fresh reference at every call: output, gradients and returned mask (check.compare)."""
    geometry = {"in_channels": IN, "out_channels": OUT, "kernel_size": 3, "padding": 2, "dilation": (1, 2)}
    gen = seeded(5)
    x = torch.randn(2, IN, 8, 8, generator=gen)
    mask = random_mask(MaskLayout.SINGLE, 2, IN, (8, 8), gen, fraction=0.5)
    _, fresh = make_pair(2, geometry)
    _, ref = make_pair(2, geometry)
    ref(x, mask)
    assert not torch.equal(ref(x)[1], fresh(x)[1])  # the bug this test guards against

    ours, _ = make_pair(2, geometry)
    steps = [(8, MaskLayout.SINGLE), (8, MaskLayout.NONE), (10, MaskLayout.NONE)]
    steps += [(8, MaskLayout.SHARED), (8, MaskLayout.NONE), (10, MaskLayout.NONE)]
    for size, layout in steps:
        _, ref = make_pair(2, geometry, ref_multi=reference_multi_channel(layout))  # fresh: its cache cannot be stale
        x = torch.randn(2, IN, size, size, generator=gen)
        mask = random_mask(layout, 2, IN, (size, size), gen, fraction=0.5)
        ours.zero_grad()  # compare() accumulates into .grad, like any backward
        run = run_compare(ours, ref, x, mask, reference_mask(layout, mask, IN))
        run.assert_equivalent(f"size {size}, {layout.value}")


def test_cache_is_bounded_and_stays_correct_after_eviction():
    layer = _layer(legacy=True)
    sizes = [(4 + i % 5, 4 + i // 5) for i in range(3 * _CACHE_SIZE)]
    for size in sizes:
        x = image((1, IN, *size))
        out, mask = layer(x)
        assert len(layer._ratio_cache) <= _CACHE_SIZE
    assert len(layer._ratio_cache) == _CACHE_SIZE  # the bound is reached, not exceeded
    for size in sizes[:3]:  # evicted long ago
        x = image((1, IN, *size))
        out, mask = layer(x)
        _assert_matches(layer, out, mask, x)


# --- Aliasing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("legacy", [False, True])
def test_returned_mask_never_aliases_the_cache(dtype, legacy):
    layer = _layer(legacy=legacy).to(dtype)
    x = image((2, IN, 6, 6), dtype=dtype)
    out, mask = layer(x)
    expected_out, expected_mask = out.clone(), mask.clone()
    cached = {t.untyped_storage().data_ptr() for t in cached_tensors(layer)}
    assert mask.untyped_storage().data_ptr() not in cached
    assert out.untyped_storage().data_ptr() not in cached
    # A user's in-place edits of what was returned cannot corrupt later calls.
    mask.fill_(7)
    out.zero_()
    out2, mask2 = layer(x)
    assert torch.equal(mask2, expected_mask)
    assert torch.equal(out2, expected_out)


def test_multi_channel_returned_mask_without_a_mask_is_read_only():
    layer = _layer(multi_channel=True)
    x = image((2, IN, 6, 6))
    out, mask = layer(x)
    assert mask.shape == out.shape
    expected = mask.clone()
    with pytest.raises(RuntimeError, match="more than one element"):
        mask.add_(1)  # an expanded view of one channel (fill_, which writes one value, is allowed)
    assert torch.equal(layer(x)[1], expected)


# --- Copies and replicas -------------------------------------------------------------------------


def _warm(layer: PConv2d, dtype: torch.dtype = torch.float32) -> None:
    for size in [(5, 6), (6, 6)]:
        layer(image((2, IN, *size), dtype=dtype))
    assert len(layer._ratio_cache) == 2


def _fresh(layer: PConv2d) -> PConv2d:
    """A new layer of ours with ``layer``'s configuration and parameters: nothing cached."""
    fresh = PConv2d(
        *_conv_args(layer),
        dtype=layer.weight.dtype,
        multi_channel=layer.multi_channel,
        legacy_behaviour=layer.legacy_behaviour,
    )
    fresh.load_state_dict(layer.state_dict())
    return fresh


def _storage(layer: nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in cached_tensors(layer)}


def _check_copy(original: PConv2d, clone: PConv2d) -> None:
    assert clone is not original
    assert clone._ratio_cache is not original._ratio_cache
    assert cached_tensors(clone) == []  # no tensors carried over (so none shared); rebuilt on first use
    for size in [(5, 6), (7, 5)]:
        x = image((2, IN, *size))
        out, mask = clone(x)
        _assert_matches(clone, out, mask, x)
        assert torch.equal(out, original(x)[0])
    # Independent afterwards: the copy's calls, with new weights and at a new size, stay out of
    # the original's cache and leave its results alone.
    x = image((2, IN, 5, 6))
    expected = original(x)[0]
    kept = _storage(original)
    with torch.no_grad():
        clone.weight.mul_(2)
    other = image((2, IN, 9, 11))
    assert torch.equal(clone(other)[0], _fresh(clone)(other)[0])
    assert _storage(original) == kept
    out, mask = original(x)
    _assert_matches(original, out, mask, x)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("legacy", [False, True])
def test_deepcopy(legacy):
    layer = _layer(legacy=legacy)
    _warm(layer)
    _check_copy(layer, copy.deepcopy(layer))


def test_deepcopy_of_a_parent_module():
    model = nn.Sequential(_layer())
    _warm(model[0])
    _check_copy(model[0], copy.deepcopy(model)[0])


def test_pickle_round_trip():
    layer = _layer()
    _warm(layer)
    _check_copy(layer, pickle.loads(pickle.dumps(layer)))


def test_torch_save_round_trip():
    layer = _layer()
    _warm(layer)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    _check_copy(layer, torch.load(buffer, weights_only=False))


@pytest.mark.parametrize("multi_channel", [False, True])
def test_to_another_dtype_drops_the_cache(multi_channel):
    layer = _layer(multi_channel=multi_channel)
    _warm(layer)
    layer.to(torch.float64)
    assert layer._ratio_cache == {}
    for size in [(5, 6), (6, 6)]:
        x = image((2, IN, *size), dtype=torch.float64)
        out, mask = layer(x)
        _assert_matches(layer, out, mask, x)
        # What a layer that never held float32 tensors computes, bit for bit.
        fresh_out, fresh_mask = _fresh(layer)(x)
        assert torch.equal(out, fresh_out) and torch.equal(mask, fresh_mask)
    stale = [t.dtype for t in cached_tensors(layer) if t.dtype != torch.float64]
    assert not stale, f"the cache still holds tensors of the old dtype: {stale}"


def _cpu_broadcast(tensors: list[Tensor], devices: list[int], detach: bool = False) -> list[list[Tensor]]:
    """nn.parallel.replicate's broadcast (CUDA only), on CPU: a copy of each tensor per replica,
    differentiable back to the original as the broadcast is."""
    return [[t.detach().clone() if detach else t.clone() for t in tensors] for _ in devices]


def _replicas(module: nn.Module, count: int, monkeypatch: pytest.MonkeyPatch) -> list[nn.Module]:
    """nn.DataParallel's nn.parallel.replicate, with its broadcast done on CPU: the replicas share
    the module's ``__dict__`` (so its cache dict: the property under test) but get their own,
    non-leaf parameters, which backpropagate into the module's."""
    replicate = importlib.import_module("torch.nn.parallel.replicate")
    monkeypatch.setattr(replicate, "_broadcast_coalesced_reshape", _cpu_broadcast)
    return nn.parallel.replicate(module, list(range(count)))


@pytest.mark.parametrize("bias", [True, False])
def test_replicas_share_a_correct_cache(bias, monkeypatch):
    layer = _layer(bias=bias)
    _warm(layer)
    replicas = _replicas(layer, 2, monkeypatch)
    assert all(r._ratio_cache is layer._ratio_cache for r in replicas)
    assert all(r.weight.grad_fn is not None for r in replicas)
    # Interleaved calls, a new size first seen by a replica, then by the module and the other one:
    # the reference's results, and bit for bit those of a layer that was never replicated.
    fresh = _fresh(layer)
    for module, size in [(replicas[0], (5, 6)), (replicas[1], (9, 4)), (layer, (9, 4)), (replicas[0], (9, 4))]:
        x = image((2, IN, *size))
        out, mask = module(x)
        _assert_matches(layer, out, mask, x)
        assert torch.equal(out, fresh(x)[0])
    assert len(layer._ratio_cache) <= _CACHE_SIZE
    # What the replicas cached went into the shared cache, and is a constant: no autograd graph
    # (which would keep the replicas' parameters, and their graphs, alive) and no parameter.
    cached = cached_tensors(layer)
    assert cached
    assert all(not t.requires_grad and t.grad_fn is None for t in cached)
    del replicas
    x = image((2, IN, 9, 4))
    out, mask = layer(x)
    _assert_matches(layer, out, mask, x)
    assert torch.equal(out, fresh(x)[0])
    # Training through two replicas, at two sizes (one cached by the module, one not), reaches the
    # module's parameters, as under DataParallel: the gradients of the sum of both losses.
    layer.double()
    inputs = [image((2, IN, 9, 4), dtype=torch.float64), image((2, IN, 7, 8), seed=2, dtype=torch.float64)]
    expected = [_reference_grads(layer, x) for x in inputs]
    layer(inputs[0])
    layer.zero_grad(set_to_none=True)
    inputs = [x.detach().requires_grad_() for x in inputs]
    replicas = _replicas(layer, 2, monkeypatch)
    sum(replica(x)[0].square().sum() for replica, x in zip(replicas, inputs, strict=True)).backward()
    for x, grads in zip(inputs, expected, strict=True):
        assert relative_error(x.grad, grads[0]) <= 1e-12
    for n, p in enumerate(layer.parameters(), start=1):
        assert relative_error(p.grad, expected[0][n] + expected[1][n]) <= 1e-12


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nn.parallel.replicate needs a CUDA device")
def test_replicate_on_cuda():
    layer = _layer().cuda()
    x = image((2, IN, 6, 7)).cuda()
    expected = layer(x)
    (replica,) = nn.parallel.replicate(layer, devices=[0])
    for module in (replica, layer):
        out, mask = module(x)
        assert torch.equal(out, expected[0]) and torch.equal(mask, expected[1])


# --- No batch tensors on the module --------------------------------------------------------------


def test_no_batch_sized_tensors_are_kept_on_the_module():
    batch = 7
    x = image((batch, IN, 5, 6))
    mask = (torch.rand(batch, 1, 5, 6, generator=seeded(4)) > 0.3).float()

    # The scan finds what the reference keeps: its update mask of the last masked call.
    ref = _fresh_reference(_layer(), x.dtype)
    ref(x, mask)
    assert any(t.shape[:1] == (batch,) for t in tensors_in(vars(ref)))

    for multi_channel in (False, True):
        layer = _layer(multi_channel=multi_channel)
        layer(x)
        layer(x, mask.expand(-1, IN, -1, -1) if multi_channel else mask)
        layer(x[:1], (mask[:1] > 0).squeeze(1))
        layer(x.detach().requires_grad_())[0].sum().backward()
        kept = [tuple(t.shape) for t in tensors_in(vars(layer)) if t.dim() > 0 and t.shape[0] == batch]
        assert kept == [], kept


def test_changing_the_geometry_after_a_call_is_seen():
    """The cache key holds the geometry: a layer whose padding is changed gets a fresh ratio."""
    layer = PConv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 8, 8)
    layer(x)
    layer.padding = (2, 2)
    out, update = layer(x)
    ref = nvidia.PartialConv2d(3, 4, 3, padding=2, return_mask=True)
    ref.load_state_dict(layer.state_dict())
    expected, expected_update = ref(x)
    torch.testing.assert_close(out, expected)
    assert torch.equal(update, expected_update)


# --- Modes, subclasses and meta tensors never reach the cache ------------------------------------


def test_fake_tensor_mode_leaves_the_cache_alone():
    # A forward under FakeTensorMode once left a FakeTensor in the cache, and the next eager
    # call at the same size computed with it: a wrong output and a FakeTensor mask.
    from torch._subclasses.fake_tensor import FakeTensorMode

    layer = _layer()
    x = image((2, IN, 6, 7))
    expected_out, expected_mask = layer(x)
    layer._ratio_cache.clear()
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake_out, _ = layer(x)
    assert type(fake_out) is not Tensor
    assert all(type(t) is Tensor for t in cached_tensors(layer))
    out, mask = layer(x)
    assert type(out) is Tensor and type(mask) is Tensor
    assert torch.equal(out, expected_out) and torch.equal(mask, expected_mask)


def test_meta_inputs_are_not_cached():
    layer = _layer().to("meta")
    out, mask = layer(torch.empty(2, IN, 6, 7, device="meta"))
    assert out.is_meta and mask.shape == (1, 1, *out.shape[2:])
    assert layer._ratio_cache == {}


def test_tensor_subclass_inputs_are_not_cached():
    class Tagged(Tensor):
        pass

    layer = _layer()
    x = image((2, IN, 6, 7))
    expected_out, _ = layer(x)
    layer._ratio_cache.clear()
    out, _ = layer(x.as_subclass(Tagged))
    assert layer._ratio_cache == {}
    assert torch.equal(out.as_subclass(Tensor), expected_out)


@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
def test_whole_windows_with_a_ratio_of_one_run_the_plain_convolution(bias: bool) -> None:
    """mask=None, no padding, float32: window / (window + 1e-8) rounds to 1, so the layer is its
    convolution (NVIDIA's multiplies by exactly 1); float64's ratio is not 1, and legacy_behaviour
    with a bias keeps NVIDIA's (conv - b) · 1 + b."""
    from torch_pconv import PartialConv2d
    from torch_pconv.reference import PartialConv2d as Reference

    x = image((2, 8, 6, 6)).requires_grad_()
    for legacy in (False, True):
        torch.manual_seed(0)
        ours = PartialConv2d(8, 4, 1, bias=bias, legacy_behaviour=legacy)
        ref = Reference(8, 4, 1, bias=bias)
        ref.load_state_dict(ours.state_dict(), strict=False)
        out = ours(x)
        plain = not (legacy and bias)
        assert (type(out.grad_fn).__name__ == "ConvolutionBackward0") is plain
        expected = ref(x)
        if not bias or legacy:
            assert torch.equal(out, expected)
        else:
            torch.testing.assert_close(
                out, expected, rtol=0, atol=4 * torch.finfo(torch.float32).eps * expected.abs().max().item()
            )
        torch.autograd.grad(out.sum(), [x, *ours.parameters()])
    ours64 = PartialConv2d(8, 4, 1, bias=bias).double()
    assert type(ours64(x.double()).grad_fn).__name__ != "ConvolutionBackward0"  # its ratio is 1 - 1e-8 / 8
