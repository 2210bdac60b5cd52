"""The returned (update) mask: in the input's dtype whatever the mask's, in the layout the mask
came in, a multi-channel mask of its own (PartialConv2d, as NVIDIA's, which the next layer counts
as NVIDIA does, whatever was written to it) or a read-only expanded view (PConv2d) that the next
layer counts as one channel, and never a path for gradients."""

from __future__ import annotations

import pytest
import torch
from helpers import MaskCase, holes, image, seeded

from torch_pconv import PartialConv2d, PConv2d
from torch_pconv import reference as nvidia
from torch_pconv._masks import MaskLayout
from torch_pconv.check import reference_mask

CASES = [MaskCase(layout) for layout in (MaskLayout.SHARED, MaskLayout.SINGLE, MaskLayout.MULTI)]


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.float64, torch.bool, torch.uint8])
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_returned_mask_is_in_the_input_dtype(input_dtype, mask_dtype, case):
    layer = PConv2d(3, 4, 3, padding=1, multi_channel=case.ours_multi, dtype=input_dtype)
    mask = holes(case.shape(2, 3, (6, 6)), dtype=mask_dtype)
    out, update = layer(image((2, 3, 6, 6), dtype=input_dtype), mask)
    assert out.dtype == input_dtype
    assert update.dtype == input_dtype
    # The mask's dtype does not change the result.
    out_float, update_float = layer(image((2, 3, 6, 6), dtype=input_dtype), mask.to(input_dtype))
    assert torch.equal(out, out_float)
    assert torch.equal(update, update_float)


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.float64])
def test_returned_mask_without_a_mask_is_in_the_input_dtype(input_dtype):
    _, update = PConv2d(3, 4, 3, padding=1, dtype=input_dtype)(image((2, 3, 6, 6), dtype=input_dtype))
    assert update.dtype == input_dtype
    assert update.shape == (1, 1, 6, 6)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_returned_mask_shapes(case):
    """A mask comes back in the layout it came in, with C_out channels where it had C_in."""
    layer = PConv2d(2, 4, 3, stride=2, padding=1, multi_channel=case.ours_multi)
    _, update = layer(image((3, 2, 6, 6)), holes(case.shape(3, 2, (6, 6))))
    assert update.shape == case.returned_shape(3, 4, (3, 3))


@pytest.mark.parametrize("mask_batch", [2, 1])
def test_multi_channel_returned_mask_shape_and_read_only_view(mask_batch):
    layer = PConv2d(3, 5, 3, multi_channel=True)
    _, update = layer(image((2, 3, 6, 6)), holes((mask_batch, 3, 6, 6)))
    assert update.shape == (mask_batch, 5, 4, 4)
    # Every output channel carries the same mask (NVIDIA's ones kernel spans all input channels).
    assert torch.equal(update, update[:, :1].expand_as(update))
    with pytest.raises(RuntimeError):
        update.mul_(0)
    # A clone is a plain tensor the user can edit.
    update.clone().mul_(0)


def test_multi_channel_with_a_single_input_channel_accepts_a_one_channel_mask():
    layer = PConv2d(1, 4, 3, multi_channel=True)
    _, update = layer(image((2, 1, 6, 6)), holes((2, 1, 6, 6)))
    assert update.shape == (2, 4, 4, 4)


@pytest.mark.parametrize("cls", [PConv2d, PartialConv2d])
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_a_float_mask_that_requires_grad_gets_nvidias_gradient(case, cls):
    """NVIDIA's gradient, through ``input * mask`` alone (its ratio is computed without grad);
    the returned mask carries none."""
    layer = cls(3, 4, 3, padding=1, multi_channel=case.ours_multi, return_mask=True).double()
    ref = nvidia.PartialConv2d(3, 4, 3, padding=1, multi_channel=case.ref_multi, return_mask=True).double()
    ref.load_state_dict(layer.state_dict())
    mask = holes(case.shape(2, 3, (6, 6)), dtype=torch.float64).requires_grad_()
    x = image((2, 3, 6, 6), dtype=torch.float64).requires_grad_()
    out, update = layer(x, mask)
    assert not update.requires_grad
    out.square().sum().backward()
    ours = (mask.grad, x.grad, layer.weight.grad)
    mask.grad = x.grad = None
    expected, _ = ref(x, reference_mask(case.layout, mask, 3))
    expected.square().sum().backward()
    for got, want in zip(ours, (mask.grad, x.grad, ref.weight.grad), strict=True):
        assert got is not None and torch.allclose(got, want, rtol=0, atol=1e-12 * want.abs().max())


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_a_mask_alone_that_requires_grad_makes_the_output_require_grad(case):
    layer = PartialConv2d(3, 4, 3, padding=1, multi_channel=case.ours_multi).requires_grad_(False)
    mask = holes(case.shape(2, 3, (6, 6))).requires_grad_()
    out = layer(image((2, 3, 6, 6)), mask)
    assert out.requires_grad
    out.sum().backward()
    assert mask.grad is not None and mask.grad.abs().sum() > 0


def test_a_mask_that_requires_grad_costs_nothing_when_grad_is_off():
    layer = PConv2d(3, 4, 3, padding=1)
    mask = holes((2, 1, 6, 6)).requires_grad_()
    with torch.no_grad():
        out, _ = layer(image((2, 3, 6, 6)), mask)
    assert not out.requires_grad


# --- The returned multi-channel mask -------------------------------------------------------------


def _multi_inputs(channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = seeded(11)
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


def _chain(cls: type) -> tuple:
    """Two multi-channel layers of ``cls``, the second (legacy_behaviour: NVIDIA's float32
    arithmetic, bit for bit) twinned with NVIDIA's, and the first's output and returned mask."""
    first = cls(3, 4, 3, padding=1, multi_channel=True, return_mask=True)
    second = cls(4, 5, 3, padding=1, multi_channel=True, return_mask=True, legacy_behaviour=True)
    ref = nvidia.PartialConv2d(4, 5, 3, padding=1, multi_channel=True, return_mask=True)
    ref.load_state_dict(second.state_dict())
    hidden, update = first(*_multi_inputs())
    return second, ref, hidden, update


@pytest.mark.parametrize(("cls", "counted"), [(PConv2d, MaskLayout.SHARED), (PartialConv2d, MaskLayout.MULTI)])
def test_a_returned_multi_channel_mask_fed_back(cls, counted, monkeypatch):
    """PConv2d's expanded view is one channel, and no one can write to it: counted once.
    PartialConv2d's mask is a tensor of its own, which its user may write to in any way (some
    of which, .data and numpy, leave no trace): counted channel by channel, as NVIDIA does."""
    from torch_pconv import pconv

    second, ref, hidden, update = _chain(cls)
    layouts = []
    real = pconv.ratio_and_update
    monkeypatch.setattr(pconv, "ratio_and_update", lambda m, layout, *a: layouts.append(layout) or real(m, layout, *a))
    out, _ = second(hidden, update)
    assert layouts == [counted]
    expected, _ = ref(hidden, update)
    assert torch.equal(out, expected)  # legacy_behaviour: NVIDIA's float32 arithmetic, bit for bit


def _edit_in_place(update):
    update[:, 1:3, 2:7, 2:7] = 0


def _edit_through_data(update):
    update.data[:, 1:3, 2:7, 2:7] = 0  # leaves _version as it was


def _edit_through_numpy(update):
    update.numpy()[:, 1:3, 2:7, 2:7] = 0  # leaves _version as it was


@pytest.mark.parametrize("edit", [_edit_in_place, _edit_through_data, _edit_through_numpy])
def test_an_edited_returned_mask_is_counted_as_edited(edit):
    # After an edit the channels differ: the next layer must read the mask as it is now.
    second, ref, hidden, update = _chain(PartialConv2d)
    edit(update)
    out, new_update = second(hidden, update)
    expected, expected_update = ref(hidden, update)
    assert torch.equal(out, expected)
    assert torch.equal(new_update, expected_update)
