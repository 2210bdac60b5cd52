"""torch.compile(fullgraph=True): no graph break, for a given mask and for mask None, and the same
results as eager, forward and backward.

Inductor compiles slowly (C++ code generation), so it gets one test, with a mask and with none; the
mask layouts and the other layers are compiled with ``aot_eager``, which traces the same graphs
(Dynamo, then AOTAutograd's forward and backward) and runs them with eager kernels.
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Callable

import pytest
import torch
from helpers import LAYERS, MaskCase, ThreeLayerNet, holes_and_a_box, seeded
from torch import Tensor, nn

from torch_pconv import PartialConv2d, PConv2d
from torch_pconv._masks import MaskLayout

# Inductor's imports warn about torch.jit deprecations; Dynamo warns about its own internals.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

EPS = torch.finfo(torch.float32).eps


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> None:
    # Every PConv shares one forward code object: without a reset, compiling many layers would
    # pile up recompilations against Dynamo's per-code cache limit.
    torch._dynamo.reset()


def _compile(module: nn.Module, backend: str, **kwargs: object) -> Callable[..., object]:
    return torch.compile(module, fullgraph=True, backend=backend, **kwargs)  # type: ignore[return-value]


def _explain(module: nn.Module, *args: object) -> str:
    """Dynamo's account of the graph breaks in ``module(*args)``, for failure messages."""
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(module)(*args)
    return f"{explanation.graph_break_count} graph break(s): {explanation.break_reasons}"


def _run(fn: Callable[..., object], module: nn.Module, x: Tensor, mask: Tensor | None) -> dict[str, Tensor]:
    """Forward and backward through ``fn`` (the module, compiled or not): outputs and gradients."""
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    try:
        result = fn(x, mask)
    except torch._dynamo.exc.Unsupported as error:  # a graph break under fullgraph=True
        pytest.fail(f"{error}\n{_explain(module, x, mask)}")
    out, update = result if isinstance(result, tuple) else (result, None)
    upstream = torch.randn(out.shape, generator=seeded(1))
    out.backward(upstream)
    values = {"output": out.detach(), "grad_input": x.grad}
    if update is not None:
        values["mask"] = update
    values.update({f"grad_{name}": p.grad for name, p in module.named_parameters()})
    return values


def _assert_matches(compiled: dict[str, Tensor], eager: dict[str, Tensor]) -> None:
    """Same returned mask; the rest equal within float32 rounding (a compiler may fuse the ratio
    and bias into one kernel, or use an FMA): a few units of eps of the largest magnitude."""
    assert compiled.keys() == eager.keys()
    for name, expected in eager.items():
        actual = compiled[name]
        if name == "mask":
            assert actual.shape == expected.shape and torch.equal(actual, expected), name
            continue
        scale = expected.abs().max().item()
        torch.testing.assert_close(actual, expected, rtol=4 * EPS, atol=4 * EPS * scale, msg=name)


def _has_cxx_compiler() -> bool:
    return any(shutil.which(name) for name in ("g++", "c++", "clang++"))


class _WithMaskAndWithout(nn.Module):
    """One PConv2d called with a mask and with none (partial-convolution-based padding), in one
    graph: inductor compiles both paths, forward and backward, in one go (two graphs, one per
    path, took twice the code generation and C++ compilation)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = PConv2d(3, 4, 3, padding=1)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        out, update = self.layer(x, mask)
        padded, padding_update = self.layer(x)
        return torch.stack([out, padded]), torch.cat([update, padding_update.expand_as(update)])


@pytest.mark.skipif(not _has_cxx_compiler(), reason="inductor's CPU backend needs a C++ compiler")
def test_inductor_matches_eager_with_mask_and_without() -> None:
    """Inductor's generated C++ computes what eager computes, forward and backward, with a mask
    and without. (Most of this test's time, cold, is inductor probing the CPU's vector ISAs by
    compiling test programs; it caches the result in its cache directory.)"""
    torch.manual_seed(0)
    model = _WithMaskAndWithout()
    x, mask = torch.randn(2, 3, 9, 10), holes_and_a_box((2, 1, 9, 10))
    # One compile worker: a pool of them only contends for the cores with pytest's workers.
    inductor_config = importlib.import_module("torch._inductor.config")
    with inductor_config.patch(compile_threads=1):
        compiled = _run(_compile(model, "inductor"), model, x, mask)
    _assert_matches(compiled, _run(model, model, x, mask))


SPATIAL = {1: (12,), 2: (9, 10), 3: (5, 6, 7)}
L = MaskLayout
# (dims, mask layout, variant): every layout, with and without a mask. Variants: "bool" gives the
# mask as bools, "stride-2" a strided layer, "nvidia-no-bias" NVIDIA's class (the output alone)
# without a bias.
LAYER_CASES = [(2, MaskCase(layout), "") for layout in (L.SHARED, L.SINGLE, L.MULTI)]
LAYER_CASES += [(2, MaskCase(L.SINGLE, broadcast=True), ""), (2, MaskCase(L.SINGLE), "bool")]
LAYER_CASES += [(2, MaskCase(L.NONE), "stride-2"), (2, MaskCase(L.NONE, multi_flag=True), "")]
LAYER_CASES += [(2, MaskCase(L.NONE), "nvidia-no-bias"), (1, MaskCase(L.SINGLE), ""), (3, MaskCase(L.SHARED), "")]


@pytest.mark.parametrize(
    ("dims", "case", "variant"),
    LAYER_CASES,
    ids=["-".join(filter(None, (f"{d}d", c.name, v))) for d, c, v in LAYER_CASES],
)
def test_aot_eager_fullgraph_matches_eager(dims: int, case: MaskCase, variant: str) -> None:
    torch.manual_seed(0)
    cls = PartialConv2d if variant == "nvidia-no-bias" else LAYERS[dims]
    stride = 2 if variant == "stride-2" else 1
    bias = variant != "nvidia-no-bias"
    layer = cls(3, 4, 3, padding=1, stride=stride, bias=bias, multi_channel=case.ours_multi)
    x = torch.randn((2, 3, *SPATIAL[dims]))
    shape = case.shape(2, 3, SPATIAL[dims])
    mask = None if shape is None else holes_and_a_box(shape)
    if variant == "bool":
        mask = mask > 0
    _assert_matches(_run(_compile(layer, "aot_eager"), layer, x, mask), _run(layer, layer, x, mask))


def test_mask_none_with_dynamic_shapes_ignores_the_eager_cache() -> None:
    """Compiled with symbolic sizes, mask None computes the ratio for each size in the graph: an
    eager call beforehand (which fills the layer's cache) must not leak a stale ratio into it."""
    torch.manual_seed(0)
    layer = PConv2d(3, 4, 3, padding=1)
    compiled = _compile(layer, "aot_eager", dynamic=True)
    for size in ((8, 8), (11, 13), (8, 8)):
        x = torch.randn(2, 3, *size)
        eager = _run(layer, layer, x, None)
        _assert_matches(_run(compiled, layer, x, None), eager)


def test_network_has_no_graph_break() -> None:
    torch.manual_seed(0)
    net = ThreeLayerNet()
    x, mask = torch.randn(2, 3, 12, 12), holes_and_a_box((2, 1, 12, 12))
    explanation = torch._dynamo.explain(net)(x, mask)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    torch._dynamo.reset()
    _assert_matches(_run(_compile(net, "aot_eager"), net, x, mask), _run(net, net, x, mask))


def test_integer_mask_compiles_without_a_graph_break() -> None:
    """The 0/1 check of an integer mask is data-dependent: compiled graphs skip it."""
    torch.manual_seed(0)
    layer = PConv2d(3, 4, 3, padding=1)
    x, mask = torch.randn(2, 3, 10, 10), holes_and_a_box((2, 1, 10, 10)).to(torch.uint8)
    eager = _run(layer, layer, x, mask)
    _assert_matches(_run(_compile(layer, "aot_eager"), layer, x, mask), eager)
