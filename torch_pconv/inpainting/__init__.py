"""The inpainting system of Liu et al., "Image Inpainting for Irregular Holes Using Partial
Convolutions" (ECCV 2018), on top of :class:`torch_pconv.PConv2d`: the network, the loss, the
masks, the metrics and the training loop. Needs the ``inpainting`` extra (Pillow and
pytorch-msssim): ``pip install "torch_pconv[inpainting]"``.

One training step, on a network small enough for 32×32 images (the paper's is
``PConvUNet(layers=7)`` for 256×256 images, with ``VGG16Features("cache")``: torchvision's
ImageNet VGG-16):

>>> import torch
>>> from torch_pconv.inpainting import InpaintingLoss, MaskGenerator, PConvUNet, VGG16Features
>>> model = PConvUNet(layers=3, widths=(16, 32, 64))  # sides: multiples of 2**3
>>> loss = InpaintingLoss(VGG16Features())  # random VGG-16 weights, for this example
>>> optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
>>> image = torch.rand(2, 3, 32, 32)
>>> mask = torch.stack([MaskGenerator(32)[i] for i in range(2)])  # 1 valid, 0 hole
>>> terms = loss(model(image * mask, mask), image, mask)  # a dict of the loss terms
>>> terms["total"].backward()
>>> optimizer.step()

The command line trains, evaluates and fills: ``python -m torch_pconv inpaint --help``.
"""

from ._deps import require

# Fail at import, in one line, when the extra is missing, rather than deep inside a command.
require("PIL")
require("pytorch_msssim")

from .baselines import diffusion_fill, mean_fill  # noqa: E402
from .data import InpaintingDataset, list_images, read_image, read_mask, save_grid, write_image  # noqa: E402
from .evaluate import evaluate, evaluation_set  # noqa: E402
from .loss import InpaintingLoss, VGG16Features, gram_matrix, hole_border, total_variation  # noqa: E402
from .masks import BUCKETS, MaskFolder, MaskGenerator, bucket_of, hole_ratio  # noqa: E402
from .metrics import BucketMetrics, format_table, hole_l1, l1, psnr, ssim  # noqa: E402
from .model import PConvUNet, inpaint  # noqa: E402
from .train import TrainConfig, learning_rate, load_checkpoint, load_model, save_checkpoint, train  # noqa: E402

__all__ = [
    "BUCKETS",
    "BucketMetrics",
    "InpaintingDataset",
    "InpaintingLoss",
    "MaskFolder",
    "MaskGenerator",
    "PConvUNet",
    "TrainConfig",
    "VGG16Features",
    "bucket_of",
    "diffusion_fill",
    "evaluate",
    "evaluation_set",
    "format_table",
    "gram_matrix",
    "hole_border",
    "hole_l1",
    "hole_ratio",
    "inpaint",
    "l1",
    "learning_rate",
    "list_images",
    "load_checkpoint",
    "load_model",
    "mean_fill",
    "psnr",
    "read_image",
    "read_mask",
    "save_checkpoint",
    "save_grid",
    "ssim",
    "total_variation",
    "train",
    "write_image",
]
