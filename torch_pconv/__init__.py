"""Partial convolutions for PyTorch: exact, drop-in replacements for NVIDIA's PartialConv2d/3d.

The public API is what ``__all__`` names: the layers ``PConv1d/2d/3d`` (which return the output
and the update mask), NVIDIA's drop-ins ``PartialConv1d/2d/3d`` (which return the output alone),
``convert`` (partial-convolution-based padding for a whole model) and ``PConvError``. Besides
them: the ``torch_pconv.inpainting`` subpackage, and ``python -m torch_pconv bench|check|inpaint``
on the command line. The formula is in the layers' docstrings.

>>> import torch
>>> from torch_pconv import PConv2d
>>> layer = PConv2d(3, 16, kernel_size=3, padding=1)
>>> image = torch.ones(1, 3, 8, 8)
>>> mask = torch.ones(1, 1, 8, 8)  # 1 valid, 0 hole
>>> mask[..., 2:6, 2:6] = 0
>>> output, mask = layer(image, mask)  # the hole shrinks from layer to layer
>>> output.shape, mask.shape
(torch.Size([1, 16, 8, 8]), torch.Size([1, 1, 8, 8]))
"""

from ._masks import PConvError
from .convert import convert
from .pconv import PartialConv1d, PartialConv2d, PartialConv3d, PConv1d, PConv2d, PConv3d

__version__ = "0.2.0"

__all__ = [
    "PConv1d",
    "PConv2d",
    "PConv3d",
    "PConvError",
    "PartialConv1d",
    "PartialConv2d",
    "PartialConv3d",
    "__version__",
    "convert",
]
