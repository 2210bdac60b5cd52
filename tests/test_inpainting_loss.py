"""InpaintingLoss against values computed by hand on tiny tensors, and the VGG-16 feature stack."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

pytest.importorskip("PIL")
pytest.importorskip("pytorch_msssim")

from torch_pconv.inpainting import (
    InpaintingLoss,
    VGG16Features,
    gram_matrix,
    hole_border,
    total_variation,
)
from torch_pconv.inpainting.loss import VGG16_FILE, VGGWeightsError, VGGWeightsNotFoundError


class Identity(nn.Module):
    """A feature extractor returning the image itself: the perceptual and style terms by hand."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x]


def _row(*values: float) -> torch.Tensor:
    return torch.tensor(values).view(1, 1, 1, -1)


def test_every_term_by_hand():
    # One channel, one row of two pixels: the first valid, the second a hole.
    output, target, mask = _row(1.0, 3.0), _row(0.0, 1.0), _row(1.0, 0.0)
    # comp = mask * target + (1 - mask) * output = [0, 3]
    terms = InpaintingLoss(Identity())(output, target, mask)
    expected = {
        "valid": (1 + 0) / 2,  # |1 - 0| on the valid pixel, size-averaged over both pixels
        "hole": (0 + 2) / 2,  # |3 - 1| on the hole
        "perceptual": (1 + 2) / 2 + (0 + 2) / 2,  # out vs gt, comp vs gt
        # Gram matrices with K = 1/(C·H·W) = 1/2: out (1 + 9)/2 = 5, gt 1/2, comp 9/2.
        "style_out": abs(5 - 0.5),
        "style_comp": abs(4.5 - 0.5),
        # The dilated hole covers both pixels: one horizontal pair, |3 - 0|, over 2 elements.
        "tv": 3 / 2,
    }
    expected["total"] = (
        1 * expected["valid"]
        + 6 * expected["hole"]
        + 0.05 * expected["perceptual"]
        + 120 * (expected["style_out"] + expected["style_comp"])
        + 0.1 * expected["tv"]
    )
    assert set(terms) == set(expected)
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-6), name


def test_weights_are_overridable_and_none_skips_vgg():
    output, target, mask = _row(1.0, 3.0), _row(0.0, 1.0), _row(1.0, 0.0)
    terms = InpaintingLoss(Identity(), valid=2, hole=0, perceptual=1, style=0, tv=10)(output, target, mask)
    assert terms["total"].item() == pytest.approx(2 * 0.5 + 1 * 2.5 + 10 * 1.5)
    plain = InpaintingLoss(None)(output, target, mask)
    assert plain["perceptual"].item() == plain["style_out"].item() == plain["style_comp"].item() == 0
    assert plain["total"].item() == pytest.approx(0.5 + 6 * 1.0 + 0.1 * 1.5)
    assert "hole=6.0" in repr(InpaintingLoss())


def test_size_averaging_over_channels_and_batch():
    # Every L1 term is a mean over all elements: repeating the batch or the channels changes nothing.
    g = torch.Generator().manual_seed(0)
    output, target = torch.rand(1, 1, 4, 4, generator=g), torch.rand(1, 1, 4, 4, generator=g)
    mask = (torch.rand(1, 1, 4, 4, generator=g) > 0.5).float()
    loss = InpaintingLoss(Identity())
    one = loss(output, target, mask)
    many = loss(output.expand(3, 3, -1, -1), target.expand(3, 3, -1, -1), mask.expand(3, 1, -1, -1))
    for name in ("valid", "hole", "perceptual", "tv"):
        assert many[name].item() == pytest.approx(one[name].item(), rel=1e-6), name


def test_gram_matrix_by_hand():
    features = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 2)  # C=2, H=1, W=2
    expected = torch.tensor([[1 + 4, 3 + 8], [3 + 8, 9 + 16]]) / (2 * 1 * 2)
    torch.testing.assert_close(gram_matrix(features), expected[None])


def test_hole_border_is_the_one_pixel_dilation():
    mask = torch.ones(1, 1, 5, 5)
    mask[0, 0, 2, 2] = 0
    border = hole_border(mask)
    expected = torch.zeros(1, 1, 5, 5)
    expected[0, 0, 1:4, 1:4] = 1
    assert torch.equal(border, expected)


def test_hole_border_of_a_multi_channel_mask_is_the_union_of_its_holes():
    # A pixel is a hole if any channel is: channel 0 has a hole at (1, 1), channel 2 at (3, 4).
    mask = torch.ones(1, 3, 5, 6)
    mask[0, 0, 1, 1] = 0
    mask[0, 2, 3, 4] = 0
    union = mask.amin(1, keepdim=True)
    expected = torch.zeros(1, 1, 5, 6)
    expected[0, 0, 0:3, 0:3] = 1
    expected[0, 0, 2:5, 3:6] = 1
    assert torch.equal(hole_border(mask), expected)
    assert torch.equal(hole_border(union), expected)
    # The loss's TV term over that region: every channel of I_comp, the union's dilation.
    g = torch.Generator().manual_seed(5)
    output, target = torch.rand(1, 3, 5, 6, generator=g), torch.rand(1, 3, 5, 6, generator=g)
    comp = mask * target + (1 - mask) * output
    tv = InpaintingLoss(None)(output, target, mask)["tv"]
    assert tv.item() == pytest.approx(total_variation(comp, expected).item(), rel=1e-6)


def test_total_variation_counts_only_pairs_inside_the_region():
    image = torch.tensor([[0.0, 1.0, 3.0], [2.0, 2.0, 7.0]]).view(1, 1, 2, 3)
    region = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]).view(1, 1, 2, 3)
    # Horizontal pairs inside: (0,1) |1-0|, (1,0)-(1,1) |0|, (1,1)-(1,2) |5|; vertical: |2-0|, |2-1|.
    assert total_variation(image, region).item() == pytest.approx((1 + 0 + 5 + 2 + 1) / 6)


def test_loss_is_float32_under_autocast_and_backpropagates():
    g = torch.Generator().manual_seed(1)
    output = torch.rand(2, 3, 16, 16, generator=g, requires_grad=True)
    target = torch.rand(2, 3, 16, 16, generator=g)
    mask = (torch.rand(2, 1, 16, 16, generator=g) > 0.3).float()
    torch.manual_seed(0)
    loss = InpaintingLoss(VGG16Features())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = loss(output.to(torch.bfloat16), target, mask)
    assert all(t.dtype == torch.float32 and torch.isfinite(t) for t in terms.values())
    terms["total"].backward()
    assert output.grad is not None and output.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.extractor.parameters())


def _autocast_lowers(dtype: torch.dtype) -> bool:
    """Whether CPU autocast runs a matmul in ``dtype`` on this torch (torch 2.1 has no float16:
    it warns, then refuses the dtype on entering)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.autocast("cpu", dtype=dtype):
                return bool(torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == dtype)
        except RuntimeError:
            return False


class LargeActivations(nn.Module):
    """One convolution with weights of standard deviation 100: features in the hundreds, whose
    Gram matrices (squares, in the tens of thousands, summed) overflow float16."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.normal_(0, 100, generator=torch.Generator().manual_seed(6))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.relu(self.conv(x))]


@pytest.mark.parametrize("extractor", ["vgg16", "large"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_loss_under_autocast_equals_the_float32_loss(extractor, dtype):
    # The feature extractor and the Gram matrices run in float32 with autocast off: under
    # autocast, the loss of the same float32 inputs is the float32 loss (in bfloat16 the VGG
    # terms moved by 1e-3; in float16 large activations made the style terms NaN).
    if not _autocast_lowers(dtype):
        pytest.skip(f"CPU autocast does not run {dtype} on torch {torch.__version__}")
    g = torch.Generator().manual_seed(7)
    output = torch.rand(2, 3, 32, 32, generator=g, requires_grad=True)
    target = torch.rand(2, 3, 32, 32, generator=g)
    mask = (torch.rand(2, 1, 32, 32, generator=g) > 0.3).float()
    torch.manual_seed(0)
    loss = InpaintingLoss(VGG16Features() if extractor == "vgg16" else LargeActivations())
    expected = loss(output, target, mask)
    with torch.autocast("cpu", dtype=dtype):
        terms = loss(output, target, mask)
    grad = torch.autograd.grad(terms["total"], output)[0]  # backward outside autocast, as torch advises
    assert all(torch.isfinite(t) for t in terms.values())
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value, rtol=1e-6, atol=0, msg=name)
    torch.testing.assert_close(grad, torch.autograd.grad(expected["total"], output)[0], rtol=1e-6, atol=0)


def test_vgg16_shapes_keys_and_normalisation():
    torch.manual_seed(0)
    vgg = VGG16Features()
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    maps = vgg(image)
    assert [tuple(m.shape) for m in maps] == [(2, 64, 8, 8), (2, 128, 4, 4), (2, 256, 2, 2)]
    # torchvision's names for VGG-16's convolutions up to conv3_3.
    assert list(vgg.state_dict()) == [f"features.{i}.{p}" for i in (0, 2, 5, 7, 10, 12, 14) for p in ("weight", "bias")]
    # Inputs in [0, 1] are normalised with ImageNet's mean and std before the first convolution.
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(vgg.features[:5]((image - mean) / std), maps[0])
    vgg.train()
    assert not vgg.training  # a fixed extractor


def _fake_torchvision_vgg16(path):
    """A state_dict shaped like torchvision's full VGG-16 (features and classifier)."""
    g = torch.Generator().manual_seed(3)
    state, channels = {}, 3
    for index, width in zip(
        (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
        (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512),
        strict=True,
    ):
        state[f"features.{index}.weight"] = torch.randn(width, channels, 3, 3, generator=g)
        state[f"features.{index}.bias"] = torch.randn(width, generator=g)
        channels = width
    state["classifier.0.weight"] = torch.randn(8, 8, generator=g)
    torch.save(state, path)
    return state


def test_vgg16_loads_torchvision_state_dict(tmp_path):
    state = _fake_torchvision_vgg16(tmp_path / VGG16_FILE)
    vgg = VGG16Features(tmp_path / VGG16_FILE)
    for name, value in vgg.state_dict().items():
        assert torch.equal(value, state[name])
    # From torch's checkpoint cache, where torchvision downloads it.
    hub = torch.hub.get_dir()
    try:
        torch.hub.set_dir(str(tmp_path / "hub"))
        (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
        (tmp_path / VGG16_FILE).rename(tmp_path / "hub" / "checkpoints" / VGG16_FILE)
        cached = VGG16Features("cache")
        assert torch.equal(cached.features[0].weight, state["features.0.weight"])
    finally:
        torch.hub.set_dir(hub)


def test_vgg16_missing_weights_say_where(tmp_path):
    with pytest.raises(FileNotFoundError, match=VGG16_FILE):
        VGG16Features(tmp_path / "nothing.pth")


def test_vgg16_loads_torch_save_legacy_format(tmp_path):
    state = _fake_torchvision_vgg16(tmp_path / "zip.pth")
    torch.save(state, tmp_path / VGG16_FILE, _use_new_zipfile_serialization=False)  # torch < 1.6's format
    assert torch.equal(VGG16Features(tmp_path / VGG16_FILE).features[14].bias, state["features.14.bias"])


def _not_vgg_weights(tmp_path, kind):
    """A file given as VGG-16 weights that holds none, and what the error says of it."""
    path = tmp_path / f"{kind}.pth"
    if kind == "text":
        path.write_text("these are not weights\n")
        return path, "not a file written by torch.save"
    if kind == "objects":  # a torch.save file that weights_only refuses to unpickle
        torch.save({"features.0.weight": torch.nn.Identity()}, path)
        return path, "it holds objects other than tensors, refused as loading them could run any code"
    if kind == "no_vgg_keys":
        torch.save({"classifier.0.weight": torch.zeros(2, 2)}, path)
        return path, "no features.0.weight, no features.0.bias and 12 more"
    if kind == "wrong_shape":
        state = _fake_torchvision_vgg16(path)
        state["features.2.weight"] = torch.zeros(3, 3)
        torch.save(state, path)
        return path, "features.2.weight of shape (3, 3), not (64, 64, 3, 3)"
    torch.save(torch.zeros(2), path)
    return path, "it holds a Tensor, not a state_dict"


KINDS = ["text", "objects", "no_vgg_keys", "wrong_shape", "tensor"]


@pytest.mark.parametrize("kind", KINDS)
def test_vgg16_file_of_no_vgg_weights_says_what_was_expected(tmp_path, kind):
    path, says = _not_vgg_weights(tmp_path, kind)
    with pytest.raises(VGGWeightsError) as error:
        VGG16Features(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and says in message
    assert f"expected torchvision's ImageNet VGG-16 state_dict ({VGG16_FILE}" in message
    assert "weights_only=False" not in message  # torch's advice would run what the file holds


def test_vgg16_missing_weights_are_a_file_not_found(tmp_path):
    for missing in (tmp_path / "nothing.pth", tmp_path):  # no file, or a folder
        with pytest.raises(VGGWeightsNotFoundError, match=VGG16_FILE) as error:
            VGG16Features(missing)
        assert isinstance(error.value, FileNotFoundError) and str(missing) in str(error.value)


# The inpaint command line, in-process, on a tiny network: --vgg is loaded after every other check.
TRAIN = ["train", "--size", "16", "--layers", "2", "--widths", "4", "8", "--no-progress", "--device", "cpu"]
TRAIN += ["--batch", "2", "--steps", "1", "--fine-tune-steps", "0"]


def _inpaint_train_refused(tmp_path, capsys, vgg, status):
    from torch_pconv.inpainting import cli, write_image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        write_image(images / f"{i}.png", torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)))
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        raise SystemExit(cli.main([*TRAIN, "--images", str(images), "--out", str(out), "--vgg", str(vgg)]))
    assert exit_.value.code == status
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("python -m torch_pconv inpaint train: error: "), err
    assert not out.exists()  # nothing written
    return err


def test_inpaint_train_missing_vgg_is_one_line_status_2(tmp_path, capsys):
    err = _inpaint_train_refused(tmp_path, capsys, tmp_path / "nothing.pth", status=2)
    assert f"--vgg {tmp_path / 'nothing.pth'}: VGG-16 weights not found at" in err and VGG16_FILE in err
    assert "--no-vgg" in err


@pytest.mark.parametrize("kind", ["text", "no_vgg_keys"])
def test_inpaint_train_vgg_of_no_vgg_weights_is_one_line_status_1(tmp_path, capsys, kind):
    path, says = _not_vgg_weights(tmp_path, kind)
    err = _inpaint_train_refused(tmp_path, capsys, path, status=1)
    assert f"{path} is not VGG-16 weights: {says}" in err and VGG16_FILE in err
