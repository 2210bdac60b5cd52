"""What autograd keeps, and what it checks: the layer keeps the input instead of the masked
input (through saved-tensor hooks), so it must redo autograd's in-place checks, step aside
for the caller's own hooks (checkpointing, offloading), and for torch.func and forward-mode AD."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from torch_pconv import PConv2d, quirks
from torch_pconv import reference as ref_module
from torch_pconv.holes import random_holes

# torch.func and checkpointing call the deprecated torch.jit.script internally.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


# Where the private saved-tensor state is missing (torch 2.1 to 2.5), the layer keeps the masked
# input as autograd would: correct, but what these tests look at does not happen.
swaps_saved_tensors = pytest.mark.skipif(
    not quirks.may_swap_saved_tensors(),
    reason=f"torch {torch.__version__} lacks the saved-tensor hook state; the masked input is kept as autograd would",
)


def _case(seed: int = 0, requires_grad: bool = True):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    layer = PConv2d(3, 4, 3, padding=1, dtype=torch.float64)
    x = torch.randn((2, 3, 8, 8), generator=gen, dtype=torch.float64).requires_grad_(requires_grad)
    mask = random_holes((2, 1, 8, 8), 0.4, gen).double()
    return layer, x, mask


def _reference(layer: PConv2d) -> ref_module.PartialConv2d:
    ref = ref_module.PartialConv2d(3, 4, 3, padding=1, return_mask=True, dtype=torch.float64)
    ref.load_state_dict(layer.state_dict())
    return ref


@swaps_saved_tensors
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
    out, update = layer(x, mask)
    out.sum().backward()
    expected = [t.grad.clone() for t in (x, layer.weight, layer.bias)]
    for t in (x, layer.weight, layer.bias):
        t.grad = None
    out, update = layer(x, mask)
    update.fill_(7)
    out.sum().backward()
    for t, e in zip((x, layer.weight, layer.bias), expected, strict=True):
        assert torch.equal(t.grad, e)


@swaps_saved_tensors
def test_the_masked_input_is_not_kept_for_backward():
    """The convolution's saved input is rebuilt from the input on each access, not stored."""
    layer, x, mask = _case()
    out, _ = layer(x, mask)
    node = out.grad_fn
    while node is not None and node.name() != "ConvolutionBackward0":
        node = node.next_functions[0][0]
    assert node is not None
    assert node._saved_input is not node._saved_input  # two accesses, two tensors
    assert torch.equal(node._saved_input, torch.where(mask != 0, x, 0) * mask)


def test_outer_saved_tensor_hooks_see_every_saved_tensor():
    """Under the caller's hooks (offloading, checkpointing) the layer does not swap in its own."""
    layer, x, mask = _case()
    seen: list[tuple[int, ...]] = []

    def pack(t):
        seen.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, _ = layer(x, mask)
    assert tuple(x.shape) in seen  # the masked input, saved by the convolution
    out.sum().backward()


def test_activation_checkpointing_matches():
    layer, x, mask = _case()
    second = PConv2d(4, 2, 3, padding=1, dtype=torch.float64)

    def block(x):
        out, update = layer(x, mask)
        return second(torch.relu(out), update)[0]

    block(x).sum().backward()
    expected = [t.grad.clone() for t in (x, layer.weight, second.weight)]
    for t in (x, layer.weight, second.weight):
        t.grad = None
    checkpoint(block, x, use_reentrant=False).sum().backward()
    for t, e in zip((x, layer.weight, second.weight), expected, strict=True):
        torch.testing.assert_close(t.grad, e, rtol=0, atol=1e-12)


def test_torch_func_grad_matches_the_reference():
    layer, x, mask = _case()
    ref = _reference(layer)
    params = dict(layer.named_parameters())

    def loss(module, params, x):
        out = torch.func.functional_call(module, params, (x, mask))
        return (out[0] if isinstance(out, tuple) else out).square().sum()

    ours = torch.func.grad(loss, argnums=(1, 2))(layer, params, x.detach())
    theirs = torch.func.grad(loss, argnums=(1, 2))(ref, dict(ref.named_parameters()), x.detach())
    for name in params:
        torch.testing.assert_close(ours[0][name], theirs[0][name], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-12, atol=1e-12)


def test_forward_mode_ad_matches_the_reference():
    import torch.autograd.forward_ad as fwAD

    layer, x, mask = _case()
    ref = _reference(layer)
    tangent = torch.randn_like(x)
    results = []
    for module in (layer, ref):
        with fwAD.dual_level():
            out = module(fwAD.make_dual(x.detach(), tangent), mask)[0]
            results.append(fwAD.unpack_dual(out).tangent)
    torch.testing.assert_close(results[0], results[1], rtol=1e-12, atol=1e-12)
