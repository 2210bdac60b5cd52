"""The public API: nn.ConvNd subclasses with nn.ConvNd's signature plus keyword-only flags, the
return values of NVIDIA's layers, weight and bias accessors, the repr, torch-pconv 0.1.1's calls,
and everyday use in models.

State dicts are in test_state_dict.py, the returned mask in test_returned_mask.py.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from helpers import holes, image, randomize
from torch import nn

from torch_pconv import PartialConv1d, PartialConv2d, PartialConv3d, PConv1d, PConv2d, PConv3d, PConvError
from torch_pconv import reference as nvidia
from torch_pconv._masks import MaskLayout
from torch_pconv.check import reference_mask, relative_error

FLAGS = ("multi_channel", "return_mask", "legacy_behaviour")


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
    out, mask = layer(image((1, 2, 7, 9)), holes((1, 7, 9)))
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
    result = PConv2d(2, 3, 3, padding=1)(image((2, 2, 6, 6)), holes((2, 1, 6, 6)))
    assert isinstance(result, tuple) and len(result) == 2
    out, mask = result
    assert out.shape == (2, 3, 6, 6)
    assert mask.shape == (2, 1, 6, 6)


@pytest.mark.parametrize("mask", [None, "single"])
def test_partialconv2d_returns_the_output_alone_like_nvidia(mask):
    x = image((2, 2, 6, 6))
    mask_in = None if mask is None else holes((2, 1, 6, 6))
    ours = PartialConv2d(2, 3, 3, padding=1)(x, mask_in)
    ref = nvidia.PartialConv2d(2, 3, 3, padding=1)(x, mask_in)
    assert type(ours) is type(ref) is torch.Tensor
    assert ours.shape == ref.shape


@pytest.mark.parametrize("multi_channel", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_partialconv2d_with_return_mask_matches_nvidia_shapes(multi_channel, masked):
    x = image((2, 3, 6, 6))
    mask = holes((2, 3 if multi_channel else 1, 6, 6)) if masked else None
    kwargs = {"padding": 1, "multi_channel": multi_channel, "return_mask": True}
    out, update = PartialConv2d(3, 4, 3, **kwargs)(x, mask)
    ref_out, ref_update = nvidia.PartialConv2d(3, 4, 3, **kwargs)(x, mask)
    assert out.shape == ref_out.shape
    assert update.shape == ref_update.shape
    assert torch.equal(update, ref_update)


@pytest.mark.parametrize("cls", [PartialConv1d, PartialConv3d])
def test_other_partialconv_classes_return_the_output_alone(cls):
    dims = 1 if cls is PartialConv1d else 3
    out = cls(2, 3, 3, padding=1)(image((1, 2, *(5,) * dims)))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 3, *(5,) * dims)


# --- torch-pconv 0.1.1 calls and accessors -------------------------------------------------------


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
    randomize(layer)
    x, mask = image((2, 3, 11, 11)), holes((2, 11, 11))
    out, new_mask = layer(x, mask)
    assert out.shape == (2, 5, 6, 6) and out.dtype == torch.float32
    assert new_mask.shape == (2, 6, 6) and new_mask.dtype == torch.float32
    # A (B, H, W) mask is NVIDIA's multi-channel mask, expanded over the input channels.
    ref = nvidia.PartialConv2d(3, 5, 3, 2, 2, 2, bias=False, multi_channel=True, return_mask=True)
    ref.load_state_dict(layer.state_dict())
    ref_out, ref_mask = ref(x, reference_mask(MaskLayout.SHARED, mask, 3))
    assert torch.equal(reference_mask(MaskLayout.SHARED, new_mask, 5), ref_mask)
    assert relative_error(out, ref_out) < 1e-6


def test_get_and_set_weight():
    layer = PConv2d(3, 4, 3)
    parameter = layer.weight
    assert layer.get_weight() is parameter
    new = image((4, 3, 3, 3), seed=5)
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
    x = image((2, 3, 8, 8)).requires_grad_()
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
    x, mask = image((2, 3, 16, 16)), holes((2, 16, 16))
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
