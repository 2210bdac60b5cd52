"""Shared fixtures: the hypothesis profile, a seeded generator, pairs of layers (ours, NVIDIA's
reference) with the same weights, and the comparison with an assertion that shows the tensors."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import settings
from pshape import pshape
from torch import Tensor, nn
from torch.func import functional_call

from torch_pconv import PConv1d, PConv2d, PConv3d, reference
from torch_pconv.check import Comparison, compare

# Derandomized: every run draws the same examples, so CI is deterministic. HYPOTHESIS_PROFILE=dev
# explores more (and differently) when hunting for bugs locally.
settings.register_profile("ci", derandomize=True, max_examples=100, deadline=None, database=None, print_blob=True)
settings.register_profile("dev", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The suites run tiny tensors, which gain nothing from intra-op threads; with pytest -n 2 on two
# cores, two threads per worker oversubscribe them and OpenMP's spinning barriers make each
# convolution up to a hundred times slower. One thread also fixes the order of every reduction,
# whatever the machine's core count.
torch.set_num_threads(1)


def pytest_report_header() -> str:
    import torch_pconv

    return f"torch {torch.__version__}, torch_pconv {torch_pconv.__version__} from {Path(torch_pconv.__file__).parent}"


_OURS = {1: PConv1d, 2: PConv2d, 3: PConv3d}
_REFERENCE = {2: reference.PartialConv2d, 3: reference.PartialConv3d}


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def generator() -> torch.Generator:
    """A CPU generator seeded with 0, fresh for each test."""
    return seeded(0)


# Helpers are handed out by session-scoped fixtures (factories) so that hypothesis tests, which
# must not take function-scoped fixtures, can use them too.


@pytest.fixture(scope="session")
def make_pair() -> Callable[..., tuple[nn.Module, nn.Module]]:
    return _make_pair


@pytest.fixture(scope="session")
def run_compare() -> Callable[..., Run]:
    return _run_compare


@pytest.fixture(scope="session")
def describe() -> Callable[..., str]:
    return _describe


class OnHeightOne(nn.Module):
    """A PConv1d seen as a 2-D layer on height-1 inputs, so that it can be held against the 2-D
    reference: input (B, C, 1, L) ↔ (B, C, L), weight (O, I, 1, k) ↔ (O, I, k), returned mask
    (..., 1, L') ↔ (..., L'). It owns the 2-D-shaped parameters; the PConv1d runs on views of them."""

    def __init__(self, layer: PConv1d) -> None:
        super().__init__()
        self.weight = nn.Parameter(layer.weight.detach().unsqueeze(2).clone())
        bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())
        self.register_parameter("bias", bias)
        self.legacy_behaviour = layer.legacy_behaviour
        self.layer = (layer,)  # a tuple hides it from nn.Module: its parameters are ours, reshaped

    def forward(self, input: Tensor, mask_in: Tensor | None = None) -> tuple[Tensor, Tensor]:
        params = {"weight": self.weight.squeeze(2)}
        if self.bias is not None:
            params["bias"] = self.bias
        output, mask = functional_call(self.layer[0], params, (input.squeeze(2), mask_in))
        return output.unsqueeze(2), mask.unsqueeze(-2)


def _on_height_one(layer: dict[str, Any]) -> dict[str, Any]:
    """nn.Conv1d arguments as the equivalent nn.Conv2d arguments on height-1 inputs."""

    def widen(value: Any, height: int) -> Any:
        if isinstance(value, str):
            return value  # 'same' and 'valid' mean the same with a height-1 kernel
        (width,) = value if isinstance(value, tuple) else (value,)
        return (height, width)

    return {
        **layer,
        "kernel_size": widen(layer["kernel_size"], 1),
        "stride": widen(layer.get("stride", 1), 1),
        "padding": widen(layer.get("padding", 0), 0),
        "dilation": widen(layer.get("dilation", 1), 1),
    }


def _make_pair(
    dims: int,
    layer: dict[str, Any],
    *,
    dtype: torch.dtype = torch.float32,
    ours_multi: bool = False,
    ref_multi: bool = False,
    legacy: bool = False,
    seed: int = 0,
) -> tuple[nn.Module, nn.Module]:
    """(ours, reference) with the same seeded weights and bias, the reference returning its mask.

    ``layer`` holds nn.ConvNd arguments. For ``dims == 1`` the reference is the 2-D one on
    height-1 inputs and ours is wrapped in :class:`OnHeightOne`.
    """
    ref_layer = _on_height_one(layer) if dims == 1 else layer
    ref = _REFERENCE[max(dims, 2)](**ref_layer, multi_channel=ref_multi, return_mask=True, dtype=dtype)
    gen = seeded(seed)
    with torch.no_grad():
        fan_in = ref.weight[0].numel()
        ref.weight.copy_(torch.randn(ref.weight.shape, generator=gen, dtype=dtype) / math.sqrt(fan_in))
        if ref.bias is not None:  # a bias as large as the output, so that its handling shows
            ref.bias.copy_(torch.randn(ref.bias.shape, generator=gen, dtype=dtype))
    ours: nn.Module = _OURS[dims](**layer, multi_channel=ours_multi, legacy_behaviour=legacy, dtype=dtype)
    if dims == 1:
        ours = OnHeightOne(ours)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


@dataclass
class Run:
    """One comparison and the tensors it saw, kept for the failure message."""

    cmp: Comparison
    tensors: dict[str, Tensor | None] = field(default_factory=dict)

    def assert_equivalent(self, context: str = "") -> None:
        """Fail, showing errors, tolerances and every tensor's shape, unless within tolerance."""
        bad = self.cmp.failures()
        bad += [f"{k}: tolerance {t} is not finite" for k, t in self.cmp.tolerances.items() if not math.isfinite(t)]
        if bad:
            pytest.fail(
                f"{context}\n{'; '.join(bad)}\nerrors     {_fmt(self.cmp.errors)}\n"
                f"tolerances {_fmt(self.cmp.tolerances)}\n{_describe(**self.tensors)}",
                pytrace=False,
            )


def _run_compare(
    ours: nn.Module,
    ref: nn.Module,
    input: Tensor,
    mask: Tensor | None = None,
    ref_mask: Tensor | None = None,
    *,
    seed: int = 0,
) -> Run:
    """:func:`torch_pconv.check.compare`, recording both layers' forward results on the way."""
    seen: dict[str, Any] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: tuple[Tensor, Tensor]) -> None:
            seen[f"out_{name}"], seen[f"mask_{name}"] = (t.detach() for t in output)

        return hook

    handles = [ours.register_forward_hook(record("ours")), ref.register_forward_hook(record("ref"))]
    try:
        cmp = compare(ours, ref, input, mask, ref_mask, seed=seed)
    finally:
        for handle in handles:
            handle.remove()
    return Run(cmp, {"input": input, "mask": mask, "ref_mask": ref_mask, **seen})


def _describe(**tensors: Tensor | None) -> str:
    """pshape's line (shape, device, dtype, min, mean, max) for each of the given tensors."""
    width = max(map(len, tensors), default=0)
    lines = []
    for name, tensor in tensors.items():
        value = None if tensor is None else tensor.detach()
        out = io.StringIO()
        pshape(value, heading=False, out=out)
        # pshape names each row after the variable it was called with; put the real name there.
        lines.append(name.ljust(width) + out.getvalue().rstrip().removeprefix("value"))
    return "\n".join(lines)


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in values.items())
