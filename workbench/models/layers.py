"""The two modules every image model in the workbench is made of: normalisation, then a network."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as the model's first layer.

    Shapes: x (N, C, H, W) in [0, 1] -> (N, C, H, W). ``mean`` and ``std`` have C entries.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class Classifier(nn.Module):
    """An image classifier over [0, 1] pixels: ``Normalize`` then ``net``, returning logits.

    Attributes travel with the model so notebooks never hard-code them:

    * ``categories``: list of class names, index = logit position.
    * ``input_size``: (C, H, W) the weights were trained at.
    * ``source``: one sentence saying which weights were loaded and why.
    * ``name``, ``mode``: the registry name and the mode it was loaded in.

    Shapes: x (N, C, H, W) float in [0, 1] -> logits (N, len(categories)).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        categories: Sequence[str],
        input_size: tuple[int, int, int],
        name: str,
        mode: str,
        source: str,
    ):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net
        self.categories = list(categories)
        self.input_size = tuple(input_size)
        self.name = name
        self.mode = mode
        self.source = source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))
