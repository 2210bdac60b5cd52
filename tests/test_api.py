"""The public API: nn.ConvNd subclasses, constructor signature, return types, state dicts, and
torch-pconv 0.1.1 compatibility."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from torch import nn

from torch_pconv import PartialConv1d, PartialConv2d, PartialConv3d, PConv1d, PConv2d, PConv3d, PConvError
from torch_pconv import reference as nvidia

FLAGS = ("multi_channel", "return_mask", "legacy_behaviour")


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _image(shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=_seeded(seed), dtype=dtype)


def _holes(shape: tuple[int, ...], seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A 0/1 mask with about 40 % holes."""
    return (torch.rand(shape, generator=_seeded(seed)) > 0.4).to(dtype)


def _randomize(layer: nn.Module, seed: int = 2) -> nn.Module:
    """Deterministic weights (and a non-zero bias, so bias handling is exercised)."""
    gen = _seeded(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return layer


def _normwise(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = ours.detach().double(), ref.detach().double()
    return float((ours - ref).abs().max() / ref.abs().max())


# --- Class hierarchy and constructor -------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "base"),
    [
        (PConv1d, nn.Conv1d),
        (PConv2d, nn.Conv2d),
        (PConv3d, nn.Conv3d),
        (PartialConv1d, nn.Conv1d),
        (PartialConv2d, nn.Conv2d),
        (PartialConv3d, nn.Conv3d),
    ],
)
def test_is_a_subclass_of_the_torch_convolution(cls, base):
    assert issubclass(cls, base)
    assert isinstance(cls(2, 3, 3), base)


@pytest.mark.parametrize(("cls", "base"), [(PConv1d, nn.Conv1d), (PConv2d, nn.Conv2d), (PConv3d, nn.Conv3d)])
def test_signature_is_the_torch_convolution_plus_keyword_only_flags(cls, base):
    ours = list(inspect.signature(cls.__init__).parameters.values())
    theirs = list(inspect.signature(base.__init__).parameters.values())
    assert [(p.name, p.kind, p.default) for p in ours[: len(theirs)]] == [(p.name, p.kind, p.default) for p in theirs]
    extra = ours[len(theirs) :]
    assert [(p.name, p.kind, p.default) for p in extra] == [
        ("multi_channel", inspect.Parameter.KEYWORD_ONLY, False),
        ("return_mask", inspect.Parameter.KEYWORD_ONLY, True),
        ("legacy_behaviour", inspect.Parameter.KEYWORD_ONLY, False),
    ]


@pytest.mark.parametrize("cls", [PConv2d, PartialConv2d])
def test_all_conv2d_arguments_are_accepted_positionally(cls):
    layer = cls(4, 6, (3, 5), 2, (1, 2), (1, 2), 2, False, "reflect", "cpu", torch.float64)
    conv = nn.Conv2d(4, 6, (3, 5), 2, (1, 2), (1, 2), 2, False, "reflect", "cpu", torch.float64)
    for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
        assert getattr(layer, name) == getattr(conv, name), name
    assert layer.padding_mode == "reflect"
    assert layer.bias is None
    assert layer.weight.dtype == torch.float64
    assert layer.weight.shape == conv.weight.shape


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_string_paddings(padding):
    layer = PConv2d(2, 3, 3, padding=padding)
    out, mask = layer(_image((1, 2, 7, 9)), _holes((1, 7, 9)))
    expected = (7, 9) if padding == "same" else (5, 7)
    assert out.shape == (1, 3, *expected)
    assert mask.shape == (1, *expected)


@pytest.mark.parametrize("cls", [PConv2d, PartialConv2d])
def test_flags_cannot_be_passed_positionally(cls):
    with pytest.raises(TypeError):
        cls(2, 3, 3, 1, 0, 1, 1, True, "zeros", None, None, True)


@pytest.mark.parametrize("cls", [PConv1d, PConv2d, PConv3d, PartialConv2d])
@pytest.mark.parametrize("flag", FLAGS)
@pytest.mark.parametrize(
    "value", [1, 0, 1.0, 0.0, None, "yes", np.True_, np.False_, torch.tensor(True), torch.tensor(0)]
)
def test_flags_are_read_with_bool(cls, flag, value):
    # NVIDIA's layer takes any truthy or falsy value (multi_channel=1, return_mask=None, ...).
    layer = cls(2, 3, 3, **{flag: value})
    assert getattr(layer, flag) is bool(value)


def test_kernel_size_is_required():
    # As in nn.Conv2d (torch-pconv 0.1.1 defaulted it to 1).
    with pytest.raises(TypeError):
        PConv2d(2, 3)


# --- Return types --------------------------------------------------------------------------------


def test_pconv2d_returns_output_and_mask_by_default():
    result = PConv2d(2, 3, 3, padding=1)(_image((2, 2, 6, 6)), _holes((2, 1, 6, 6)))
    assert isinstance(result, tuple) and len(result) == 2
    out, mask = result
    assert out.shape == (2, 3, 6, 6)
    assert mask.shape == (2, 1, 6, 6)


@pytest.mark.parametrize("mask", [None, "single"])
def test_partialconv2d_returns_the_output_alone_like_nvidia(mask):
    x = _image((2, 2, 6, 6))
    mask_in = None if mask is None else _holes((2, 1, 6, 6))
    ours = PartialConv2d(2, 3, 3, padding=1)(x, mask_in)
    ref = nvidia.PartialConv2d(2, 3, 3, padding=1)(x, mask_in)
    assert type(ours) is type(ref) is torch.Tensor
    assert ours.shape == ref.shape


@pytest.mark.parametrize("multi_channel", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_partialconv2d_with_return_mask_matches_nvidia_shapes(multi_channel, masked):
    x = _image((2, 3, 6, 6))
    mask = _holes((2, 3 if multi_channel else 1, 6, 6)) if masked else None
    kwargs = {"padding": 1, "multi_channel": multi_channel, "return_mask": True}
    out, update = PartialConv2d(3, 4, 3, **kwargs)(x, mask)
    ref_out, ref_update = nvidia.PartialConv2d(3, 4, 3, **kwargs)(x, mask)
    assert out.shape == ref_out.shape
    assert update.shape == ref_update.shape
    assert torch.equal(update, ref_update)


@pytest.mark.parametrize("cls", [PartialConv1d, PartialConv3d])
def test_other_partialconv_classes_return_the_output_alone(cls):
    dims = 1 if cls is PartialConv1d else 3
    out = cls(2, 3, 3, padding=1)(_image((1, 2, *(5,) * dims)))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 3, *(5,) * dims)


# --- Parameters and state dicts ------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("multi_channel", [False, True])
def test_parameters_and_state_dict_are_those_of_conv2d(bias, multi_channel):
    layer = PConv2d(3, 4, 3, bias=bias, multi_channel=multi_channel)
    conv = nn.Conv2d(3, 4, 3, bias=bias)
    assert [n for n, _ in layer.named_parameters()] == [n for n, _ in conv.named_parameters()]
    assert list(layer.state_dict()) == list(conv.state_dict())
    assert [n for n, _ in layer.named_buffers()] == []
    # A forward pass adds no state either (the mask=None cache is not state).
    layer(_image((1, 3, 5, 5)))
    layer(_image((1, 3, 5, 5)), _holes((1, 5, 5)))
    assert list(layer.state_dict()) == list(conv.state_dict())


@pytest.mark.parametrize("multi_channel", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_nvidia_state_dict_loads_strictly_and_gives_identical_outputs(multi_channel, bias):
    ref = _randomize(nvidia.PartialConv2d(3, 4, 3, padding=1, bias=bias, multi_channel=multi_channel))
    ours = PartialConv2d(3, 4, 3, padding=1, bias=bias, multi_channel=multi_channel, legacy_behaviour=True)
    result = ours.load_state_dict(ref.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = _image((2, 3, 7, 7))
    mask = _holes((2, 3 if multi_channel else 1, 7, 7))
    # legacy_behaviour=True follows NVIDIA's float32 arithmetic bit for bit.
    assert torch.equal(ours(x, mask), ref(x, mask))
    # The default path differs from it by rounding only.
    default = PartialConv2d(3, 4, 3, padding=1, bias=bias, multi_channel=multi_channel)
    default.load_state_dict(ref.state_dict(), strict=True)
    assert _normwise(default(x, mask), ref(x, mask)) < 1e-6


def test_nvidia_state_dict_of_a_3d_layer_loads_strictly():
    ref = _randomize(nvidia.PartialConv3d(2, 3, 3, padding=1))
    ours = PartialConv3d(2, 3, 3, padding=1, legacy_behaviour=True)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x, mask = _image((1, 2, 4, 5, 6)), _holes((1, 1, 4, 5, 6))
    assert torch.equal(ours(x, mask), ref(x, mask))


def _state_dict_0_1_1(weight: torch.Tensor, bias: torch.Tensor | None, prefix: str = "") -> dict[str, torch.Tensor]:
    """What torch-pconv 0.1.1 saved: the weight in a sub-convolution, the ones kernel of its mask
    convolution as a parameter, and the bias as (1, out, 1, 1)."""
    state = {
        prefix + "regular_conv.weight": weight.clone(),
        prefix + "mask_conv.weight": torch.ones(1, 1, *weight.shape[2:]),
    }
    if bias is not None:
        state[prefix + "bias"] = bias.reshape(1, -1, 1, 1).clone()
    return state


@pytest.mark.parametrize("bias", [True, False])
def test_torch_pconv_0_1_1_state_dict_loads(bias):
    gen = _seeded(3)
    weight, b = torch.randn(4, 3, 3, 3, generator=gen), torch.randn(4, generator=gen)
    layer = PConv2d(3, 4, 3, bias=bias)
    result = layer.load_state_dict(_state_dict_0_1_1(weight, b if bias else None), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(layer.weight, weight)
    if bias:
        assert layer.bias.shape == (4,)
        assert torch.equal(layer.bias, b)
    assert list(layer.state_dict()) == (["weight", "bias"] if bias else ["weight"])


def test_torch_pconv_0_1_1_state_dict_loads_inside_a_parent_module():
    gen = _seeded(4)
    w0, b0 = torch.randn(4, 3, 3, 3, generator=gen), torch.randn(4, generator=gen)
    w1, b1 = torch.randn(2, 4, 1, 1, generator=gen), torch.randn(2, generator=gen)
    model = nn.Sequential(PConv2d(3, 4, 3), nn.Sequential(PConv2d(4, 2, 1)))
    state = {**_state_dict_0_1_1(w0, b0, prefix="0."), **_state_dict_0_1_1(w1, b1, prefix="1.0.")}
    original = dict(state)
    model.load_state_dict(state, strict=True)
    assert torch.equal(model[0].weight, w0) and torch.equal(model[0].bias, b0)
    assert torch.equal(model[1][0].weight, w1) and torch.equal(model[1][0].bias, b1)
    assert state.keys() == original.keys()  # the caller's dict is left alone


def test_state_dict_round_trip():
    source = _randomize(PConv2d(3, 4, 3, padding=1))
    target = PConv2d(3, 4, 3, padding=1)
    target.load_state_dict(source.state_dict(), strict=True)
    x, mask = _image((1, 3, 6, 6)), _holes((1, 6, 6))
    assert torch.equal(target(x, mask)[0], source(x, mask)[0])


# --- torch-pconv 0.1.1 calls ---------------------------------------------------------------------


@pytest.mark.parametrize("legacy_behaviour", [False, True])
def test_torch_pconv_0_1_1_construction_and_forward(legacy_behaviour):
    layer = PConv2d(
        in_channels=3,
        out_channels=5,
        kernel_size=3,
        stride=2,
        padding=2,
        dilation=2,
        bias=False,
        legacy_behaviour=legacy_behaviour,
    )
    _randomize(layer)
    x, mask = _image((2, 3, 11, 11)), _holes((2, 11, 11))
    out, new_mask = layer(x, mask)
    assert out.shape == (2, 5, 6, 6) and out.dtype == torch.float32
    assert new_mask.shape == (2, 6, 6) and new_mask.dtype == torch.float32
    # A (B, H, W) mask is NVIDIA's multi-channel mask, expanded over the input channels.
    ref = nvidia.PartialConv2d(3, 5, 3, 2, 2, 2, bias=False, multi_channel=True, return_mask=True)
    ref.load_state_dict(layer.state_dict())
    ref_out, ref_mask = ref(x, mask.unsqueeze(1).expand(-1, 3, -1, -1))
    assert torch.equal(new_mask, ref_mask[:, 0])
    assert _normwise(out, ref_out) < 1e-6


def test_get_and_set_weight():
    layer = PConv2d(3, 4, 3)
    parameter = layer.weight
    assert layer.get_weight() is parameter
    new = _image((4, 3, 3, 3), seed=5)
    layer.set_weight(new)
    assert layer.weight is parameter  # copied in place: optimizers keep their reference
    assert torch.equal(layer.weight, new)
    with pytest.raises(PConvError, match=r"weight.*\(4, 3, 3, 3\)"):
        layer.set_weight(torch.zeros(4, 3, 5, 5))


@pytest.mark.parametrize("shape", [(1, 4, 1, 1), (4,)])
def test_set_bias_accepts_both_shapes(shape):
    layer = PConv2d(3, 4, 3)
    parameter = layer.bias
    new = torch.arange(4.0).reshape(shape)
    layer.set_bias(new)
    assert layer.bias is parameter and layer.bias.shape == (4,)
    assert torch.equal(layer.get_bias(), torch.arange(4.0))


@pytest.mark.parametrize("shape", [(5,), (1, 3, 1, 1), ()])
def test_set_bias_with_a_wrong_shape_raises(shape):
    layer = PConv2d(3, 4, 3)
    before = layer.bias.detach().clone()
    with pytest.raises(PConvError, match=r"bias.*4"):
        layer.set_bias(torch.zeros(shape))
    assert torch.equal(layer.bias, before)


def test_bias_accessors_without_bias():
    layer = PConv2d(3, 4, 3, bias=False)
    assert layer.get_bias() is None
    with pytest.raises(PConvError, match="bias=False"):
        layer.set_bias(torch.zeros(4))


# --- The returned mask ---------------------------------------------------------------------------


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.float64, torch.bool, torch.uint8])
@pytest.mark.parametrize("layout", ["shared", "single", "multi"])
def test_returned_mask_is_in_the_input_dtype(input_dtype, mask_dtype, layout):
    multi = layout == "multi"
    layer = PConv2d(3, 4, 3, padding=1, multi_channel=multi, dtype=input_dtype)
    shape = {"shared": (2, 6, 6), "single": (2, 1, 6, 6), "multi": (2, 3, 6, 6)}[layout]
    mask = _holes(shape, dtype=mask_dtype)
    out, update = layer(_image((2, 3, 6, 6), dtype=input_dtype), mask)
    assert out.dtype == input_dtype
    assert update.dtype == input_dtype
    # The mask's dtype does not change the result.
    out_float, update_float = layer(_image((2, 3, 6, 6), dtype=input_dtype), mask.to(input_dtype))
    assert torch.equal(out, out_float)
    assert torch.equal(update, update_float)


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.float64])
def test_returned_mask_without_a_mask_is_in_the_input_dtype(input_dtype):
    _, update = PConv2d(3, 4, 3, padding=1, dtype=input_dtype)(_image((2, 3, 6, 6), dtype=input_dtype))
    assert update.dtype == input_dtype
    assert update.shape == (1, 1, 6, 6)


@pytest.mark.parametrize("mask_batch", [2, 1])
def test_multi_channel_returned_mask_shape_and_read_only_view(mask_batch):
    layer = PConv2d(3, 5, 3, multi_channel=True)
    _, update = layer(_image((2, 3, 6, 6)), _holes((mask_batch, 3, 6, 6)))
    assert update.shape == (mask_batch, 5, 4, 4)
    # Every output channel carries the same mask (NVIDIA's ones kernel spans all input channels).
    assert torch.equal(update, update[:, :1].expand_as(update))
    with pytest.raises(RuntimeError):
        update.mul_(0)
    # A clone is a plain tensor the user can edit.
    update.clone().mul_(0)


def test_multi_channel_with_a_single_input_channel_accepts_a_one_channel_mask():
    layer = PConv2d(1, 4, 3, multi_channel=True)
    _, update = layer(_image((2, 1, 6, 6)), _holes((2, 1, 6, 6)))
    assert update.shape == (2, 4, 4, 4)


@pytest.mark.parametrize("layout", ["shared", "single"])
def test_returned_mask_shapes(layout):
    shape = (3, 6, 6) if layout == "shared" else (3, 1, 6, 6)
    _, update = PConv2d(2, 4, 3, stride=2, padding=1)(_image((3, 2, 6, 6)), _holes(shape))
    assert update.shape == ((3, 3, 3) if layout == "shared" else (3, 1, 3, 3))


@pytest.mark.parametrize("layout", ["shared", "single", "multi"])
def test_no_gradient_reaches_the_mask(layout):
    multi = layout == "multi"
    layer = PConv2d(3, 4, 3, padding=1, multi_channel=multi)
    shape = {"shared": (2, 6, 6), "single": (2, 1, 6, 6), "multi": (2, 3, 6, 6)}[layout]
    mask = _holes(shape).requires_grad_()
    x = _image((2, 3, 6, 6)).requires_grad_()
    out, update = layer(x, mask)
    assert not update.requires_grad
    (out.square().sum() + update.sum()).backward()
    assert mask.grad is None
    assert x.grad is not None and layer.weight.grad is not None


# --- Representation and everyday use -------------------------------------------------------------


@pytest.mark.parametrize("cls", [PConv2d, PartialConv2d, PConv3d])
@pytest.mark.parametrize("flag", FLAGS)
def test_extra_repr_mentions_exactly_the_non_default_flags(cls, flag):
    plain = cls(2, 3, 3)
    default = getattr(plain, flag)  # the class's own default (PartialConv2d: return_mask=False)
    assert f"{flag}=" not in repr(plain), "a default flag is shown"
    assert f"{flag}={not default}" in repr(cls(2, 3, 3, **{flag: not default}))


def test_extra_repr_keeps_conv2d_arguments():
    text = repr(PConv2d(2, 3, 5, stride=2, padding=1, bias=False, multi_channel=True))
    assert text.startswith("PConv2d(2, 3, kernel_size=(5, 5), stride=(2, 2), padding=(1, 1), bias=False")
    assert "multi_channel=True" in text


def test_partialconv2d_in_a_sequential_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        PartialConv2d(3, 8, 3, padding=1), nn.ReLU(), PartialConv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()
    )
    # Users' init loops recognise the layers as convolutions.
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2
    for m in convs:
        nn.init.kaiming_normal_(m.weight)
        nn.init.zeros_(m.bias)
    x = _image((2, 3, 8, 8)).requires_grad_()
    out = model(x)
    assert out.shape == (2, 8, 4, 4)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


class _Encoder(nn.Module):
    """An inpainting encoder as users write it: (image, mask) pairs through PConv2d layers."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([PConv2d(3, 8, 5, stride=2, padding=2), PConv2d(8, 16, 3, stride=2, padding=1)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in self.layers:
            x, mask = layer(x, mask)
            x = torch.relu(x)
        return x, mask


@pytest.mark.parametrize("mode", ["grad", "no_grad", "inference_mode"])
def test_user_model_under_grad_modes(mode):
    torch.manual_seed(0)
    model = _Encoder()
    x, mask = _image((2, 3, 16, 16)), _holes((2, 16, 16))
    context = {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[mode]
    with context():
        out, out_mask = model(x, mask)
    expected, expected_mask = model(x, mask)
    assert out.shape == (2, 16, 4, 4) and out_mask.shape == (2, 4, 4)
    assert torch.equal(out, expected) and torch.equal(out_mask, expected_mask)
    assert out.requires_grad == (mode == "grad")
    assert out.is_inference() == (mode == "inference_mode")


@pytest.mark.parametrize("mask_shape", [None, (2, 1, 8, 8)])
def test_forward_on_the_meta_device(mask_shape):
    """Shape inference on the meta device, as nn.Conv2d allows (autocast knows no meta device)."""
    layer = PConv2d(3, 4, 3, padding=1, device="meta")
    mask = None if mask_shape is None else torch.ones(mask_shape, device="meta")
    out, update = layer(torch.empty(2, 3, 8, 8, device="meta"), mask)
    assert out.shape == (2, 4, 8, 8) and out.device.type == "meta"
    assert update.shape == ((1, 1, 8, 8) if mask is None else (2, 1, 8, 8))


def test_state_dict_with_both_weight_keys_raises():
    # weight and 0.1.1's regular_conv.weight: two checkpoints mixed; neither may win silently.
    layer = PConv2d(3, 4, 3)
    state = {**layer.state_dict(), "regular_conv.weight": torch.zeros(4, 3, 3, 3)}
    for strict in (True, False):
        with pytest.raises(RuntimeError, match=r"both weight and torch-pconv 0\.1\.1's regular_conv\.weight"):
            layer.load_state_dict(state, strict=strict)


# --- The returned multi-channel mask -----------------------------------------------------------


def _multi_inputs(channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = _seeded(11)
    x = torch.randn(2, channels, 9, 9, generator=gen)
    mask = (torch.rand(2, channels, 9, 9, generator=gen) > 0.4).float()
    return x, mask


@pytest.mark.parametrize("masked", [True, False])
def test_partialconv2d_returns_a_multi_channel_mask_of_its_own(masked):
    # Code written against NVIDIA's layer reshapes and edits the mask it returns.
    layer = PartialConv2d(3, 4, 3, padding=1, multi_channel=True, return_mask=True)
    ref = nvidia.PartialConv2d(3, 4, 3, padding=1, multi_channel=True, return_mask=True)
    x, mask = _multi_inputs()
    _, ours = layer(x, mask if masked else None)
    _, theirs = ref(x, mask if masked else None)
    assert ours.is_contiguous() and torch.equal(ours, theirs)
    for edit in (
        lambda m: m.view(2, -1),
        lambda m: m.view(-1),
        lambda m: m.mul_(0.5),
        lambda m: m.__setitem__((slice(None), slice(None), 0), 0),
    ):
        edit(ours)
        edit(theirs)
    assert torch.equal(ours, theirs)


def test_pconv2d_returns_a_multi_channel_mask_as_an_expanded_view():
    # Cheap (one channel in memory); .contiguous() gives a tensor of its own.
    layer = PConv2d(3, 4, 3, padding=1, multi_channel=True)
    x, mask = _multi_inputs()
    _, update = layer(x, mask)
    assert update.shape == (2, 4, 9, 9) and update.stride(1) == 0
    own = update.contiguous()
    own[:, :, 0] = 0
    assert own.view(-1).shape == (2 * 4 * 9 * 9,)


@pytest.mark.parametrize("cls", [PConv2d, PartialConv2d])
def test_a_returned_multi_channel_mask_fed_back_is_counted_as_one_channel(cls, monkeypatch):
    from torch_pconv import pconv

    first = cls(3, 4, 3, padding=1, multi_channel=True, return_mask=True)
    second = cls(4, 5, 3, padding=1, multi_channel=True, return_mask=True, legacy_behaviour=True)
    ref = nvidia.PartialConv2d(4, 5, 3, padding=1, multi_channel=True, return_mask=True)
    ref.load_state_dict(second.state_dict())
    x, mask = _multi_inputs()
    hidden, update = first(x, mask)
    layouts = []
    valid_map = pconv.valid_map
    monkeypatch.setattr(pconv, "valid_map", lambda m, layout, *a: layouts.append(layout) or valid_map(m, layout, *a))
    out, _ = second(hidden, update)
    assert layouts == [pconv.MaskLayout.SHARED], "the channel-constant mask was counted channel by channel"
    expected, _ = ref(hidden, update)
    assert torch.equal(out, expected)  # legacy_behaviour: NVIDIA's float32 arithmetic, bit for bit


def test_an_edited_returned_mask_is_counted_as_edited():
    # After an in-place edit the channels differ: the layer must see the edit, not the tag.
    first = PartialConv2d(3, 4, 3, padding=1, multi_channel=True, return_mask=True)
    second = PartialConv2d(4, 5, 3, padding=1, multi_channel=True, return_mask=True, legacy_behaviour=True)
    ref = nvidia.PartialConv2d(4, 5, 3, padding=1, multi_channel=True, return_mask=True)
    ref.load_state_dict(second.state_dict())
    x, mask = _multi_inputs()
    hidden, update = first(x, mask)
    update[:, 1:3, 2:7, 2:7] = 0
    out, new_update = second(hidden, update)
    expected, expected_update = ref(hidden, update)
    assert torch.equal(out, expected)
    assert torch.equal(new_update, expected_update)
