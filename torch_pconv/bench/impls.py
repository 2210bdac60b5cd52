"""The implementations under test, the networks made of them, their inputs, and the other builds' loaders."""

from __future__ import annotations

import importlib.util
import sys
import types
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import reference
from .._masks import MaskLayout
from ..holes import random_holes
from ..pconv import PartialConv2d, PConv2d
from .configs import Config, Settings

_NONE, _SINGLE, _MULTI, _SHARED = MaskLayout.NONE, MaskLayout.SINGLE, MaskLayout.MULTI, MaskLayout.SHARED


@dataclass(frozen=True)
class Impl:
    """One implementation under test, and the mask layout it is given."""

    name: str
    kind: Literal["conv", "pconv", "drop_in", "nvidia", "v011", "baseline", "convert"]
    multi_channel: bool = False
    mask: MaskLayout = _SINGLE
    compiled: bool = False  # wrapped in torch.compile
    dtype: str | None = None  # a key of configs.DTYPES: a network's row in its own dtype; None: the config's


CONV = "nn.Conv2d"
NVIDIA = "NVIDIA multi_channel"
NVIDIA_SINGLE = "NVIDIA single"
V011 = "torch-pconv 0.1.1"
BASELINE = "torch_pconv (baseline)"
IMPLS = [
    Impl(CONV, "conv", mask=_NONE),
    Impl("PConv2d multi_channel", "pconv", True, _MULTI),
    Impl("PConv2d", "pconv", False, _SINGLE),
    Impl("PConv2d (B,H,W) mask", "pconv", False, _SHARED),
    # The drop-in returns a multi-channel mask of its own, as NVIDIA's does, which the next layer
    # counts channel by channel: what a chain of them costs beyond PConv2d's expanded views.
    Impl("PartialConv2d multi_channel", "drop_in", True, _MULTI),
    Impl(NVIDIA, "nvidia", True, _MULTI),
    Impl(NVIDIA_SINGLE, "nvidia", False, _SINGLE),
    Impl(V011, "v011", False, _SHARED),
    Impl(BASELINE, "baseline", False, _SINGLE),
    Impl(f"{CONV} (compiled)", "conv", mask=_NONE, compiled=True),
    Impl("PConv2d (compiled)", "pconv", False, _SINGLE, compiled=True),
]


def _variant(impl: Impl, *, compiled: bool = False, dtype: str | None = None) -> Impl:
    """``impl`` compiled or in another dtype: a network's row again, named for what differs."""
    suffix = (" (compiled)" if compiled else "") + (f", {dtype}" if dtype else "")
    return replace(impl, name=impl.name + suffix, compiled=compiled, dtype=dtype)


def _named(name: str) -> Impl:
    return next(impl for impl in IMPLS if impl.name == name)


# The whole networks' rows (see networks): each is named for the layer its network is built of (the
# mask layout does not apply: a network makes its own). The U-Net's bfloat16 and compiled rows run
# where its config asks for them (Config.bfloat16, Config.compiled).
UNET_IMPLS = [_named(CONV), _named("PConv2d multi_channel"), _named(NVIDIA)]
UNET_BFLOAT16 = [_variant(impl, dtype="bfloat16") for impl in UNET_IMPLS]
UNET_COMPILED = [_variant(impl, compiled=True) for impl in UNET_IMPLS[:2]]
CLASSIFIER_IMPLS = [
    _named(CONV),
    Impl("PartialConv2d", "drop_in", mask=_NONE),  # every convolution, as pd_resnet50
    Impl("PartialConv2d, convert", "convert", mask=_NONE),  # torch_pconv.convert: unpadded 1×1 stay nn.Conv2d
    _named(NVIDIA_SINGLE),
]
NETWORK_IMPLS = [*UNET_IMPLS, *UNET_BFLOAT16, *UNET_COMPILED, *CLASSIFIER_IMPLS]


def network_impls(config: Config) -> list[Impl]:
    """The rows of a whole network's config."""
    if config.network != "unet":
        return CLASSIFIER_IMPLS
    return UNET_IMPLS + UNET_BFLOAT16 * config.bfloat16 + UNET_COMPILED * config.compiled


def conv_of(impl: Impl) -> Impl:
    """The nn.Conv2d ``impl`` is timed between and compared with: compiled if it is, in its dtype."""
    rows = [*IMPLS, *NETWORK_IMPLS]
    return next(r for r in rows if r.kind == "conv" and r.compiled == impl.compiled and r.dtype == impl.dtype)


def nvidia_of(impl: Impl) -> str:
    """The NVIDIA row ``impl`` is compared with: the one with the same ``multi_channel`` (and, for a
    network's rows, the same dtype; a compiled row has none)."""
    name = NVIDIA if impl.multi_channel else NVIDIA_SINGLE
    return _variant(Impl(name, "nvidia"), compiled=impl.compiled, dtype=impl.dtype).name


def applicable(impl: Impl, config: Config, settings: Settings) -> str | None:
    """None if ``impl`` runs on ``config``, else why not."""
    if config.compiled:  # nn.Conv2d and PConv2d, each compiled and eager
        if impl.kind == "conv" or (impl.kind == "pconv" and impl.mask is _SINGLE):
            return None
        return "not in the compiled config"
    if impl.compiled:
        return "compiled config only"
    if impl.kind == "pconv" and impl.mask is _SHARED and config.holes is None:
        return "with mask None it is the PConv2d row"
    if impl.kind == "drop_in" and config.layers == 1:
        return "one layer: the PConv2d multi_channel row (it differs in the mask it returns)"
    if impl.kind == "baseline" and settings.baseline is None:
        return "not given (--baseline PATH to another checkout)"
    if impl.kind != "v011":
        return None
    if settings.v011 is None:
        return "not given (--v011 PATH to its wheel: pip download --no-deps torch-pconv==0.1.1 -d DIR)"
    if config.holes is None:
        return "needs a mask"
    if settings.dtype != torch.float32:
        return "float32 only"
    return None


# ----------------------------------------------------------------------------------------------
# The networks and their inputs


class Network(nn.Module):
    """Convolutions in a row; with more than one, each followed by BatchNorm2d and ReLU.

    ``partial``: the convolutions take and return a mask, which is carried from layer to layer.
    """

    def __init__(self, convs: list[nn.Module], partial: bool) -> None:
        super().__init__()
        self.convs = nn.ModuleList(convs)
        width = [int(getattr(conv, "out_channels", 0)) for conv in convs]
        self.norms = nn.ModuleList([nn.BatchNorm2d(c) for c in width] if len(convs) > 1 else [])
        self.partial = partial

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        for i, conv in enumerate(self.convs):
            if self.partial:
                x, mask = conv(x, mask)
            else:
                x = conv(x)
            if self.norms:
                x = F.relu(self.norms[i](x))
        return x


def _layer(impl: Impl, in_channels: int, config: Config, settings: Settings) -> nn.Module:
    args = (in_channels, config.out_channels, config.kernel_size)
    kwargs: dict[str, Any] = {"padding": config.padding}
    if impl.kind == "conv":
        return nn.Conv2d(*args, **kwargs)
    if impl.kind == "pconv":
        return PConv2d(*args, **kwargs, multi_channel=impl.multi_channel)
    if impl.kind == "drop_in":
        return PartialConv2d(*args, **kwargs, multi_channel=impl.multi_channel, return_mask=True)
    if impl.kind == "nvidia":
        return reference.PartialConv2d(*args, **kwargs, multi_channel=impl.multi_channel, return_mask=True)
    if impl.kind == "baseline":
        assert settings.baseline is not None
        return settings.baseline(*args, **kwargs, multi_channel=impl.multi_channel)
    assert settings.v011 is not None
    return settings.v011(*args, **kwargs, bias=True)


def build_network(impl: Impl, config: Config, settings: Settings) -> Network:
    """The network of ``config`` made of ``impl``'s layers, with the same weights for every impl
    (eager, even for a compiled impl: see run.bench_config)."""
    widths = [config.in_channels] + [config.out_channels] * (config.layers - 1)
    torch.manual_seed(settings.seed)  # the weights are drawn before any layer's own initialisation
    plains = [nn.Conv2d(c, config.out_channels, config.kernel_size, padding=config.padding) for c in widths]
    convs = []
    for in_channels, plain in zip(widths, plains, strict=True):
        layer = _layer(impl, in_channels, config, settings)
        if impl.kind == "v011":
            layer.set_weight(plain.weight)  # type: ignore[operator]
            layer.set_bias(plain.bias)  # type: ignore[operator]
        else:
            layer.load_state_dict(plain.state_dict())
        convs.append(layer)
    return Network(convs, partial=impl.kind != "conv").to(settings.device, settings.dtype)


@dataclass
class Inputs:
    """The input, one mask per layout, and the output gradient of a config."""

    x: Tensor
    masks: dict[MaskLayout, Tensor | None]
    grad: Tensor


def make_inputs(config: Config, settings: Settings) -> Inputs:
    """A random input that requires grad (the layer sits inside a network) and its masks."""
    gen = torch.Generator().manual_seed(settings.seed)
    shape = (config.batch, config.in_channels, config.size, config.size)
    x = torch.randn(shape, generator=gen).to(settings.device, settings.dtype).requires_grad_()
    masks: dict[MaskLayout, Tensor | None] = dict.fromkeys(MaskLayout)
    if config.holes is not None:  # the same holes in every layout
        single = random_holes((config.batch, 1, config.size, config.size), config.holes, generator=gen)
        single = single.to(settings.device, settings.dtype)
        masks.update({_SINGLE: single, _MULTI: single.expand(shape).contiguous(), _SHARED: single.squeeze(1).clone()})
    out = config.size + config.layers * (2 * config.padding - config.kernel_size + 1)
    grad = torch.randn((config.batch, config.out_channels, out, out), generator=gen).to(settings.device, settings.dtype)
    return Inputs(x, masks, grad)


# ----------------------------------------------------------------------------------------------
# Other builds: both are packages named torch_pconv, so neither can be imported as itself.


def load_v011(path: str | Path) -> type[nn.Module]:
    """torch-pconv 0.1.1's ``PConv2d``, from its wheel or unpacked folder.

    Its ``pconv.py`` is loaded as a private module. Get the wheel with
    ``pip download --no-deps torch-pconv==0.1.1 -d DIR``.
    """
    path = Path(path)
    if path.is_file():  # a wheel is a zip archive
        with zipfile.ZipFile(path) as wheel:
            source = wheel.read("torch_pconv/pconv.py").decode()
    else:
        file = path / "torch_pconv" / "pconv.py"
        source = (file if file.exists() else path / "pconv.py").read_text()
    module = types.ModuleType("torch_pconv_v011")
    exec(compile(source, f"{path} (torch-pconv 0.1.1)", "exec"), module.__dict__)
    cls: type[nn.Module] = module.PConv2d
    return cls


BASELINE_MODULE = "torch_pconv_baseline"


def load_baseline(path: str | Path, name: str = BASELINE_MODULE) -> type[nn.Module]:
    """``PConv2d`` of another build of this package: a checkout, or its ``torch_pconv`` folder.

    The package is imported under ``name``, with its submodules, so that its relative imports
    (``from ._masks import ...``) resolve within it and never reach the installed torch_pconv.
    A second call replaces what an earlier one loaded under ``name``.
    """
    path = Path(path)
    package = path / "torch_pconv" if (path / "torch_pconv" / "__init__.py").exists() else path
    init = package / "__init__.py"
    if not init.exists():
        raise FileNotFoundError(f"--baseline {path}: no torch_pconv package there (no {init})")
    _forget(name)
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(package)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before it runs: its relative imports look it up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        _forget(name)
        raise
    cls: type[nn.Module] = module.PConv2d
    return cls


def _forget(name: str) -> None:
    """Drop the package ``name`` and its submodules from sys.modules."""
    for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[loaded]
