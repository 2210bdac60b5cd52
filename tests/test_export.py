"""Export: torch.export with a mask input, ONNX run by onnxruntime, and TorchScript by tracing
(torch.jit.script refuses, pointing to tracing).

The masks have holes wider than the kernel, so some windows count 0: where NVIDIA's arithmetic
relies on ``+ 1e-8``, which ONNX exporters drop (the graph holds Reciprocal(count)), giving NaN.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from helpers import ThreeLayerNet, cached_tensors, seeded
from torch import Tensor, nn

from torch_pconv import PConv2d
from torch_pconv.reference import PartialConv2d as Reference

pytestmark = [
    pytest.mark.slow,
    # torch.jit.* and the ONNX exporter warn about their own deprecations and about Python-level
    # shape checks that tracing specializes; neither is what these tests judge.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]

EPS = torch.finfo(torch.float32).eps

try:
    from torch.export import Dim
except ImportError:  # torch 2.1: torch.export is there, without dynamic shapes
    Dim = None

needs_dim = pytest.mark.skipif(
    Dim is None, reason=f"torch.export.Dim appeared in 2.2; this is torch {torch.__version__}"
)


def _net() -> ThreeLayerNet:
    torch.manual_seed(0)
    return ThreeLayerNet().eval()


def _inputs(batch: int = 2, height: int = 16, width: int = 16, seed: int = 0) -> tuple[Tensor, Tensor]:
    """An image and a (B, 1, H, W) mask: random holes plus a box wide enough that every layer of
    ``Net`` (the third at half resolution) has windows of holes only."""
    g = seeded(seed)
    x = torch.randn(batch, 3, height, width, generator=g)
    mask = (torch.rand(batch, 1, height, width, generator=g) >= 0.3).float()
    mask[:, :, 2:13, 2 + seed : 14 + seed] = 0
    return x, mask


def _assert_close(actual: Tensor, expected: Tensor, atol: float | None = None) -> None:
    """Equal within float32 rounding: a few eps of the largest magnitude (or ``atol``)."""
    actual, expected = torch.as_tensor(actual), expected.detach()
    tol = 4 * EPS * expected.abs().max().item() if atol is None else atol
    torch.testing.assert_close(actual, expected, rtol=4 * EPS, atol=tol)


def test_masks_reach_zero_count_windows() -> None:
    """The premise of the export tests: each layer sees windows with no valid entry."""
    net = _net()
    x, mask = _inputs()
    for layer in (net.c1, net.c2, net.c3):
        x, mask = layer(x, mask)
        assert (mask == 0).any(), f"no 0-count window in {layer}"


# torch.export ---------------------------------------------------------------------------------


@pytest.mark.parametrize("masked", [True, False], ids=["mask", "no_mask"])
def test_export_with_static_shapes_matches_eager(masked) -> None:
    """On every supported torch, 2.1 included (which has torch.export, not its Dim)."""
    net = _net()
    x, mask = _inputs()
    args = (x, mask) if masked else (x,)
    program = torch.export.export(net, args)
    other = _inputs(seed=1)
    for inputs in (args, other if masked else other[:1]):
        out, update = program.module()(*inputs)
        expected = net(*inputs)
        _assert_close(out, expected[0])
        assert torch.equal(update, expected[1])


def test_export_from_an_expanded_mask_serves_any_mask() -> None:
    """An expanded (stride-0) example mask must not fix the graph on the one-channel path: the
    graph keeps no guard on strides, and a mask of C channels of its own must be counted in full."""
    layer = PConv2d(3, 4, 3, padding=1, multi_channel=True).eval()
    x = torch.randn(1, 3, 5, 5, generator=seeded(0))
    program = torch.export.export(layer, (x, torch.ones(1, 1, 5, 5).expand(1, 3, 5, 5)))
    mask = torch.ones(1, 3, 5, 5)
    mask[:, 0, 1:4, 1:4] = 0
    out, update = program.module()(x, mask)
    expected, expected_update = layer(x, mask)
    _assert_close(out, expected)
    assert torch.equal(update, expected_update)


@needs_dim
def test_export_with_mask_input_matches_eager(tmp_path) -> None:
    net = _net()
    x, mask = _inputs()
    batch = Dim("batch")
    program = torch.export.export(net, (x, mask), dynamic_shapes={"x": {0: batch}, "mask": {0: batch}})
    path = tmp_path / "net.pt2"
    torch.export.save(program, path)
    loaded = torch.export.load(path).module()
    # The mask is an input of the graph, not a constant: a different mask, and another batch size.
    for args in ((x, mask), _inputs(batch=3, seed=1)):
        expected = net(*args)
        for module in (program.module(), loaded):
            out, update = module(*args)
            _assert_close(out, expected[0])
            assert torch.equal(update, expected[1])


@needs_dim
def test_export_mask_none_with_dynamic_size() -> None:
    """mask None: the ratio is computed in the graph for each size, not taken from the cache."""
    torch.manual_seed(0)
    layer = PConv2d(3, 4, 3, padding=1).eval()
    x, _ = _inputs()
    layer(x)  # fill the eager cache for this size first: it must not end up in the graph
    height, width = Dim("height", min=4, max=64), Dim("width", min=4, max=64)
    program = torch.export.export(layer, (x,), dynamic_shapes={"input": {2: height, 3: width}})
    for size in ((16, 16), (7, 11)):
        y, _ = _inputs(height=size[0], width=size[1])
        out, update = program.module()(y)
        expected, expected_update = layer(y)
        _assert_close(out, expected)
        assert torch.equal(update, expected_update)


# ONNX -----------------------------------------------------------------------------------------


def _onnx_session(module: nn.Module, args: tuple[Tensor, ...], path, names: list[str]):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        pytest.skip(f"torch.onnx.export(dynamo=True) appeared in torch 2.5; this is torch {torch.__version__}")
    torch.onnx.export(module, args, path, input_names=names, dynamo=True)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_onnx_matches_eager_within_1e_5(tmp_path) -> None:
    net = _net()
    session = _onnx_session(net, _inputs(), tmp_path / "net.onnx", ["x", "mask"])
    for x, mask in (_inputs(), _inputs(seed=1)):
        out, update = session.run(None, {"x": x.numpy(), "mask": mask.numpy()})
        expected, expected_update = net(x, mask)
        _assert_close(torch.from_numpy(out), expected, atol=1e-5)
        assert torch.equal(torch.from_numpy(update), expected_update)


def test_onnx_mask_none_matches_eager(tmp_path) -> None:
    torch.manual_seed(0)
    layer = PConv2d(3, 4, 3, padding=1, stride=2).eval()
    x, _ = _inputs()
    layer(x)  # a filled eager cache must not change what is exported
    session = _onnx_session(layer, (x,), tmp_path / "layer.onnx", ["x"])
    out, update = session.run(None, {"x": x.numpy()})
    expected, expected_update = layer(x)
    _assert_close(torch.from_numpy(out), expected, atol=1e-5)
    assert torch.equal(torch.from_numpy(update), expected_update)


def test_onnx_of_the_reference_gives_nan_in_zero_count_windows(tmp_path) -> None:
    """Why the above matters: exported, the reference's ``/ (count + 1e-8)`` loses its eps, and
    onnxruntime returns inf * 0 = NaN where ours returns 0."""

    class Single(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv = Reference(3, 4, 3, padding=1, return_mask=True)

        def forward(self, x: Tensor, mask: Tensor) -> Tensor:
            return self.conv(x, mask)[0]

    reference = Single().eval()
    x, mask = _inputs()
    session = _onnx_session(reference, (x, mask), tmp_path / "reference.onnx", ["x", "mask"])
    (out,) = session.run(None, {"x": x.numpy(), "mask": mask.numpy()})
    assert torch.isfinite(reference(x, mask)).all(), "eager float32 keeps the eps"
    assert torch.isnan(torch.from_numpy(out)).any()


# TorchScript ----------------------------------------------------------------------------------


def test_traced_model_saves_loads_and_matches_eager(tmp_path) -> None:
    """NVIDIA/partialconv #33: a model holding PConv2d in eval mode, traced, saved, loaded, run."""
    net = _net()
    x, mask = _inputs()
    traced = torch.jit.trace(net, (x, mask))
    path = tmp_path / "net.pt"
    torch.jit.save(traced, str(path))
    loaded = torch.jit.load(str(path))
    for args in ((x, mask), _inputs(batch=3, seed=1)):
        x_eager, x_loaded = args[0].clone().requires_grad_(), args[0].clone().requires_grad_()
        expected, expected_update = net(x_eager, args[1])
        out, update = loaded(x_loaded, args[1])
        _assert_close(out, expected)
        assert torch.equal(update, expected_update)
        # Autograd still runs through the loaded graph.
        expected.sum().backward()
        out.sum().backward()
        _assert_close(x_loaded.grad, x_eager.grad)


def test_traced_mask_none_follows_the_input_size(tmp_path) -> None:
    """Tracing records the mask=None ratio computation, whatever the eager cache holds, and leaves
    the cache as it was (no entries keyed on the tracer's size tensors)."""
    torch.manual_seed(0)
    layer = PConv2d(3, 4, 3, padding=1).eval()
    x, _ = _inputs()
    layer(x)  # the eager cache now holds this size
    before = [t.data_ptr() for t in cached_tensors(layer)]
    traced = torch.jit.trace(layer, (x,))
    assert [t.data_ptr() for t in cached_tensors(layer)] == before, "tracing changed the mask=None cache"
    torch.jit.save(traced, str(tmp_path / "layer.pt"))
    loaded = torch.jit.load(str(tmp_path / "layer.pt"))
    for size in ((16, 16), (9, 13)):
        y, _ = _inputs(height=size[0], width=size[1])
        out, update = loaded(y)
        expected, expected_update = layer(y)
        _assert_close(out, expected)
        assert torch.equal(update, expected_update)


@pytest.mark.parametrize("module", ["layer", "network"])
def test_script_raises_and_points_to_tracing(module) -> None:
    """torch.jit.script cannot compile the layer's Python mask handling: it fails, on the layer
    itself or inside a model, with a message that names the supported path (tracing), not a
    TorchScript internal."""
    torch.manual_seed(0)
    target = PConv2d(3, 4, 3, padding=1) if module == "layer" else ThreeLayerNet()
    with pytest.raises(RuntimeError, match=r"cannot be compiled by torch\.jit\.script.*torch\.jit\.trace\("):
        torch.jit.script(target)
