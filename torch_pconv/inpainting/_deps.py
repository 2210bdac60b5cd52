"""The inpainting extra's dependencies, imported on demand with a one-line error when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]

# import name -> distribution name, for the error message
EXTRA = {"PIL": "Pillow", "pytorch_msssim": "pytorch-msssim"}


def require(name: str) -> ModuleType:
    """Import ``name``, a dependency of the ``inpainting`` extra, or raise a one-line ImportError."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError(
            f'torch_pconv.inpainting needs {EXTRA.get(name, name)}: pip install "torch_pconv[inpainting]"'
        ) from None
