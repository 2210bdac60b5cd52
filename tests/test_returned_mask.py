"""The returned (update) mask: in the input's dtype whatever the mask's, in the layout the mask
came in, a multi-channel mask of its own (PartialConv2d, as NVIDIA's) or a read-only expanded view
(PConv2d) that the next layer counts as one channel unless it was edited, and never a path for
gradients."""

from __future__ import annotations

import pytest
import torch
from helpers import MaskCase, holes, image, seeded

from torch_pconv import PartialConv2d, PConv2d
from torch_pconv import reference as nvidia
from torch_pconv.masks import MaskLayout

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


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_no_gradient_reaches_the_mask(case):
    """The mask is a constant, even when the caller's mask requires grad."""
    layer = PConv2d(3, 4, 3, padding=1, multi_channel=case.ours_multi)
    mask = holes(case.shape(2, 3, (6, 6))).requires_grad_()
    x = image((2, 3, 6, 6)).requires_grad_()
    out, update = layer(x, mask)
    assert not update.requires_grad
    (out.square().sum() + update.sum()).backward()
    assert mask.grad is None
    assert x.grad is not None and layer.weight.grad is not None


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


@pytest.mark.parametrize("cls", [PConv2d, PartialConv2d])
def test_a_returned_multi_channel_mask_fed_back_is_counted_as_one_channel(cls, monkeypatch):
    from torch_pconv import pconv

    second, ref, hidden, update = _chain(cls)
    layouts = []
    valid_map = pconv.valid_map
    monkeypatch.setattr(pconv, "valid_map", lambda m, layout, *a: layouts.append(layout) or valid_map(m, layout, *a))
    out, _ = second(hidden, update)
    assert layouts == [pconv.MaskLayout.SHARED], "the channel-constant mask was counted channel by channel"
    expected, _ = ref(hidden, update)
    assert torch.equal(out, expected)  # legacy_behaviour: NVIDIA's float32 arithmetic, bit for bit


def test_an_edited_returned_mask_is_counted_as_edited():
    # After an in-place edit the channels differ: the layer must see the edit, not the tag.
    second, ref, hidden, update = _chain(PartialConv2d)
    update[:, 1:3, 2:7, 2:7] = 0
    out, new_update = second(hidden, update)
    expected, expected_update = ref(hidden, update)
    assert torch.equal(out, expected)
    assert torch.equal(new_update, expected_update)
