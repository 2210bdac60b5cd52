"""The less common modes a PyTorch user reaches for, each against NVIDIA's layer in float64: forward
and nested AD with bool and integer masks, parametrized weights, an input batch of 1 under a batch
of masks, and torch-pconv 0.1.1's chained setters (issue 15; each case here gave a wrong answer
or an error once)."""

from __future__ import annotations

import pytest
import torch
from helpers import holes, image, seeded
from torch import nn
from torch.func import functional_call, jacfwd, jacrev, jvp

from torch_pconv import PartialConv2d, PConv2d
from torch_pconv import reference as nvidia

F64 = torch.float64

# The paths the layer takes: the Function (zeros padding), and its plain ops (other padding
# modes; 'same' with an even window, whose padding is uneven).
GEOMETRIES = {
    "zeros": {"kernel_size": 3, "padding": 1},
    "reflect": {"kernel_size": 3, "padding": 1, "padding_mode": "reflect"},
    "circular": {"kernel_size": 3, "padding": 1, "padding_mode": "circular"},
    "same-even": {"kernel_size": 2, "padding": "same"},
}
MASK_DTYPES = [torch.bool, torch.uint8, torch.int64, F64]


def _pair(geometry: str, **flags: bool) -> tuple[nn.Module, nn.Module]:
    ours = PartialConv2d(3, 4, **GEOMETRIES[geometry], **flags).double()
    ref = nvidia.PartialConv2d(3, 4, **GEOMETRIES[geometry], **flags).double()
    with torch.no_grad():
        ours.weight.normal_(generator=seeded(3))
        ours.bias.normal_(generator=seeded(4))
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    assert want.abs().max() > 0, "a case whose expected value is 0 proves nothing"
    error = (got - want).abs().max().item()
    assert error <= 1e-12 * want.abs().max().item(), f"max error {error:.3g} against {want.abs().max().item():.3g}"


def _mask(dtype: torch.dtype, shape: tuple[int, ...] = (2, 1, 6, 6)) -> torch.Tensor:
    mask = holes(shape, seed=5, dtype=F64)
    return (mask * 7).to(dtype) if dtype in (torch.uint8, torch.int64) else mask.to(dtype)  # nonzero is valid


@pytest.mark.parametrize("no_grad", [False, True], ids=["grad", "no_grad"])
@pytest.mark.parametrize("mask_dtype", MASK_DTYPES, ids=str)
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_jvp_with_any_mask_dtype(geometry, mask_dtype, no_grad):
    ours, ref = _pair(geometry)
    x, tangent = image((2, 3, 6, 6), dtype=F64), image((2, 3, 6, 6), seed=9, dtype=F64)
    mask = _mask(mask_dtype)
    expected = jvp(lambda v: ref(v, (mask != 0).double()), (x,), (tangent,))
    with torch.set_grad_enabled(not no_grad):
        got = jvp(lambda v: ours(v, mask), (x,), (tangent,))
    _close(got[0], expected[0])
    _close(got[1], expected[1])


@pytest.mark.parametrize("no_grad", [False, True], ids=["grad", "no_grad"])
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_forward_ad_dual_tensors(geometry, no_grad):
    import torch.autograd.forward_ad as fwad

    ours, ref = _pair(geometry)
    x, tangent, mask = image((2, 3, 6, 6), dtype=F64), image((2, 3, 6, 6), seed=9, dtype=F64), _mask(torch.bool)
    tangents = []
    for layer, m in ((ours, mask), (ref, mask.double())):
        with fwad.dual_level(), torch.set_grad_enabled(not no_grad):
            tangents.append(fwad.unpack_dual(layer(fwad.make_dual(x, tangent), m)).tangent)
    _close(tangents[0], tangents[1])


def test_forward_ad_in_the_weight_without_grad():
    import torch.autograd.forward_ad as fwad

    ours, ref = _pair("zeros")
    x, mask = image((2, 3, 6, 6), dtype=F64), _mask(torch.bool)
    d_weight = torch.randn(ours.weight.shape, generator=seeded(6), dtype=F64)
    tangents = []
    for layer, m in ((ours, mask), (ref, mask.double())):
        with fwad.dual_level(), torch.no_grad():
            weight = fwad.make_dual(layer.weight.detach(), d_weight)
            out = functional_call(layer, {"weight": weight, "bias": layer.bias.detach()}, (x, m))
            tangents.append(fwad.unpack_dual(out).tangent)
    _close(tangents[0], tangents[1])


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_a_nan_tangent_under_a_hole_stays_there(geometry):
    ours, ref = _pair(geometry)
    x, tangent, mask = image((2, 3, 6, 6), dtype=F64), image((2, 3, 6, 6), seed=9, dtype=F64), _mask(torch.bool)
    expected = jvp(lambda v: ref(v, mask.double()), (x,), (tangent,))[1]
    tangent = tangent.masked_fill(~mask, float("nan"))
    _close(jvp(lambda v: ours(v, mask), (x,), (tangent,))[1], expected)


def _functional(layer: nn.Module, mask: torch.Tensor | None):
    def call(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if isinstance(layer, nvidia.PartialConv2d):
            # NVIDIA's layer keeps its mask tensors (and its ones kernel, cast to the input) on the
            # module: under a transform they would escape it, so it starts afresh at every call.
            layer.last_size = (None,) * 4
            layer.weight_maskUpdater = torch.ones(layer.weight_maskUpdater.shape)
        return functional_call(layer, {"weight": weight, "bias": layer.bias}, (x, mask))

    return call


@pytest.mark.parametrize("masked", [True, False], ids=["mask", "no_mask"])
@pytest.mark.parametrize("geometry", ["zeros", "reflect"])
def test_nested_derivatives_in_input_and_weight(geometry, masked):
    """The mixed second derivatives: forward over forward (which torch.func cannot take through an
    autograd.Function's jvp rule), forward over reverse, reverse over forward."""
    ours, ref = _pair(geometry)
    x, mask = image((1, 3, 5, 5), dtype=F64), _mask(torch.bool, (1, 1, 5, 5)) if masked else None
    weight = ours.weight.detach().clone()
    d_weight = torch.randn(weight.shape, generator=seeded(6), dtype=F64)
    f_ours, f_ref = _functional(ours, mask), _functional(ref, None if mask is None else mask.double())

    def mixed(f, outer):
        return outer(lambda v: jvp(lambda w: f(v, w), (weight,), (d_weight,))[1].square().sum())(x)

    def hessian(f):  # forward over reverse: torch.func's Hessian
        return jacfwd(jacrev(lambda v: f(v, weight).square().sum()))(x)

    for outer in (jacfwd, jacrev):
        _close(mixed(f_ours, outer), mixed(f_ref, outer))
    _close(hessian(f_ours), hessian(f_ref))


def _reverse_mode_jvp(f, mask: torch.Tensor, tangent: torch.Tensor) -> torch.Tensor:
    """J · tangent of ``f`` at ``mask``, from the reverse-mode Jacobian: NVIDIA's derivative in the
    mask is that of ``input * mask`` (its ratio is computed without grad, which forward-mode AD
    would not honour: its own jvp in the mask differs from its own vjp)."""
    jacobian = jacrev(f)(mask)
    return (jacobian * tangent).sum(dim=tuple(range(-mask.dim(), 0)))


@pytest.mark.parametrize("geometry", ["zeros", "reflect"])
@pytest.mark.parametrize(("multi_channel", "mask_shape"), [(False, (2, 1, 5, 5)), (True, (2, 3, 5, 5))])
def test_the_tangent_in_a_float_mask_is_the_derivative_of_input_times_mask(geometry, multi_channel, mask_shape):
    import torch.autograd.forward_ad as fwad

    ours, ref = _pair(geometry, multi_channel=multi_channel)
    x, mask = image((2, 3, 5, 5), dtype=F64), _mask(F64, mask_shape)
    tangent = torch.randn(mask.shape, generator=seeded(8), dtype=F64)
    expected = _reverse_mode_jvp(lambda m: ref(x, m), mask, tangent)
    _close(_reverse_mode_jvp(lambda m: ours(x, m), mask, tangent), expected)
    _close(jvp(lambda m: ours(x, m), (mask,), (tangent,))[1], expected)
    with fwad.dual_level():
        _close(fwad.unpack_dual(ours(x, fwad.make_dual(mask, tangent))).tangent, expected)


# --- A parametrized weight ------------------------------------------------------------------------


class _Counted(nn.Module):
    """A parametrization that counts its runs (and scales, so that a wrong count shows in values)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return weight * 0.5


@pytest.mark.parametrize("geometry", ["zeros", "reflect"])
@pytest.mark.parametrize("masked", [True, False], ids=["mask", "no_mask"])
@pytest.mark.parametrize("cls", [PConv2d, PartialConv2d])
def test_a_parametrization_runs_once_per_forward(cls, masked, geometry):
    from torch.nn.utils import parametrize

    layer = cls(3, 4, **GEOMETRIES[geometry])
    parametrize.register_parametrization(layer, "weight", _Counted())
    parametrize.register_parametrization(layer, "bias", _Counted())
    counters = [p[0] for p in layer.parametrizations.values()]
    for counter in counters:
        counter.calls = 0  # registering runs it once, to check it
    x, mask = image((2, 3, 6, 6)), holes((2, 1, 6, 6)) if masked else None
    layer(x, mask)
    assert [counter.calls for counter in counters] == [1, 1]


def test_spectral_norm_steps_as_nvidias_layer_does():
    """One power iteration per training step: the output and the gradient of the original weight
    agree with NVIDIA's layer under the same parametrization, step after step."""
    from torch.nn.utils.parametrizations import spectral_norm

    ours, ref = _pair("zeros")
    ours, ref = spectral_norm(ours), spectral_norm(ref)
    ref.load_state_dict(ours.state_dict())
    x, mask = image((2, 3, 6, 6), dtype=F64), _mask(F64)
    for _ in range(3):
        outputs = [layer(x, mask) for layer in (ours, ref)]
        _close(outputs[0], outputs[1])
        for output in outputs:
            output.square().sum().backward()
        originals = [layer.parametrizations.weight.original for layer in (ours, ref)]
        _close(originals[0].grad, originals[1].grad)
        for original in originals:
            original.grad = None


# --- Batch broadcast and the 0.1.1 setters --------------------------------------------------------


@pytest.mark.parametrize("geometry", ["zeros", "reflect"])
@pytest.mark.parametrize(("multi_channel", "mask_shape"), [(False, (3, 1, 6, 6)), (True, (3, 3, 6, 6))])
def test_an_input_batch_of_one_broadcasts_over_the_masks(geometry, multi_channel, mask_shape):
    ours, ref = _pair(geometry, multi_channel=multi_channel, return_mask=True)
    x, mask = image((1, 3, 6, 6), dtype=F64).requires_grad_(), _mask(F64, mask_shape)
    out, update = ours(x, mask)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    expected, expected_update = ref(x, mask)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
    assert out.shape == (3, 4, 6, 6)
    _close(out, expected)
    _close(update, expected_update)
    _close(grad, expected_grad)


def test_an_empty_input_batch_under_a_mask_of_batch_one():
    out, update = PConv2d(3, 4, 3, padding=1)(image((0, 3, 6, 6)), holes((1, 1, 6, 6)))
    assert out.shape == (0, 4, 6, 6) and update.shape == (1, 1, 6, 6)


def test_an_input_batch_of_one_broadcasts_over_a_3d_mask():
    layer = PConv2d(3, 4, 3, padding=1)
    out, update = layer(image((1, 3, 6, 6)), holes((3, 6, 6)))
    assert out.shape == (3, 4, 6, 6) and update.shape == (3, 6, 6)


def test_the_setters_chain_as_in_torch_pconv_0_1_1():
    layer = PConv2d(3, 4, 3)
    weight, bias = torch.ones(4, 3, 3, 3), torch.full((1, 4, 1, 1), 2.0)
    assert layer.set_weight(weight).set_bias(bias) is layer
    assert torch.equal(layer.weight, weight) and torch.equal(layer.bias, bias.view(4))


# --- Differences that stay, by design (doc/migration.md) ------------------------------------------


def test_an_inference_tensor_as_a_training_input_raises_as_with_nn_conv2d():
    layer, conv = PartialConv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
    with torch.inference_mode():
        x, mask = image((1, 3, 6, 6)), holes((1, 1, 6, 6))
    for call in (lambda: layer(x, mask), lambda: layer(x), lambda: conv(x)):
        with pytest.raises(RuntimeError, match="Inference tensors cannot be saved for backward"):
            call()


def test_an_in_place_edit_of_the_mask_before_backward_raises():
    layer = PConv2d(3, 4, 3, padding=1)
    x, mask = image((2, 3, 6, 6)).requires_grad_(), holes((2, 1, 6, 6))
    out, _ = layer(x, mask)
    mask.zero_()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.parametrize("setter", ["set_weight", "set_bias"])
def test_the_setters_name_a_value_that_is_not_a_tensor(setter):
    from torch_pconv import PConvError

    with pytest.raises(PConvError, match=r"expected a torch\.Tensor, got NoneType"):
        getattr(PConv2d(3, 4, 3), setter)(None)
