"""Helpers shared by several test files (pytest puts this folder on sys.path)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from torch_pconv import PConv2d


class ThreeLayerNet(nn.Module):
    """Three partial convolutions carrying the mask from one to the next, one of them strided."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = PConv2d(3, 8, 3, padding=1)
        self.c2 = PConv2d(8, 8, 3, padding=1, stride=2)
        self.c3 = PConv2d(8, 2, 3, padding=1)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        x, mask = self.c1(x, mask)
        x, mask = self.c2(torch.relu(x), mask)
        return self.c3(torch.relu(x), mask)


def cached_tensors(module: nn.Module) -> list[Tensor]:
    """Every tensor a module holds outside its parameters and buffers: the mask=None cache."""
    found: list[Tensor] = []

    def walk(value: object) -> None:
        if isinstance(value, Tensor):
            found.append(value)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(k)
                walk(v)
        elif isinstance(value, (tuple, list)):
            for v in value:
                walk(v)

    for name, value in vars(module).items():
        if name not in ("_parameters", "_buffers", "_modules"):
            walk(value)
    return found
