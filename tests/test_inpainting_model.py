"""PConvUNet: the paper's layer table, shapes, depth errors, mask layouts, fine-tuning, inpaint()."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("PIL")
pytest.importorskip("pytorch_msssim")

from torch_pconv import PConv2d
from torch_pconv.inpainting import PConvUNet, inpaint

SMALL = {"layers": 3, "widths": (8, 16, 16), "kernels": (5, 3, 3)}


def _batch(size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(2, 3, size, size, generator=g)
    mask = (torch.rand(2, 1, size, size, generator=g) > 0.3).float()
    mask[:, :, 4:12, 6:14] = 0  # a hole wider than the first kernel
    return image, mask


def _model(**kwargs: object) -> PConvUNet:
    torch.manual_seed(0)
    return PConvUNet(**{**SMALL, **kwargs})  # type: ignore[arg-type]


def test_paper_layer_table():
    model = PConvUNet()  # 8 layers, 512x512
    encoder = [
        (b.conv.in_channels, b.conv.out_channels, b.conv.kernel_size[0], b.conv.stride[0]) for b in model.encoder
    ]
    assert encoder == [
        (3, 64, 7, 2), (64, 128, 5, 2), (128, 256, 5, 2), (256, 512, 3, 2),
        (512, 512, 3, 2), (512, 512, 3, 2), (512, 512, 3, 2), (512, 512, 3, 2),
    ]  # fmt: skip
    assert isinstance(model.encoder[0].norm, nn.Identity)  # PConv1: no BatchNorm
    assert all(isinstance(b.norm, nn.BatchNorm2d) for b in model.encoder[1:])
    # Decoder stages 1-8: upsampled features + skip in, 512, 512, 512, 512, 256, 128, 64, 3 out.
    decoder = [(b.conv.in_channels, b.conv.out_channels, b.conv.kernel_size[0]) for b in model.decoder]
    assert decoder == [
        (1024, 512, 3), (1024, 512, 3), (1024, 512, 3), (1024, 512, 3),
        (768, 256, 3), (384, 128, 3), (192, 64, 3), (67, 3, 3),
    ]  # fmt: skip
    assert all(isinstance(b.norm, nn.BatchNorm2d) and not b.last for b in model.decoder[:-1])
    assert model.decoder[-1].last and isinstance(model.decoder[-1].norm, nn.Identity)
    assert all(isinstance(b.conv, PConv2d) and b.conv.multi_channel for b in [*model.encoder, *model.decoder])
    assert model.multiple == 256
    assert PConvUNet(layers=7).multiple == 128


@pytest.mark.parametrize("layers", [2, 3])
def test_output_shape(layers):
    model = _model(layers=layers, widths=(8, 16, 16)[:layers], kernels=(5, 3, 3)[:layers])
    image, mask = _batch(16)
    assert model(image * mask, mask).shape == image.shape
    assert model(image * mask, mask[:, 0]).shape == image.shape  # (B, H, W) mask


def test_activations_leaky_in_decoder():
    model = _model().eval()
    image, mask = _batch()
    # The decoder's inner stages end in LeakyReLU(0.2): negative values are possible; the
    # encoder ends in ReLU.
    x, m = image, mask.expand(-1, 3, -1, -1)
    for block in model.encoder:
        x, m = block(x, m)
        assert (x >= 0).all()


@pytest.mark.parametrize(("size", "message"), [((30, 32), "multiples of 8, got 30x32"), ((32, 36), "32x36")])
def test_depth_error(size, message):
    model = _model()
    image = torch.rand(1, 3, *size)
    with pytest.raises(ValueError, match=message):
        model(image, torch.ones(1, 1, *size))


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"layers=3 needs 3 widths, one per encoder layer, got 2: \(8, 16\)"):
        PConvUNet(layers=3, widths=(8, 16))
    with pytest.raises(ValueError, match=r"layers=2 needs 2 kernels, one per encoder layer, got 3"):
        PConvUNet(layers=2, widths=(8, 16), kernels=(3, 3, 3))
    model = _model()
    with pytest.raises(ValueError, match="expected an image"):
        model(torch.rand(1, 4, 32, 32), torch.ones(1, 1, 32, 32))
    with pytest.raises(ValueError, match="expected a mask"):
        model(torch.rand(1, 3, 32, 32), torch.ones(1, 2, 32, 32))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        # It said "layers=-1 needs as many widths and kernels, got 7 and 7".
        ({"layers": -1}, r"layers must be a positive integer \(the encoder depth\), got -1"),
        ({"layers": 0}, "layers must be a positive integer"),
        ({"layers": 2.0}, "layers must be a positive integer"),
        ({"in_channels": 0}, "in_channels must be a positive integer, got 0"),
        # These were built, and failed in the forward inside torch (or with mismatched sizes).
        ({"layers": 2, "widths": (8, 0)}, r"widths must be positive integers \(channels\), got \(8, 0\)"),
        ({"layers": 2, "widths": (-4, 8)}, "widths must be positive integers"),
        ({"layers": 2, "widths": (8, 16), "kernels": (4, 3)}, r"kernels must be odd positive integers.*\(4, 3\)"),
        ({"layers": 2, "widths": (8, 16), "kernels": (3, 0)}, "kernels must be odd positive integers"),
    ],
    ids=["layers-1", "layers0", "layers-float", "in_channels0", "width0", "width-4", "kernel4", "kernel0"],
)
def test_bad_arguments_are_refused_at_construction(arguments, message):
    with pytest.raises(ValueError, match=f"PConvUNet: {message}"):
        PConvUNet(**arguments)


def test_hole_contents_do_not_matter():
    model = _model().eval()
    image, mask = _batch()
    garbage = torch.where(mask > 0, image, torch.full_like(image, 1e6))
    with torch.no_grad():
        torch.testing.assert_close(model(garbage, mask), model(image * mask, mask), rtol=0, atol=0)
        nan = torch.where(mask > 0, image, torch.nan)
        filled = inpaint(model, nan, mask)
    assert torch.isfinite(filled).all()


def test_fast_mask_layout_equals_materialised_masks():
    # The model carries one-channel masks expanded with stride 0; running every block on
    # materialised (B, C, H, W) masks, NVIDIA's multi-channel layout, gives the same numbers.
    model = _model().eval()
    image, mask = _batch()
    with torch.no_grad():
        fast = model(image, mask)
        x, m = image, mask.expand(-1, 3, -1, -1).contiguous()
        skips = [(image, m)]
        for block in model.encoder:
            x, m = block(x, m)
            m = m.contiguous()
            skips.append((x, m))
        skips.pop()
        for block in model.decoder:
            skip, skip_mask = skips.pop()
            x, m = block(x, m.contiguous(), skip, skip_mask.contiguous())
    torch.testing.assert_close(fast, x, rtol=1e-6, atol=1e-6)


def test_mask_layouts_agree():
    model = _model().eval()
    image, mask = _batch()
    with torch.no_grad():
        one = model(image, mask)
        torch.testing.assert_close(model(image, mask[:, 0]), one, rtol=0, atol=0)
        torch.testing.assert_close(model(image, mask.expand(-1, 3, -1, -1).contiguous()), one, rtol=1e-6, atol=1e-6)


def test_freeze_encoder_bn():
    model = _model()
    model.freeze_encoder_bn()
    norms = [m for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(not n.training for n in norms)
    assert all(not p.requires_grad for n in norms for p in n.parameters())
    model.train()  # stays frozen
    assert all(not n.training for n in norms)
    decoder_norms = [m for m in model.decoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(n.training for n in decoder_norms)
    assert all(p.requires_grad for n in decoder_norms for p in n.parameters())
    # Running statistics of the encoder no longer move; the decoder's do.
    before = [n.running_mean.clone() for n in norms]
    decoder_before = [n.running_mean.clone() for n in decoder_norms]
    image, mask = _batch()
    model(image, mask).sum().backward()
    assert all(torch.equal(a, n.running_mean) for a, n in zip(before, norms, strict=True))
    assert not all(torch.equal(a, n.running_mean) for a, n in zip(decoder_before, decoder_norms, strict=True))
    assert all(p.grad is None for n in norms for p in n.parameters())
    assert _model(fine_tune=True).fine_tune
    assert "fine_tune=True" in repr(model)


def test_batch_norm_free():
    model = _model(batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("size", [(37, 45), (32, 32), (8, 70)])
def test_inpaint_any_size_keeps_valid_pixels(size):
    model = _model().eval()
    g = torch.Generator().manual_seed(3)
    image = torch.rand(2, 3, *size, generator=g)
    mask = (torch.rand(2, 1, *size, generator=g) > 0.4).float()
    with torch.no_grad():
        filled = inpaint(model, image, mask)
    assert filled.shape == image.shape
    assert torch.equal(filled[mask.expand_as(image) > 0], image[mask.expand_as(image) > 0])
    assert not torch.equal(filled, image)


def test_gradients_reach_every_trainable_parameter():
    model = _model()
    image, mask = _batch()
    model(image * mask, mask).abs().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
