"""State dicts: a layer's parameters and state dict are nn.ConvNd's; NVIDIA's and torch-pconv
0.1.1's checkpoints load strictly and give the same outputs; a mixed checkpoint is refused."""

from __future__ import annotations

import pytest
import torch
from helpers import holes, image, randomize, seeded
from torch import nn

from torch_pconv import PartialConv2d, PartialConv3d, PConv2d
from torch_pconv import reference as nvidia
from torch_pconv.check import relative_error


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("multi_channel", [False, True])
def test_parameters_and_state_dict_are_those_of_conv2d(bias, multi_channel):
    layer = PConv2d(3, 4, 3, bias=bias, multi_channel=multi_channel)
    conv = nn.Conv2d(3, 4, 3, bias=bias)
    assert [n for n, _ in layer.named_parameters()] == [n for n, _ in conv.named_parameters()]
    assert list(layer.state_dict()) == list(conv.state_dict())
    assert [n for n, _ in layer.named_buffers()] == []
    # A forward pass adds no state either (the mask=None cache is not state).
    layer(image((1, 3, 5, 5)))
    layer(image((1, 3, 5, 5)), holes((1, 5, 5)))
    assert list(layer.state_dict()) == list(conv.state_dict())


def test_state_dict_round_trip():
    source = randomize(PConv2d(3, 4, 3, padding=1))
    target = PConv2d(3, 4, 3, padding=1)
    target.load_state_dict(source.state_dict(), strict=True)
    x, mask = image((1, 3, 6, 6)), holes((1, 6, 6))
    assert torch.equal(target(x, mask)[0], source(x, mask)[0])


def test_state_dict_with_both_weight_keys_raises():
    # weight and 0.1.1's regular_conv.weight: two checkpoints mixed; neither may win silently.
    layer = PConv2d(3, 4, 3)
    state = {**layer.state_dict(), "regular_conv.weight": torch.zeros(4, 3, 3, 3)}
    for strict in (True, False):
        with pytest.raises(RuntimeError, match=r"both weight and torch-pconv 0\.1\.1's regular_conv\.weight"):
            layer.load_state_dict(state, strict=strict)


# --- NVIDIA's checkpoints ------------------------------------------------------------------------


@pytest.mark.parametrize("multi_channel", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_nvidia_state_dict_loads_strictly_and_gives_identical_outputs(multi_channel, bias):
    ref = randomize(nvidia.PartialConv2d(3, 4, 3, padding=1, bias=bias, multi_channel=multi_channel))
    ours = PartialConv2d(3, 4, 3, padding=1, bias=bias, multi_channel=multi_channel, legacy_behaviour=True)
    result = ours.load_state_dict(ref.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = image((2, 3, 7, 7))
    mask = holes((2, 3 if multi_channel else 1, 7, 7))
    # legacy_behaviour=True follows NVIDIA's float32 arithmetic bit for bit.
    assert torch.equal(ours(x, mask), ref(x, mask))
    # The default path differs from it by rounding only.
    default = PartialConv2d(3, 4, 3, padding=1, bias=bias, multi_channel=multi_channel)
    default.load_state_dict(ref.state_dict(), strict=True)
    assert relative_error(default(x, mask), ref(x, mask)) < 1e-6


def test_nvidia_state_dict_of_a_3d_layer_loads_strictly():
    ref = randomize(nvidia.PartialConv3d(2, 3, 3, padding=1))
    ours = PartialConv3d(2, 3, 3, padding=1, legacy_behaviour=True)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x, mask = image((1, 2, 4, 5, 6)), holes((1, 1, 4, 5, 6))
    assert torch.equal(ours(x, mask), ref(x, mask))


# --- torch-pconv 0.1.1's checkpoints -------------------------------------------------------------


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
    gen = seeded(3)
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
    gen = seeded(4)
    w0, b0 = torch.randn(4, 3, 3, 3, generator=gen), torch.randn(4, generator=gen)
    w1, b1 = torch.randn(2, 4, 1, 1, generator=gen), torch.randn(2, generator=gen)
    model = nn.Sequential(PConv2d(3, 4, 3), nn.Sequential(PConv2d(4, 2, 1)))
    state = {**_state_dict_0_1_1(w0, b0, prefix="0."), **_state_dict_0_1_1(w1, b1, prefix="1.0.")}
    original = dict(state)
    model.load_state_dict(state, strict=True)
    assert torch.equal(model[0].weight, w0) and torch.equal(model[0].bias, b0)
    assert torch.equal(model[1][0].weight, w1) and torch.equal(model[1][0].bias, b1)
    assert state.keys() == original.keys()  # the caller's dict is left alone
