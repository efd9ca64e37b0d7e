"""A randomised preprocessing defence: Gaussian noise on the input, a fresh draw every call.

Randomness does not stop a gradient attack; it makes one draw's gradient a noisy estimate.
Expectation over Transformation (:class:`workbench.attacks.adaptive.EOT`) averages it away.
"""

from __future__ import annotations

import torch
from torch import nn


class RandomNoise(nn.Module):
    """x (N, C, H, W) in [0, 1] plus Gaussian noise of std ``std`` (pixel units), clamped to
    [0, 1]. The noise comes from the module's own generator, seeded with ``seed``: the same
    sequence of calls gives the same draws."""

    def __init__(self, std: float, *, seed: int = 0):
        super().__init__()
        if not std >= 0:
            raise ValueError(f"std must be a number >= 0 (pixel units), got {std!r}")
        self.std = float(std)
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=self.generator).to(x.device, x.dtype)
        return (x + self.std * noise).clamp(0, 1)

    def extra_repr(self) -> str:
        return f"std={self.std}"
