"""What autograd keeps and checks through PartialConvFunction, and every autograd feature a layer
must support: in-place checks, the caller's saved-tensor hooks (save_on_cpu, checkpointing),
torch.func (grad, vmap, jacrev, jacfwd), forward-mode AD, double backward and autocast."""

from __future__ import annotations

import pytest
import torch
from helpers import random_mask, seeded
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from torch_pconv import PConv2d
from torch_pconv import pconv as pconv_module
from torch_pconv import reference as ref_module
from torch_pconv._function import Geometry, PartialConvFunction, partial_conv
from torch_pconv._masks import MaskLayout

# torch.func and checkpointing call the deprecated torch.jit.script internally.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

TOL = {"rtol": 1e-12, "atol": 1e-12}


def _case(seed: int = 0, requires_grad: bool = True, layout: MaskLayout = MaskLayout.SINGLE):
    torch.manual_seed(seed)
    gen = seeded(seed)
    layer = PConv2d(3, 4, 3, padding=1, multi_channel=layout is MaskLayout.MULTI, dtype=torch.float64)
    x = torch.randn((2, 3, 8, 8), generator=gen, dtype=torch.float64).requires_grad_(requires_grad)
    mask = random_mask(layout, 2, 3, (8, 8), gen, dtype=torch.float64)
    return layer, x, mask


def _reference(layer: PConv2d) -> ref_module.PartialConv2d:
    ref = ref_module.PartialConv2d(
        3, 4, 3, padding=1, multi_channel=layer.multi_channel, return_mask=True, dtype=torch.float64
    )
    ref.load_state_dict(layer.state_dict())
    return ref


def _grads(module, x: Tensor, mask: Tensor | None) -> list[Tensor]:
    """Input, weight and bias gradients of a fixed scalar of the output."""
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    out = module(x, mask)[0]
    out.mul(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return [out.detach(), x.grad, module.weight.grad, module.bias.grad]


def _saved(layer: PConv2d, x: Tensor, mask: Tensor | None) -> list[Tensor]:
    """Every tensor autograd saves for the layer's backward (through a recording hook)."""
    saved: list[Tensor] = []

    def pack(t: Tensor) -> Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x, mask)
    return saved


def test_the_layer_runs_through_the_function():
    layer, x, mask = _case()
    out, _ = layer(x, mask)
    assert type(out.grad_fn).__name__ == "PartialConvFunctionBackward"


def test_small_inputs_take_autograds_own_ops(monkeypatch):
    """Below pconv._FUNCTION_FROM input entries (the suites set it to 0), plain ops: the same values."""
    layer, x, mask = _case()
    expected, _ = layer(x, mask)
    monkeypatch.setattr(pconv_module, "_FUNCTION_FROM", x.numel() + 1)
    out, _ = layer(x, mask)
    assert type(out.grad_fn).__name__ != "PartialConvFunctionBackward"
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    monkeypatch.setattr(pconv_module, "_FUNCTION_FROM", x.numel())
    assert type(layer(x, mask)[0].grad_fn).__name__ == "PartialConvFunctionBackward"


@pytest.mark.parametrize(
    "layout", [MaskLayout.SINGLE, MaskLayout.MULTI, MaskLayout.SHARED], ids=lambda layout: layout.value
)
def test_saves_the_input_and_small_tensors_never_the_masked_input(layout):
    layer, x, mask = _case(layout=layout)
    saved = _saved(layer, x, mask)
    big = [t for t in saved if t.numel() >= x.numel()]
    assert [t.data_ptr() for t in big] == [x.data_ptr()] or layout is MaskLayout.MULTI
    if layout is MaskLayout.MULTI:  # the caller's own (B, C_in, H, W) mask is saved, not a copy of it
        assert sorted(t.data_ptr() for t in big) == sorted([x.data_ptr(), mask.data_ptr()])
    small = [t for t in saved if t.numel() < x.numel()]
    assert len(saved) == 5 and all(t.shape[1] == 1 or t is not None for t in small)


def test_without_input_grad_the_input_gradient_is_skipped():
    layer, x, mask = _case(requires_grad=False)
    out, _ = layer(x, mask)
    out.sum().backward()
    assert x.grad is None and layer.weight.grad is not None


@pytest.mark.parametrize("edited", ["weight", "mask", "input"])
def test_in_place_edit_before_backward_raises(edited):
    layer, x, mask = _case(requires_grad=edited != "mask")
    y = x * 1  # a non-leaf, which may be edited in place
    out, _ = layer(y, mask)
    with torch.no_grad():
        {"weight": layer.weight, "mask": mask, "input": y}[edited].mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_editing_the_returned_mask_changes_no_gradient():
    layer, x, mask = _case()
    expected = _grads(layer, x, mask)
    layer.zero_grad()
    xi = x.detach().clone().requires_grad_()
    out, update = layer(xi, mask)
    update.fill_(7)
    out.mul(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    for a, b in zip([out.detach(), xi.grad, layer.weight.grad, layer.bias.grad], expected, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "layout", [MaskLayout.SINGLE, MaskLayout.MULTI, MaskLayout.SHARED], ids=lambda layout: layout.value
)
@pytest.mark.parametrize("masked", [True, False])
def test_the_function_and_the_composite_agree(layout, masked, monkeypatch):
    """Two forwards: the Function (eager training) and the plain ops (compilers, tracers)."""
    layer, x, mask = _case(layout=layout)
    mask = mask if masked else None
    ours = _grads(layer, x, mask)
    monkeypatch.setattr(pconv_module, "compiling_or_tracing", lambda: True)
    composite = _grads(layer, x, mask)
    for a, b in zip(ours, composite, strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_the_function_alone_matches_autograd_of_the_composite():
    gen = seeded(5)
    x = torch.randn(2, 3, 7, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(2, 3, 7, 6, generator=gen, dtype=torch.float64) * (torch.rand(2, 3, 7, 6, generator=gen) > 0.3)
    geometry = Geometry((2, 1), (1, 0), (1, 2), 1)
    ratio = torch.rand(2, 1, 4, 4, generator=gen, dtype=torch.float64) * 9
    update = torch.rand(2, 1, 4, 4, generator=gen, dtype=torch.float64)  # fractional: the general case
    for legacy in (False, True):
        for bias in (b, None):
            args = (x, w, bias, mask, ratio, update)
            fn = PartialConvFunction.apply(*args, geometry, legacy)
            plain = partial_conv(*args, geometry.conv, legacy)
            torch.testing.assert_close(fn, plain, **TOL)
            leaves = [t for t in (x, w, bias) if t is not None]
            grad = torch.randn(fn.shape, generator=gen, dtype=torch.float64)
            for a, e in zip(
                torch.autograd.grad(fn, leaves, grad), torch.autograd.grad(plain, leaves, grad), strict=True
            ):
                torch.testing.assert_close(a, e, **TOL)


# --- The caller's saved-tensor hooks ------------------------------------------------------------


def test_save_on_cpu_keeps_the_input_not_a_masked_copy():
    layer, x, mask = _case()
    ref = _reference(layer)
    # Bytes that pass through the caller's hooks: ours the input, the weight and one-channel
    # tensors; NVIDIA's a masked copy of the input besides.
    ours = sum(t.numel() * t.element_size() for t in _saved(layer, x, mask))
    theirs = sum(t.numel() * t.element_size() for t in _saved(ref, x, mask))
    x_bytes = x.numel() * x.element_size()
    assert ours <= x_bytes + 3 * mask.numel() * mask.element_size() + layer.weight.numel() * 8
    assert theirs >= 2 * x_bytes
    expected = _grads(layer, x, mask)
    with torch.autograd.graph.save_on_cpu():
        got = _grads(layer, x, mask)
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_activation_checkpointing_matches(use_reentrant):
    layer, x, mask = _case()
    second = PConv2d(4, 2, 3, padding=1, dtype=torch.float64)

    def block(x):
        out, update = layer(x, mask)
        return second(torch.relu(out), update)[0]

    block(x).sum().backward()
    expected = [t.grad.clone() for t in (x, layer.weight, second.weight)]
    for t in (x, layer.weight, second.weight):
        t.grad = None
    checkpoint(block, x, use_reentrant=use_reentrant).sum().backward()
    for t, e in zip((x, layer.weight, second.weight), expected, strict=True):
        torch.testing.assert_close(t.grad, e, rtol=0, atol=1e-12)


# --- torch.func and forward-mode AD --------------------------------------------------------------


def _functional(module, mask):
    def f(params, x):
        out = torch.func.functional_call(module, params, (x, mask))
        return out[0] if isinstance(out, tuple) else out

    return f


@pytest.mark.parametrize("layout", [MaskLayout.SINGLE, MaskLayout.MULTI], ids=lambda layout: layout.value)
def test_torch_func_grad_matches_the_reference(layout):
    layer, x, mask = _case(layout=layout)
    ref = _reference(layer)

    def loss(module):
        f = _functional(module, mask)
        return lambda params, x: f(params, x).square().sum()

    ours = torch.func.grad(loss(layer), argnums=(0, 1))(dict(layer.named_parameters()), x.detach())
    theirs = torch.func.grad(loss(ref), argnums=(0, 1))(dict(ref.named_parameters()), x.detach())
    for name in ours[0]:
        torch.testing.assert_close(ours[0][name], theirs[0][name], **TOL)
    torch.testing.assert_close(ours[1], theirs[1], **TOL)


def test_vmap_matches_a_loop():
    layer, x, mask = _case()
    params = {k: v.detach() for k, v in layer.named_parameters()}
    f = _functional(layer, mask)
    inputs = torch.stack([x.detach(), 2 * x.detach().flip(-1)])  # two batches of inputs
    batched = torch.func.vmap(f, in_dims=(None, 0))(params, inputs)
    looped = torch.stack([f(params, inputs[0]), f(params, inputs[1])])
    torch.testing.assert_close(batched, looped, **TOL)


@pytest.mark.parametrize("transform", ["jacrev", "jacfwd"])
def test_jacobians_match_the_reference(transform):
    layer, x, mask = _case()
    ref = _reference(layer)
    x = x.detach()[:1, :, :5, :5]
    mask = mask[:1, :, :5, :5]
    jac = getattr(torch.func, transform)
    ours = jac(_functional(layer, mask), argnums=(0, 1))(dict(layer.named_parameters()), x)
    theirs = jac(_functional(ref, mask), argnums=(0, 1))(dict(ref.named_parameters()), x)
    for name in ours[0]:
        torch.testing.assert_close(ours[0][name], theirs[0][name], **TOL)
    torch.testing.assert_close(ours[1], theirs[1], **TOL)


@pytest.mark.parametrize("tangents", ["input", "weight", "both"])
def test_forward_mode_ad_matches_the_reference(tangents):
    import torch.autograd.forward_ad as fwAD

    layer, x, mask = _case()
    ref = _reference(layer)
    gen = seeded(9)
    dx = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    dw = torch.randn(layer.weight.shape, generator=gen, dtype=x.dtype)
    results = []
    for module in (layer, ref):
        params = {k: v.detach() for k, v in module.named_parameters()}
        with fwAD.dual_level():
            xi = fwAD.make_dual(x.detach(), dx) if tangents != "weight" else x.detach()
            if tangents != "input":
                params["weight"] = fwAD.make_dual(params["weight"], dw)
            out = torch.func.functional_call(module, params, (xi, mask))[0]
            results.append(fwAD.unpack_dual(out).tangent)
    torch.testing.assert_close(results[0], results[1], **TOL)


# --- Double backward ----------------------------------------------------------------------------


def test_a_gradient_penalty_matches_the_reference():
    """loss = sum(out) + |d sum(out²) / d input|², whose gradient goes through the backward."""
    layer, x, mask = _case()
    ref = _reference(layer)
    grads = []
    for module in (layer, ref):
        module.zero_grad(set_to_none=True)
        xi = x.detach().clone().requires_grad_()
        out = module(xi, mask)[0]
        (dx,) = torch.autograd.grad(out.square().sum(), xi, create_graph=True)
        (out.sum() + dx.square().sum()).backward()
        grads.append([xi.grad, module.weight.grad, module.bias.grad])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, **TOL)


# --- Autocast -----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", [MaskLayout.SINGLE, MaskLayout.MULTI], ids=lambda layout: layout.value)
def test_under_autocast_the_function_behaves_as_the_composite(layout, monkeypatch):
    layer, x, mask = _case(layout=layout)
    layer = layer.float()
    x, mask = x.float(), mask.float()
    results = []
    for composite in (False, True):
        monkeypatch.setattr(pconv_module, "compiling_or_tracing", lambda c=composite: c)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = _grads(layer, x, mask)
        results.append(got)
    assert results[0][0].dtype == torch.bfloat16
    for a, b in zip(*results, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)
