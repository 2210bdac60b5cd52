"""Evaluation as in the paper's Table 1: crops of held-out images, masks in every hole-ratio
bucket, and L1, hole L1, PSNR and SSIM of each method's composite per bucket."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .baselines import diffusion_fill, mean_fill
from .data import random_crop, read_image, seeded
from .masks import BUCKETS, MaskGenerator
from .metrics import BucketMetrics
from .model import PConvUNet, inpaint

__all__ = ["BASELINES", "evaluate", "evaluation_set"]

Fill = Callable[[Tensor, Tensor], Tensor]
BASELINES: dict[str, Fill] = {"mean colour": mean_fill, "diffusion": diffusion_fill}


def evaluation_set(
    images: Sequence[str | Path | Tensor],
    size: int,
    crops: int = 2,
    masks: Sequence[Tensor] | None = None,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """``crops`` seeded crops of each image, each paired with one generated mask per bucket of
    :data:`BUCKETS` (border constraint on every other crop), or with the given masks in turn.

    Args:
        images: image files, or ``(3, H, W)`` tensors in [0, 1] (smaller ones are scaled up).
        size: crop side.
        crops: crops per image.
        masks: ``(1, size, size)`` masks to take in turn; None: generated (seeded by ``seed + 1``).
        seed: the seed of the crops.

    Raises:
        OSError: an image file that cannot be read.

    Shape:
        - returns images ``(N, 3, size, size)`` and masks ``(N, 1, size, size)``, where
          ``N = len(images) * crops * len(BUCKETS)``

    Examples:
        >>> import torch
        >>> from torch_pconv.inpainting import evaluation_set
        >>> images, masks = evaluation_set([torch.rand(3, 20, 24)], size=16, crops=1)
        >>> images.shape, masks.shape  # one mask per bucket
        (torch.Size([6, 3, 16, 16]), torch.Size([6, 1, 16, 16]))
    """
    generator = MaskGenerator(size, length=len(images) * crops * len(BUCKETS), seed=seed + 1)
    image_list: list[Tensor] = []
    mask_list: list[Tensor] = []
    for i, source in enumerate(images):
        image = source if isinstance(source, Tensor) else read_image(source)
        for k in range(crops):
            crop = random_crop(image, size, seeded(seed, i, k))
            for _ in BUCKETS:
                n = len(mask_list)
                image_list.append(crop)
                mask_list.append(generator[n] if masks is None else masks[n % len(masks)])
    return torch.stack(image_list), torch.stack(mask_list)


@torch.no_grad()
def evaluate(
    model: PConvUNet | None,
    images: Tensor,
    masks: Tensor,
    baselines: dict[str, Fill] | None = None,
    batch: int = 16,
) -> dict[str, list[dict[str, Any]]]:
    """Metrics per bucket for the model's composite (``"PConvUNet"``, by :func:`inpaint`) and
    each baseline, such as :data:`BASELINES`.

    Args:
        model: the network (run on its own device, in eval mode), or None for the baselines alone.
        images, masks: as :func:`evaluation_set` gives them.
        baselines: ``{name: fill}``, each ``fill(image * mask, mask)`` returning the filled image.
        batch: images per forward.

    Returns:
        ``{method: rows}``, with the rows of :meth:`BucketMetrics.rows`.

    Examples:
        >>> import torch
        >>> from torch_pconv.inpainting import PConvUNet, evaluate, evaluation_set, mean_fill
        >>> images, masks = evaluation_set([torch.rand(3, 16, 16)], size=16, crops=1)
        >>> model = PConvUNet(layers=2, widths=(4, 8))
        >>> results = evaluate(model, images, masks, {"mean": mean_fill})
        >>> list(results), [row["bucket"] for row in results["mean"]][:2]
        (['PConvUNet', 'mean'], ['(0.01, 0.1]', '(0.1, 0.2]'])
    """
    methods: dict[str, Fill] = {}
    if model is not None:
        model.eval()
        device = next(model.parameters()).device

        def network(image: Tensor, mask: Tensor) -> Tensor:
            return inpaint(model, image.to(device), mask.to(device)).cpu()

        methods["PConvUNet"] = network
    methods.update(baselines or {})
    results = {}
    for name, fill in methods.items():
        metrics = BucketMetrics()
        for start in range(0, len(images), batch):
            image, mask = images[start : start + batch], masks[start : start + batch]
            metrics.update(fill(image * mask, mask), image, mask)
        results[name] = metrics.rows()
    return results
