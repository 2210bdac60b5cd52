"""Partial convolutions for PyTorch: exact, drop-in replacements for NVIDIA's PartialConv2d/3d.

>>> from torch_pconv import PConv2d
>>> layer = PConv2d(3, 16, kernel_size=3, padding=1)
>>> output, mask = layer(image, mask)   # mask: 1 valid, 0 hole
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
