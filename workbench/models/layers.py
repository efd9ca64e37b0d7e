"""The two modules every image model in the workbench is made of: normalisation, then a network."""

from __future__ import annotations

from dataclasses import dataclass, replace
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


@dataclass(frozen=True)
class ClassifierConfig:
    """What a classifier is, frozen and carried by the model (in the manner of timm's
    ``pretrained_cfg``), so that notebooks and panels never hard-code or guess it.

    * ``name``: the registry name asked for ("mobilenet_v2").
    * ``architecture``: the network actually running ("EfficientNet-Lite0" when lite mode
      stands in for MobileNetV2): what titles and printed lines name.
    * ``weights``: where its weights come from, in a few words.
    * ``mode``: "lite" or "full". ``source``: one sentence saying which weights and why.
    * ``mean``, ``std``: per-channel normalisation inside the model (pixels in [0, 1]).
    * ``input_size``: (C, H, W) the weights were trained at. ``num_classes``: logits per image.
    """

    name: str
    architecture: str
    weights: str
    mode: str
    source: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int, int]
    num_classes: int

    @property
    def label(self) -> str:
        """A short title for plots and status lines: "EfficientNet-Lite0 (lite)"."""
        return f"{self.architecture} ({self.mode})"


class Classifier(nn.Module):
    """An image classifier over [0, 1] pixels: ``Normalize`` then ``net``, returning logits.

    ``cfg`` (:class:`ClassifierConfig`) travels with the model so notebooks never hard-code
    it; ``categories`` (class names, index = logit position), ``input_size``, ``source``,
    ``name``, ``mode`` and ``architecture`` read from it (``architecture`` defaults to
    ``name``).

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
        architecture: str | None = None,
        weights: str = "",
    ):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net
        self.categories = list(categories)
        self.cfg = ClassifierConfig(
            name=name, architecture=architecture or name, weights=weights, mode=mode, source=source,
            mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
            input_size=tuple(int(i) for i in input_size), num_classes=len(self.categories))

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def mode(self) -> str:
        return self.cfg.mode

    @property
    def architecture(self) -> str:
        return self.cfg.architecture

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.cfg.input_size

    @property
    def source(self) -> str:
        return self.cfg.source

    @source.setter
    def source(self, sentence: str) -> None:
        """Say how this model was made (e.g. after training it): a new frozen config."""
        self.cfg = replace(self.cfg, source=sentence)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))
