"""Feature squeezing (Xu, Evans and Qi, 2018): fewer colours and a median filter in front of a
classifier, as a preprocessing defence and as a detector.

* :func:`bit_depth` keeps ``bits`` bits per pixel: ``round(x * (2**bits - 1)) / (2**bits - 1)``.
  Its gradient is zero almost everywhere: an attacker who trusts autograd learns nothing.
* :func:`median_smooth` replaces each pixel by the median of its ``size`` x ``size`` window.
* :class:`Squeezer` is both, in that order; ``Preprocessed(squeezer, model)``
  (:class:`workbench.defenses.models.Preprocessed`) is a classifier behind one.
* :class:`SqueezeDetector` flags an input whose prediction moves when it is squeezed: the score
  is the largest L1 distance between the softmax of the input and of each squeezed version,
  and the threshold is set on clean images for a chosen false-positive rate.

Images are (N, C, H, W) in [0, 1] throughout.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from workbench.attacks.adaptive import BPDA
from workbench.attacks.core import attack_mode, check_images


def _check_images(x: torch.Tensor) -> None:
    if not torch.is_tensor(x) or x.dim() != 4:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"expected images shaped (N, C, H, W), got {shape}")


def bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    """x (N, C, H, W) in [0, 1] with each pixel rounded to one of ``2**bits`` levels, evenly
    spaced from 0 to 1: ``bits = 1`` gives a binary image. A new tensor; x is unchanged."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be a whole number from 1 to 8, got {bits!r}")
    _check_images(x)
    levels = 2 ** bits - 1
    return torch.round(x * levels) / levels


def median_smooth(x: torch.Tensor, size: int) -> torch.Tensor:
    """Each pixel of x (N, C, H, W) replaced by the median of the ``size`` x ``size`` window
    whose top-left corner is at it, channel by channel; the edges are padded by repeating
    the last row and column. For an even window, the lower of the two middle values
    (``torch.median``). Same shape as x."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a whole number >= 1, got {size!r}")
    _check_images(x)
    n, c, h, w = x.shape
    before, after = (size - 1) // 2, size // 2
    padded = F.pad(x, (before, after, before, after), mode="replicate")
    windows = F.unfold(padded.reshape(n * c, 1, *padded.shape[2:]), size)  # (N*C, size^2, H*W)
    return windows.median(dim=1).values.view(n, c, h, w)


class Squeezer(nn.Module):
    """Bit-depth reduction to ``bits`` (None: none), then a ``median`` x ``median`` median
    filter (None: none): (N, C, H, W) -> (N, C, H, W), in [0, 1]."""

    def __init__(self, bits: int | None = None, median: int | None = None):
        super().__init__()
        if bits is None and median is None:
            raise ValueError("a Squeezer needs bits, median or both")
        if bits is not None:
            bit_depth(torch.zeros(1, 1, 1, 1), bits)  # the same checks, before any image
        if median is not None:
            median_smooth(torch.zeros(1, 1, 1, 1), median)
        self.bits, self.median = bits, median

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits is not None:
            x = bit_depth(x, self.bits)
        if self.median is not None:
            x = median_smooth(x, self.median)
        return x

    def extra_repr(self) -> str:
        return f"bits={self.bits}, median={self.median}"


class SqueezeDetector:
    """Xu et al.'s detector: an input is adversarial when squeezing moves its prediction.

    ``score(x)``: per image, the largest L1 distance between ``softmax(model(x))`` and
    ``softmax(model(squeezer(x)))`` over the squeezers, in [0, 2]. ``calibrate`` sets the
    threshold so that a share ``false_positive_rate`` of clean images scores above it;
    ``detect(x)`` is ``score(x) > threshold``.
    """

    def __init__(self, model: nn.Module, squeezers: Sequence[nn.Module]):
        if not squeezers:
            raise ValueError("a SqueezeDetector needs at least one squeezer")
        self.model, self.squeezers = model, list(squeezers)
        self.threshold: float | None = None

    def score(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """(N,) float32 scores of images x (N, C, H, W), in [0, 2]; the model runs in eval
        mode, without gradients."""
        x = check_images(self.model, x)
        scores = []
        with attack_mode(self.model), torch.no_grad():
            for xb in x.split(batch_size):
                plain = self.model(xb).float().softmax(dim=1)
                scores.append(torch.stack([
                    (self.model(squeeze(xb)).float().softmax(dim=1) - plain).abs().sum(dim=1)
                    for squeeze in self.squeezers]).amax(dim=0))
        return torch.cat(scores)

    def calibrate(self, x_clean: torch.Tensor, false_positive_rate: float = 0.05) -> float:
        """Set and return the threshold: the (1 - rate) quantile of the clean images' scores,
        so that at most that share of x_clean (N, C, H, W) is flagged."""
        if not 0 <= false_positive_rate < 1:
            raise ValueError(f"false_positive_rate must be in [0, 1), got "
                             f"{false_positive_rate!r}")
        scores = self.score(x_clean)
        self.threshold = float(torch.quantile(scores, 1 - false_positive_rate))
        return self.threshold

    def detect(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) bool: which images of x (N, C, H, W) score above the threshold."""
        if self.threshold is None:
            raise RuntimeError("the detector has no threshold yet: call "
                               "detector.calibrate(x_clean, false_positive_rate) first")
        return self.score(x) > self.threshold


class JointViews(nn.Module):
    """The attacker's stand-in for a classifier guarded by a :class:`SqueezeDetector`.

    Logits (N, K): the sum, over the views x, squeezer_1(x), ..., of ``log_softmax(model(view))``,
    each squeezer behind :class:`~workbench.attacks.adaptive.BPDA` (its forward, the identity's
    backward). Ascending their cross-entropy pushes every view away from the label at once, so
    that the views agree on a wrong class and the detector's score stays low (He et al., 2017,
    "Adversarial example defenses: ensembles of weak defenses are not strong").
    """

    def __init__(self, model: nn.Module, squeezers: Sequence[nn.Module]):
        super().__init__()
        self.model = model
        self.views = nn.ModuleList([nn.Identity(), *(BPDA(s) for s in squeezers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(self.model(view(x)).float().log_softmax(dim=1) for view in self.views)
