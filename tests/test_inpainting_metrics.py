"""Metrics per bucket, and the two baseline fills."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("PIL")
pytest.importorskip("pytorch_msssim")

from torch_pconv.inpainting import (
    BucketMetrics,
    diffusion_fill,
    format_table,
    hole_l1,
    l1,
    mean_fill,
    psnr,
    ssim,
)
from torch_pconv.inpainting.metrics import PSNR_MAX


def _images(seed: int = 0, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, size, size, generator=g), torch.rand(2, 3, size, size, generator=g)


def test_l1_and_psnr_by_hand():
    target = torch.full((2, 3, 4, 4), 0.5)
    output = target + torch.tensor([0.1, 0.01]).view(2, 1, 1, 1)
    torch.testing.assert_close(l1(output, target), torch.tensor([0.1, 0.01]))
    torch.testing.assert_close(psnr(output, target), torch.tensor([20.0, 40.0]), rtol=1e-4, atol=1e-4)
    assert psnr(target, target)[0] == PSNR_MAX == 100  # capped: equal images would score inf
    assert psnr(target + 1e-6, target)[0] == PSNR_MAX  # an MSE of 1e-12: 120 dB, capped


def test_hole_l1_by_hand():
    target = torch.zeros(1, 1, 2, 2)
    output = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).view(1, 1, 2, 2)
    assert hole_l1(output, target, mask).item() == pytest.approx((2 + 4) / 2)
    assert hole_l1(output, target, torch.ones_like(mask)).item() == 0  # no holes


def test_ssim_is_pytorch_msssim():
    output, target = _images(size=24)
    assert torch.allclose(ssim(target, target), torch.ones(2))
    import pytorch_msssim

    expected = pytorch_msssim.ssim(output, target, data_range=1.0, size_average=False)
    torch.testing.assert_close(ssim(output, target), expected)
    noisy = (target + 0.05 * torch.randn(target.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert (ssim(noisy, target) > ssim(output, target)).all()
    assert ssim(output[..., :8, :8], target[..., :8, :8]).shape == (2,)  # small images: a narrower window


def test_bucket_metrics_groups_by_hole_ratio():
    target = torch.rand(3, 3, 10, 10, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(3, 1, 10, 10)
    mask[0, :, :1, :5] = 0  # 5 %: bucket (0.01, 0.1]
    mask[1, :, :2, :] = 0  # 20 %: (0.1, 0.2]
    mask[2, :, :3, :] = 0  # 30 %: (0.2, 0.3]
    output = target * mask  # holes filled with zeros
    metrics = BucketMetrics()
    metrics.update(output, target, mask)
    metrics.update(output[:1], target[:1], mask[:1])
    rows = {row["bucket"]: row for row in metrics.rows()}
    assert list(rows) == ["(0.01, 0.1]", "(0.1, 0.2]", "(0.2, 0.3]", "all"]
    assert rows["(0.01, 0.1]"]["images"] == 2 and rows["all"]["images"] == 4
    expected = hole_l1(output[1:2], target[1:2], mask[1:2]).item()
    assert rows["(0.1, 0.2]"]["hole_l1"] == pytest.approx(expected)
    table = format_table({"zeros": metrics.rows()})
    assert "(0.2, 0.3]" in table and "zeros" in table and "PSNR" in table


def test_a_perfect_fill_counts_in_the_mean_psnr():
    # It was left out of the mean (its PSNR is inf) while counted in "images": the mean was
    # that of the other images alone. Now every counted image is in every mean.
    target = torch.rand(2, 3, 10, 10, generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 1, 10, 10)
    mask[:, :, :2, :] = 0  # 20 %: both in (0.1, 0.2]
    output = target.clone()
    output[1, :, :2, :] = 0.5  # the first image filled perfectly, the second not
    metrics = BucketMetrics()
    metrics.update(output, target, mask)
    row = {row["bucket"]: row for row in metrics.rows()}["(0.1, 0.2]"]
    imperfect = psnr(output[1:], target[1:]).item()
    assert row["images"] == 2
    assert row["psnr"] == pytest.approx((PSNR_MAX + imperfect) / 2)
    assert all(math.isfinite(row[name]) for name in ("l1", "hole_l1", "psnr", "ssim"))


def test_mean_fill():
    image = torch.tensor([[1.0, 3.0], [5.0, 100.0]]).view(1, 1, 2, 2)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]]).view(1, 1, 2, 2)
    assert torch.equal(mean_fill(image, mask), torch.tensor([[1.0, 3.0], [5.0, 3.0]]).view(1, 1, 2, 2))


def test_diffusion_fill_recovers_a_harmonic_image():
    # A linear ramp solves Laplace's equation: diffusion from the hole's border gives it back.
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(2, 3, 32, 32)
    mask = torch.ones(2, 1, 32, 32)
    mask[:, :, 8:24, 10:26] = 0
    filled = diffusion_fill(ramp * mask, mask, iterations=200)
    assert torch.equal(filled[mask.expand_as(ramp) > 0], ramp[mask.expand_as(ramp) > 0])
    assert (filled - ramp).abs().max() < 1e-3
    assert (mean_fill(ramp * mask, mask) - ramp).abs().max() > 0.2


def test_diffusion_beats_mean_on_smooth_images():
    g = torch.Generator().manual_seed(3)
    coarse = torch.rand(4, 3, 4, 4, generator=g)
    image = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    mask = (torch.rand(4, 1, 32, 32, generator=g) > 0.4).float()
    assert (
        hole_l1(diffusion_fill(image, mask), image, mask).mean() < hole_l1(mean_fill(image, mask), image, mask).mean()
    )
