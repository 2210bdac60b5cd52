"""Image quality per hole-ratio bucket, as in the paper's Table 1: L1, PSNR and SSIM (the last
from pytorch-msssim), plus the L1 over the holes alone. Images in [0, 1]."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch
from torch import Tensor

from ._deps import require
from .masks import BUCKETS, bucket_of, hole_ratio

__all__ = ["METRICS", "PSNR_MAX", "BucketMetrics", "format_table", "hole_l1", "l1", "psnr", "ssim"]

METRICS = ("l1", "hole_l1", "psnr", "ssim")
# The highest PSNR reported, in dB: that of an MSE of 1e-10 (for a data range of 1). Equal
# images, whose PSNR is inf, score this, so that every image counts in a bucket's mean PSNR
# with a finite value.
PSNR_MAX = 100.0


def l1(output: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error of each image.

    Shape:
        - output, target: ``(B, C, H, W)``; returns ``(B,)``

    Examples:
        >>> import torch
        >>> from torch_pconv.inpainting import l1
        >>> target = torch.zeros(2, 3, 4, 4)
        >>> output = target.clone()
        >>> output[0] = 0.5
        >>> l1(output, target)
        tensor([0.5000, 0.0000])
    """
    return (output - target).abs().flatten(1).mean(1)


def hole_l1(output: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute error over each image's hole pixels (0 where there are none).

    Shape:
        - output, target: ``(B, C, H, W)``; mask: ``(B, 1, H, W)``, 1 valid, 0 hole; returns ``(B,)``

    Examples:
        >>> import torch
        >>> from torch_pconv.inpainting import hole_l1
        >>> target, output = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)
        >>> mask = torch.ones(1, 1, 4, 4)
        >>> mask[..., :2, :] = 0  # half the pixels
        >>> hole_l1(output, target, mask)  # the L1 of the holes alone
        tensor([0.5000])
    """
    holes = (1 - mask).expand_as(output)
    return ((output - target).abs() * holes).flatten(1).sum(1) / holes.flatten(1).sum(1).clamp_min(1)


def psnr(output: Tensor, target: Tensor) -> Tensor:
    """Peak signal-to-noise ratio of each image, in dB, for a data range of 1, capped at
    :data:`PSNR_MAX` (100 dB; equal images would otherwise score inf).

    Shape:
        - output, target: ``(B, C, H, W)``; returns ``(B,)``

    Examples:
        >>> import torch
        >>> from torch_pconv.inpainting import psnr
        >>> target = torch.zeros(2, 3, 4, 4)
        >>> output = target.clone()
        >>> output[0] = 0.1  # an MSE of 0.01: 20 dB
        >>> psnr(output, target)
        tensor([ 20., 100.])
    """
    mse = (output - target).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1 / mse)).clamp_max(PSNR_MAX)


def ssim(output: Tensor, target: Tensor) -> Tensor:
    """Structural similarity of each image (pytorch-msssim: 11-pixel Gaussian window of sigma
    1.5, narrowed for images under 11 pixels), for a data range of 1. ``output`` is clipped to
    [0, 1] first.

    Shape:
        - output, target: ``(B, C, H, W)``; returns ``(B,)``

    Examples:
        >>> import torch
        >>> from torch_pconv.inpainting import ssim
        >>> target = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> ssim(target, target)
        tensor([1., 1.])
        >>> bool(ssim(1 - target, target)[0] < 0)  # anticorrelated
        True
    """
    msssim = require("pytorch_msssim")
    side = min(output.shape[-2:])
    window = min(11, side if side % 2 else side - 1)
    value: Tensor = msssim.ssim(
        output.float().clamp(0, 1), target.float(), data_range=1.0, size_average=False, win_size=window
    )
    return value


class BucketMetrics:
    """Per-image metrics of composites, gathered per hole-ratio bucket of :data:`BUCKETS`.

    ``update`` takes a batch; ``rows`` gives one row per bucket that saw images, and ``all``:
    the mean of each metric over every image counted in ``images`` (a perfect fill's PSNR
    counts as :data:`PSNR_MAX`). A mask outside every bucket counts in a row ``"other"``.

    Examples:
        >>> import torch
        >>> from torch_pconv.inpainting import BucketMetrics
        >>> target = torch.full((2, 3, 16, 16), 0.5)
        >>> mask = torch.ones(2, 1, 16, 16)
        >>> mask[..., :4, :] = 0  # a quarter: bucket (0.2, 0.3]
        >>> metrics = BucketMetrics()
        >>> metrics.update(target * mask, target, mask)  # holes filled with 0
        >>> [(row["bucket"], row["images"], row["hole_l1"]) for row in metrics.rows()]
        [('(0.2, 0.3]', 2, 0.5), ('all', 2, 0.5)]
    """

    def __init__(self) -> None:
        self.values: dict[int | None, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    def update(self, output: Tensor, target: Tensor, mask: Tensor) -> None:
        """Score ``output`` (B, C, H, W) against ``target`` under ``mask`` (B, 1, H, W)."""
        output, target = output.float().clamp(0, 1), target.float()
        scores = {"l1": l1(output, target), "hole_l1": hole_l1(output, target, mask), "psnr": psnr(output, target)}
        scores["ssim"] = ssim(output, target)
        for i, ratio in enumerate(hole_ratio(mask).tolist()):
            for key in (bucket_of(ratio), "all"):
                for name in METRICS:
                    self.values[key][name].append(float(scores[name][i]))  # type: ignore[index]

    def rows(self) -> list[dict[str, Any]]:
        """``{"bucket", "images", "l1", "hole_l1", "psnr", "ssim"}`` per bucket, then for all images."""
        keys: list[Any] = [*range(len(BUCKETS)), None, "all"]
        rows = []
        for key in keys:
            if key not in self.values:
                continue
            values = self.values[key]
            name = key if isinstance(key, str) else "other" if key is None else "({}, {}]".format(*BUCKETS[key])
            row: dict[str, Any] = {"bucket": name, "images": len(values["l1"])}
            row.update({metric: _mean(values[metric]) for metric in METRICS})
            rows.append(row)
        return rows


def format_table(results: dict[str, list[dict[str, Any]]]) -> str:
    """A plain-text table of ``{method: rows}`` (rows as :meth:`BucketMetrics.rows` gives them).

    Returns:
        A header line, then one line per bucket and method, in the order of the rows.

    Examples:
        >>> from torch_pconv.inpainting import format_table
        >>> row = {"bucket": "all", "images": 2, "l1": 0.125, "hole_l1": 0.5, "psnr": 12.04}
        >>> row["ssim"] = 0.5
        >>> print(format_table({"zeros": [row]}))
        bucket       method           images       L1  hole L1    PSNR    SSIM
        all          zeros                 2   0.1250   0.5000   12.04  0.5000
    """
    lines = [f"{'bucket':<12} {'method':<16} {'images':>6} {'L1':>8} {'hole L1':>8} {'PSNR':>7} {'SSIM':>7}"]
    buckets = list(dict.fromkeys(row["bucket"] for rows in results.values() for row in rows))
    for bucket in buckets:
        for method, rows in results.items():
            for row in rows:
                if row["bucket"] == bucket:
                    lines.append(
                        f"{bucket:<12} {method:<16} {row['images']:>6} {row['l1']:>8.4f} {row['hole_l1']:>8.4f}"
                        f" {row['psnr']:>7.2f} {row['ssim']:>7.4f}"
                    )
    return "\n".join(lines)


def _mean(values: list[float]) -> float:
    # Every image counts: a perfect PSNR is PSNR_MAX, not inf, and a NaN (a NaN in the output)
    # shows in the mean rather than being dropped from it.
    return math.fsum(values) / len(values)
