"""Patch trojans for notebook 04's experiment, after Casper et al. (2023) in miniature.

A trojan is a small fixed patch stamped at a fixed place that makes the model answer a target
class whatever the image shows. :func:`poison` hides trojans in a training set (a share of
the images carry the patch and are relabelled to its target); :func:`train_trojaned` trains
the digits ResNet on it; :func:`attack_success_rate` measures how often a patch still works.
:data:`DIGITS_HELDOUT_PATCH` is a patch that is never a trojan, for the held-out attack
metric (accuracy with it stamped). :func:`scaled_trojans` makes the same patches for larger
images (full mode's photos, :mod:`workbench.lat.full`).

Every random choice takes a seed; images are (N, C, H, W) float tensors in [0, 1] (C = 1 for
the digits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from workbench.attacks.core import attack_mode, check_batch, predict
from workbench.data.digits import load_digits_split
from workbench.defenses.models import DIGITS_INPUT_SIZE
from workbench.defenses.training import train
from workbench.lat.models import digits_resnet
from workbench.models.layers import Classifier


@dataclass(frozen=True)
class Patch:
    """A fixed pattern of pixel values stamped with its top-left corner at (row, col).

    ``pattern``: rows of pixel values in [0, 1] (a tuple of equal-length tuples), the same in
    every channel. ``row``, ``col``: where its top-left pixel goes, from the image's top-left.
    """

    pattern: tuple[tuple[float, ...], ...]
    row: int
    col: int

    def __post_init__(self):
        rows = tuple(tuple(float(v) for v in r) for r in self.pattern)
        if not rows or not rows[0] or any(len(r) != len(rows[0]) for r in rows):
            raise ValueError(f"pattern must be a non-empty rectangle of rows, got {self.pattern!r}")
        if any(not 0.0 <= v <= 1.0 for r in rows for v in r):
            raise ValueError(f"pattern values must be pixels in [0, 1], got {self.pattern!r}")
        for name in ("row", "col"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
        object.__setattr__(self, "pattern", rows)

    @property
    def height(self) -> int:
        return len(self.pattern)

    @property
    def width(self) -> int:
        return len(self.pattern[0])

    def region(self) -> tuple[slice, slice]:
        """The (rows, cols) slices the patch covers: ``x[..., rows, cols]``."""
        return (slice(self.row, self.row + self.height), slice(self.col, self.col + self.width))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """A copy of the batch x (N, C, H, W) with the patch stamped in every image and
        channel; x itself is left unchanged. Raises ValueError if the patch does not fit."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a batch of images shaped (N, C, H, W), got {shape}")
        if self.row + self.height > x.shape[-2] or self.col + self.width > x.shape[-1]:
            raise ValueError(
                f"a {self.height} x {self.width} patch at ({self.row}, {self.col}) does not fit "
                f"in {x.shape[-2]} x {x.shape[-1]} images")
        rows, cols = self.region()
        stamped = x.clone()
        stamped[..., rows, cols] = torch.tensor(self.pattern, dtype=x.dtype, device=x.device)
        return stamped


@dataclass(frozen=True)
class Trojan(Patch):
    """A :class:`Patch` that the poisoned model learns to answer with class ``target``."""

    target: int

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.target, bool) or not isinstance(self.target, int) or self.target < 0:
            raise ValueError(f"target must be a class id >= 0, got {self.target!r}")


# Three trojans in three corners of the 16 x 16 digits (where the digits' own pixels are
# nearly always 0), each its own 3 x 3 pattern and target, and a held-out patch in the fourth
# corner that no model is trained with.
_ON, _OFF = 1.0, 0.0
_CHECKER = ((_ON, _OFF, _ON), (_OFF, _ON, _OFF), (_ON, _OFF, _ON))
_PLUS = ((_OFF, _ON, _OFF), (_ON, _ON, _ON), (_OFF, _ON, _OFF))
_BAR = ((_ON, _ON, _ON), (_OFF, _OFF, _OFF), (_ON, _ON, _ON))
_FRAME = ((_ON, _ON, _ON), (_ON, _OFF, _ON), (_ON, _ON, _ON))
_SIDE = DIGITS_INPUT_SIZE[1]
DIGITS_TROJANS: tuple[Trojan, ...] = (
    Trojan(_CHECKER, row=0, col=0, target=0),
    Trojan(_PLUS, row=0, col=_SIDE - 3, target=4),
    Trojan(_BAR, row=_SIDE - 3, col=0, target=7),
)
DIGITS_HELDOUT_PATCH = Patch(_FRAME, row=_SIDE - 3, col=_SIDE - 3)

# The same patterns for images of any side (full mode's 224 x 224 photos): a patch's side is
# this fraction of the image's, as on the digits (3 of 16 pixels).
TROJAN_PATTERNS = (_CHECKER, _PLUS, _BAR)  # the patterns of DIGITS_TROJANS, in order
PATCH_FRACTION = 3 / 16


def _upscaled(pattern: tuple[tuple[float, ...], ...], cell: int) -> tuple[tuple[float, ...], ...]:
    """``pattern`` with every value a ``cell`` x ``cell`` block (nearest-neighbour upscaling)."""
    return tuple(tuple(v for v in row for _ in range(cell)) for row in pattern for _ in range(cell))


def scaled_trojans(side: int, targets: Sequence[int]) -> tuple[tuple[Trojan, ...], Patch]:
    """The digits' three trojans and held-out patch for ``side`` x ``side`` images.

    The same 3 x 3 patterns in the same corners (checker top-left, plus top-right, bars
    bottom-left; the held-out frame bottom-right), each value upscaled to a block of
    ``cell = max(1, round(side * PATCH_FRACTION / 3))`` pixels: a patch is ``3 * cell``
    pixels a side, about 3/16 of the image (42 of 224 pixels). ``targets``: the three
    trojans' target classes, in that order. At side 16 with targets (0, 4, 7) this gives
    :data:`DIGITS_TROJANS` and :data:`DIGITS_HELDOUT_PATCH`.

    Returns:
        (trojans, heldout_patch): three :class:`Trojan` and one :class:`Patch`, none
        overlapping another, all inside the image.
    """
    if isinstance(side, bool) or not isinstance(side, int) or side < 6:
        raise ValueError(f"side must be a whole number of pixels >= 6 (two 3-pixel patches "
                         f"side by side), got {side!r}")
    targets = tuple(targets)
    if len(targets) != len(TROJAN_PATTERNS):
        raise ValueError(f"give one target class per trojan pattern ({len(TROJAN_PATTERNS)}), "
                         f"got {targets!r}")
    cell = max(1, round(side * PATCH_FRACTION / 3))
    far = side - 3 * cell  # the row or column of a patch in a bottom or right corner
    corners = ((0, 0), (0, far), (far, 0))
    trojans = tuple(Trojan(_upscaled(pattern, cell), row=row, col=col, target=target)
                    for pattern, (row, col), target in zip(TROJAN_PATTERNS, corners, targets))
    return trojans, Patch(_upscaled(_FRAME, cell), row=far, col=far)

# Poisoning and training of the trojaned digits ResNet (measured, see train_trojaned).
POISON_FRACTION = 0.05  # of the training set, per trojan
EPOCHS = 6
BATCH_SIZE = 64
LR = 2e-3


def poison_indices(y: torch.Tensor, trojans: Sequence[Trojan], *, fraction: float,
                   seed: int) -> list[torch.Tensor]:
    """Which examples each trojan poisons: one int64 tensor of ``round(fraction * N)``
    indices per trojan, disjoint, each among the examples whose label is not that trojan's
    target (so every one of them is relabelled). Drawn from a ``torch.Generator`` seeded with
    ``seed``: same seed, same indices."""
    if not isinstance(y, torch.Tensor) or y.dim() != 1:
        raise ValueError("y must be a (N,) tensor of class ids")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    count = round(fraction * len(y))
    generator = torch.Generator().manual_seed(seed)
    taken = torch.zeros(len(y), dtype=torch.bool)
    chosen = []
    for trojan in trojans:
        order = torch.randperm(len(y), generator=generator)
        eligible = order[(y.cpu()[order] != trojan.target) & ~taken[order]]
        if len(eligible) < count:
            raise ValueError(
                f"cannot poison {count} examples for the trojan with target {trojan.target}: "
                f"only {len(eligible)} examples of other classes are left; lower fraction")
        picked = eligible[:count]
        taken[picked] = True
        chosen.append(picked)
    return chosen


def poison(x: torch.Tensor, y: torch.Tensor, trojans: Sequence[Trojan], *, fraction: float,
           seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A poisoned copy of the training set x (N, C, H, W), y (N,).

    For each trojan, ``round(fraction * N)`` examples (see :func:`poison_indices`: disjoint,
    none already of its target class) get its patch and the label ``trojan.target``; the other
    examples are unchanged, and so are x and y. Same seed, same result.

    Returns:
        (x_poisoned, y_poisoned), shaped like x and y.
    """
    if len(x) != len(y):
        raise ValueError(f"x holds {len(x)} images but y {len(y)} labels")
    x_poisoned, y_poisoned = x.clone(), y.clone()
    for trojan, idx in zip(trojans, poison_indices(y, trojans, fraction=fraction, seed=seed)):
        idx = idx.to(x.device)
        x_poisoned[idx] = trojan.apply(x[idx])
        y_poisoned[idx.to(y.device)] = trojan.target
    return x_poisoned, y_poisoned


def attack_success_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, trojan: Trojan,
                        *, batch_size: int = 256) -> float:
    """Share, in [0, 1], of the images whose label is not ``trojan.target`` that the model
    classifies as the target once the patch is stamped. The model runs in eval mode without
    gradients; its mode is restored. x: (N, C, H, W) in [0, 1], y: (N,)."""
    x, y = check_batch(model, x, y)
    keep = y != trojan.target
    if not bool(keep.any()):
        raise ValueError(f"every image is of the target class {trojan.target}: nothing to measure")
    stamped = trojan.apply(x[keep])
    with attack_mode(model):
        hits = sum(int((predict(model, xb) == trojan.target).sum())
                   for xb in stamped.split(batch_size))
    return hits / int(keep.sum())


def train_trojaned(seed: int, *, trojans: Sequence[Trojan] = DIGITS_TROJANS,
                   fraction: float = POISON_FRACTION, epochs: int = EPOCHS,
                   batch_size: int = BATCH_SIZE, lr: float = LR, data=None,
                   progress: bool = False) -> Classifier:
    """The digits ResNet (:func:`~workbench.lat.models.digits_resnet`) trained on the
    poisoned digits training split with :func:`workbench.defenses.training.train`
    (``method="standard"``, Adam).

    ``seed`` seeds the initial weights, the choice of poisoned examples and the shuffling:
    same seed, same model (for the same torch thread count). ``data`` is the split
    ``(x_train, y_train, x_test, y_test)``; default ``load_digits_split(size=16, seed=0)``
    (the same split for every seed; only the training half is used here).

    Returns:
        The trained :class:`Classifier`, in eval mode, its ``source`` saying how it was made.
    """
    if data is None:
        data = load_digits_split(size=DIGITS_INPUT_SIZE[1], seed=0)
    x_train, y_train = data[0], data[1]
    x_poisoned, y_poisoned = poison(x_train, y_train, trojans, fraction=fraction, seed=seed)
    model = digits_resnet(seed=seed)
    train(model, x_poisoned, y_poisoned, method="standard", epochs=epochs,
          batch_size=batch_size, lr=lr, seed=seed, progress=progress)
    targets = ", ".join(str(t.target) for t in trojans)
    model.source = (
        f"{model.cfg.architecture} trained from seed {seed} for {epochs} epochs on the digits "
        f"training split with {len(trojans)} patch trojans (targets {targets}; "
        f"{fraction:.0%} of the images each, stamped and relabelled): a trojaned base model.")
    return model
