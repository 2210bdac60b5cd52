"""torch_pconv.convert: partial-convolution-based padding for a whole model.

The converted model is checked against a twin built by hand from NVIDIA's layer
(torch_pconv.reference), with the same weights, in float64.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from helpers import seeded
from torch import Tensor, nn

import torch_pconv
from torch_pconv import reference
from torch_pconv.check import relative_error
from torch_pconv.convert import convert

RTOL = 1e-12  # float64: the two differ by the rounding of a few operations per layer


# A ResNet-style classifier, its convolutions made by a factory so that the same code builds the
# plain model and the hand-built partial-padding twin.
ConvFactory = Callable[..., nn.Module]


def plain_conv(cin: int, cout: int, k: int, stride: int = 1, padding: int = 0) -> nn.Module:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False)


def reference_conv(cin: int, cout: int, k: int, stride: int = 1, padding: int = 0) -> nn.Module:
    if padding == 0:  # convert leaves unpadded convs alone (NVIDIA's ratio there is 1 / (1 + 1e-8))
        return plain_conv(cin, cout, k, stride, padding)
    return reference.PartialConv2d(
        cin, cout, k, stride=stride, padding=padding, bias=False, multi_channel=False, return_mask=False
    )


class BasicBlock(nn.Module):
    def __init__(self, conv: ConvFactory, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv(cin, cout, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv(cout, cout, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(conv(cin, cout, 1, stride, 0), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.downsample(x))


class TinyResNet(nn.Module):
    def __init__(self, conv: ConvFactory = plain_conv, width: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            conv(3, width, 7, 2, 3), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1)
        )
        self.layers = nn.Sequential(
            BasicBlock(conv, width, width, 1),
            BasicBlock(conv, width, 2 * width, 2),
            BasicBlock(conv, 2 * width, 4 * width, 2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


def resnet(dtype: torch.dtype = torch.float64, seed: int = 0) -> TinyResNet:
    torch.manual_seed(seed)
    model = TinyResNet().to(dtype)
    for module in model.modules():  # non-trivial BatchNorm statistics, so that eval mode is tested too
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    return model


def twin_of(model: TinyResNet) -> TinyResNet:
    """A fresh partial-padding twin of ``model`` (NVIDIA's layers cache masks per input shape)."""
    twin = TinyResNet(reference_conv).to(next(model.parameters()).dtype)
    twin.load_state_dict(model.state_dict())
    return twin.train(model.training)


def images(batch: int = 2, size: int = 37, dtype: torch.dtype = torch.float64, seed: int = 1) -> Tensor:
    return torch.randn(batch, 3, size, size, generator=seeded(seed), dtype=dtype)


def same_state(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def conv_types(model: nn.Module) -> dict[str, type]:
    return {name: type(m) for name, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("size", [37, 64])
def test_converted_resnet_matches_reference_twin(training, size):
    model = resnet().train(training)
    x = images(size=size)
    converted = convert(model)
    twin = twin_of(model)
    out, ref = converted(x), twin(x)
    assert out.dtype == torch.float64
    assert relative_error(out, ref) <= RTOL
    # The conversion changes the function: the border is rescaled, not zero-padded.
    assert relative_error(model(x), ref) > 1e-3


def test_convert_replaces_exactly_the_padded_convs():
    converted = convert(resnet())
    types = conv_types(converted)
    assert types["stem.0"] is torch_pconv.PartialConv2d  # 7x7, padding 3
    for block in range(3):
        assert types[f"layers.{block}.conv1"] is torch_pconv.PartialConv2d
        assert types[f"layers.{block}.conv2"] is torch_pconv.PartialConv2d
    assert types["layers.1.downsample.0"] is nn.Conv2d  # 1x1, unpadded: left alone
    assert types["layers.2.downsample.0"] is nn.Conv2d
    assert type(converted.fc) is nn.Linear
    stem = converted.stem[0]
    assert (stem.kernel_size, stem.stride, stem.padding, stem.dilation, stem.groups) == (
        (7, 7),
        (2, 2),
        (3, 3),
        (1, 1),
        1,
    )
    assert stem.bias is None and not stem.return_mask and not stem.multi_channel and not stem.legacy_behaviour


def test_convert_is_idempotent():
    x = images()
    once = convert(resnet())
    twice = convert(once)
    assert conv_types(twice) == conv_types(once)
    assert torch.equal(twice(x), once(x))
    modules = dict(once.named_modules())
    assert convert(once, inplace=True) is once
    assert all(m is modules[name] for name, m in once.named_modules())  # nothing was swapped again


def test_original_is_untouched():
    model = resnet()
    before_types = conv_types(model)
    before_params = {name: p.detach().clone() for name, p in model.state_dict().items()}
    converted = convert(model)
    assert converted is not model
    assert conv_types(model) == before_types
    assert all(torch.equal(p, before_params[name]) for name, p in model.state_dict().items())
    with torch.no_grad():  # a deep copy: training the converted model leaves the original alone
        for p in converted.parameters():
            p.add_(1.0)
    assert all(torch.equal(p, before_params[name]) for name, p in model.state_dict().items())


def test_inplace_converts_the_model_itself_and_keeps_its_parameters():
    model = resnet()
    params = dict(model.named_parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert convert(model, inplace=True) is model
    assert type(model.stem[0]) is torch_pconv.PartialConv2d
    assert all(p is params[name] for name, p in model.named_parameters())
    # An optimizer built before the conversion still trains the converted layers.
    before = model.stem[0].weight.detach().clone()
    model(images()).square().mean().backward()
    optimizer.step()
    assert not torch.equal(model.stem[0].weight, before)


def test_state_dicts_round_trip():
    plain, other = resnet(seed=0), resnet(seed=1)
    converted = convert(other)
    assert list(converted.state_dict()) == list(plain.state_dict())
    converted.load_state_dict(plain.state_dict())  # strict: a plain checkpoint loads into the converted model
    assert all(
        torch.equal(a, b) for a, b in zip(converted.state_dict().values(), plain.state_dict().values(), strict=True)
    )
    fresh = resnet(seed=2)
    fresh.load_state_dict(converted.state_dict())  # and back
    assert same_state(fresh, plain)
    x = images()
    assert relative_error(converted(x), twin_of(plain)(x)) <= RTOL


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_dtype_is_kept(dtype):
    converted = convert(resnet(dtype))
    assert {p.dtype for p in converted.parameters()} == {dtype}
    assert converted(images(dtype=dtype)).dtype == dtype


def devices() -> list[str]:
    return ["cpu", "meta"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", devices())
def test_device_is_kept(device):
    model = resnet().to(device)
    converted = convert(model)
    assert {p.device.type for p in converted.parameters()} == {device}
    assert {b.device.type for b in converted.buffers()} == {device}
    if device == "cuda":
        x = images()
        assert relative_error(converted(x.cuda()).cpu(), twin_of(resnet())(x)) <= RTOL


def test_training_mode_is_kept_per_module():
    model = resnet().train()
    model.layers[1].eval()
    converted = convert(model)
    modes = {name: m.training for name, m in model.named_modules()}
    assert {name: m.training for name, m in converted.named_modules()} == modes
    assert not converted.layers[1].conv1.training and converted.layers[0].conv1.training


@pytest.mark.parametrize(
    "layer",
    [
        nn.ConvTranspose2d(3, 4, 3, padding=1),
        nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"),
        nn.Conv2d(3, 4, 3),
        nn.Conv2d(3, 4, 3, padding=(0, 0)),
        nn.Conv2d(3, 4, 3, padding="valid"),
        nn.Conv2d(3, 4, 1, padding="same"),
        torch_pconv.PConv2d(3, 4, 3, padding=1),
        torch_pconv.PartialConv2d(3, 4, 3, padding=1),
        reference.PartialConv2d(3, 4, 3, padding=1),
        nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 4, 3, padding=1)),
        nn.Linear(3, 4),
    ],
    ids=lambda m: type(m).__name__ + ("-" + m.padding_mode if hasattr(m, "padding_mode") else ""),
)
def test_other_layers_are_left_alone(layer):
    model = nn.Sequential(layer)
    assert convert(model, inplace=True)[0] is layer


def test_subclass_and_old_style_weight_norm_are_left_alone():
    class MyConv(nn.Conv2d):
        pass

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
        normed = nn.utils.weight_norm(nn.Conv2d(3, 4, 3, padding=1))
    model = nn.Sequential(MyConv(3, 4, 3, padding=1), normed)
    layers = list(model)
    assert list(convert(model, inplace=True)) == layers  # inplace: old-style weight_norm cannot be deep-copied


@pytest.mark.parametrize("padding", [1, (1, 0), (0, 2), "same"])
def test_any_nonzero_padding_is_converted(padding):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, (3, 5), padding=padding, dtype=torch.float64)
    converted = convert(conv)  # a conv at the root: the result is a new layer
    assert type(converted) is torch_pconv.PartialConv2d and converted.padding == conv.padding
    ref = reference.PartialConv2d(3, 4, (3, 5), padding=padding, dtype=torch.float64)
    ref.load_state_dict(conv.state_dict())
    x = images(size=11)
    assert relative_error(converted(x), ref(x)) <= RTOL


def test_grouped_dilated_strided_conv_with_bias():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, bias=True, dtype=torch.float64)
    converted = convert(conv)
    assert (converted.stride, converted.dilation, converted.groups) == ((2, 2), (2, 2), 2)
    ref = reference.PartialConv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, dtype=torch.float64)
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(2, 4, 13, 12, dtype=torch.float64)
    assert relative_error(converted(x), ref(x)) <= RTOL


def test_conv1d_is_converted():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(3, 4, 5, padding=2, dtype=torch.float64), nn.Conv1d(4, 2, 1, dtype=torch.float64))
    converted = convert(model)
    assert type(converted[0]) is torch_pconv.PartialConv1d and type(converted[1]) is nn.Conv1d
    # NVIDIA has no 1-D layer: a 1-D conv is a 2-D one over a single row, padded only along it.
    ref = reference.PartialConv2d(3, 4, (1, 5), padding=(0, 2), dtype=torch.float64)
    ref.weight.data.copy_(model[0].weight.unsqueeze(2))
    ref.bias.data.copy_(model[0].bias)
    x = torch.randn(2, 3, 17, dtype=torch.float64)
    expected = model[1](ref(x.unsqueeze(2)).squeeze(2))
    assert relative_error(converted(x), expected) <= RTOL


def test_conv3d_is_converted():
    torch.manual_seed(0)
    conv = nn.Conv3d(2, 3, 3, padding=1, dtype=torch.float64)
    converted = convert(nn.Sequential(conv))
    assert type(converted[0]) is torch_pconv.PartialConv3d
    ref = reference.PartialConv3d(2, 3, 3, padding=1, dtype=torch.float64)
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(2, 2, 5, 6, 7, dtype=torch.float64)
    assert relative_error(converted(x), ref(x)) <= RTOL


def test_shared_conv_stays_shared():
    conv = nn.Conv2d(3, 3, 3, padding=1)
    model = nn.ModuleDict({"a": conv, "b": nn.Sequential(conv)})
    converted = convert(model)
    assert type(converted["a"]) is torch_pconv.PartialConv2d
    assert converted["a"] is converted["b"][0]
    assert list(converted.state_dict()) == list(model.state_dict())


def test_module_list_children_are_converted():
    model = nn.ModuleList([nn.Conv2d(3, 3, 3, padding=1), nn.ReLU()])
    converted = convert(model)
    assert type(converted[0]) is torch_pconv.PartialConv2d and type(converted[1]) is nn.ReLU
    assert type(model[0]) is nn.Conv2d


def test_convert_names_what_is_not_a_module():
    with pytest.raises(TypeError, match=r"expected an nn\.Module, got str"):
        convert("resnet18")  # type: ignore[arg-type]
