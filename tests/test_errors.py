"""Bad input: one test per error. Each raises torch_pconv.PConvError, which is both a TypeError
(what torch-pconv 0.1.1 raised, and what its users catch) and a ValueError, with a message that
names the argument, what it got, and what was expected."""

from __future__ import annotations

import re
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from helpers import image

from torch_pconv import PConv1d, PConv2d, PConv3d, PConvError


@contextmanager
def raises_pconv_error(*patterns: str):
    """Expect a PConvError (a TypeError and a ValueError) whose message matches every pattern."""
    with pytest.raises(PConvError, match=patterns[0]) as info:
        yield info
    error = info.value
    assert type(error) is PConvError
    assert isinstance(error, TypeError) and isinstance(error, ValueError)
    for pattern in patterns[1:]:
        assert re.search(pattern, str(error)), f"{pattern!r} not in {str(error)!r}"


def test_pconv_error_is_a_type_error_and_a_value_error():
    assert issubclass(PConvError, TypeError) and issubclass(PConvError, ValueError)
    # So both old (TypeError) and new (ValueError) handlers catch it.
    for handled in (TypeError, ValueError):
        with pytest.raises(handled):
            PConv2d(3, 4, 3)(image((3, 8, 8)))


# --- The input -----------------------------------------------------------------------------------


def test_unbatched_input():
    with raises_pconv_error(r"^input:", r"4-D", r"\(B, C, H, W\)", r"got shape \(3, 8, 8\)"):
        PConv2d(3, 4, 3)(image((3, 8, 8)))


@pytest.mark.parametrize(
    ("cls", "shape", "expected"),
    [(PConv1d, (2, 3, 4, 8), r"3-D tensor \(B, C, L\)"), (PConv3d, (2, 3, 8, 8), r"5-D tensor \(B, C, D, H, W\)")],
)
def test_wrong_input_rank_in_1d_and_3d(cls, shape, expected):
    with raises_pconv_error(r"^input:", expected, re.escape(str(shape))):
        cls(3, 4, 3)(image(shape))


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool])
def test_non_float_input(dtype):
    with raises_pconv_error(r"^input:", r"expected a floating-point dtype", re.escape(str(dtype))):
        PConv2d(3, 4, 3)(image((2, 3, 8, 8), dtype=dtype))


def test_non_tensor_input():
    with raises_pconv_error(r"^input:", r"expected a torch\.Tensor", r"ndarray"):
        PConv2d(3, 4, 3)(np.zeros((2, 3, 8, 8), dtype=np.float32))


# --- The mask's shape ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 8), (2, 1, 1, 8, 8)])
def test_mask_of_wrong_rank(shape):
    with raises_pconv_error(r"^mask_in:", r"3-D \(B, \*S\) or 4-D \(B, C, \*S\)", re.escape(str(shape))):
        PConv2d(3, 4, 3)(image((2, 3, 8, 8)), torch.ones(shape))


@pytest.mark.parametrize("shape", [(3, 8, 8), (3, 1, 8, 8)])
def test_batch_mismatch(shape):
    with raises_pconv_error(r"^mask_in:", r"batch size 3", r"input's batch size 2", r"expected 2 or 1"):
        PConv2d(3, 4, 3)(image((2, 3, 8, 8)), torch.ones(shape))


@pytest.mark.parametrize("shape", [(2, 8, 7), (2, 1, 7, 8)])
def test_spatial_mismatch(shape):
    got = re.escape(str(tuple(shape[-2:])))
    with raises_pconv_error(r"^mask_in:", r"spatial size " + got, r"input's \(8, 8\)"):
        PConv2d(3, 4, 3)(image((2, 3, 8, 8)), torch.ones(shape))


def test_per_channel_mask_without_multi_channel_hints_at_the_flag():
    with raises_pconv_error(r"^mask_in:", r"expected 1 channel", r"got 3 channels", r"multi_channel=True"):
        PConv2d(3, 4, 3)(image((2, 3, 8, 8)), torch.ones(2, 3, 8, 8))


def test_multi_channel_mask_with_the_wrong_channel_count():
    with raises_pconv_error(r"^mask_in:", r"expected 3 channels \(in_channels\)", r"got 2 channels"):
        PConv2d(3, 4, 3, multi_channel=True)(image((2, 3, 8, 8)), torch.ones(2, 2, 8, 8))


def test_one_channel_mask_with_multi_channel_and_several_input_channels():
    # Not silently broadcast over the channels: NVIDIA's layer would count it as one channel.
    with raises_pconv_error(r"^mask_in:", r"expected 3 channels \(in_channels\)", r"got 1 channels"):
        PConv2d(3, 4, 3, multi_channel=True)(image((2, 3, 8, 8)), torch.ones(2, 1, 8, 8))


def test_wrong_mask_in_3d():
    with raises_pconv_error(r"^mask_in:", r"spatial size \(4, 8, 8\)", r"input's \(5, 8, 8\)"):
        PConv3d(2, 4, 3)(image((1, 2, 5, 8, 8)), torch.ones(1, 1, 4, 8, 8))


# --- The mask's type, device and values ----------------------------------------------------------


def test_mask_on_another_device():
    mask = torch.ones(2, 1, 8, 8, device="meta")
    with raises_pconv_error(r"^mask_in:", r"expected a tensor on cpu", r"got meta"):
        PConv2d(3, 4, 3)(image((2, 3, 8, 8)), mask)


@pytest.mark.parametrize(
    "mask", [np.ones((2, 8, 8), dtype=np.float32), [[1.0] * 8] * 8, 1.0], ids=["ndarray", "list", "float"]
)
def test_non_tensor_mask(mask):
    with raises_pconv_error(r"^mask_in:", r"expected a torch\.Tensor or None", type(mask).__name__):
        PConv2d(3, 4, 3)(image((2, 3, 8, 8)), mask)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_mask(dtype):
    with raises_pconv_error(r"^mask_in:", r"expected a float, bool or integer mask", re.escape(str(dtype))):
        PConv2d(3, 4, 3)(image((2, 3, 8, 8)), torch.ones(2, 1, 8, 8, dtype=dtype))


def test_input_dtype_differs_from_the_layers():
    with raises_pconv_error(r"^input:", r"expected dtype torch.float32", r"torch.float64"):
        PConv2d(3, 4, 3)(image((2, 3, 8, 8), dtype=torch.float64))


def test_input_channels_differ_from_in_channels():
    with raises_pconv_error(r"^input:", r"expected 3 channels \(in_channels\)", r"\(2, 5, 8, 8\)"):
        PConv2d(3, 4, 3)(image((2, 5, 8, 8)))


def test_an_empty_batch_with_an_integer_mask_is_fine():
    out, mask = PConv2d(3, 4, 3, padding=1)(image((0, 3, 8, 8)), torch.ones(0, 1, 8, 8, dtype=torch.uint8))
    assert out.shape == (0, 4, 8, 8) and mask.shape == (0, 1, 8, 8)
