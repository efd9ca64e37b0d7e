"""The small CNN notebook 03 (part B) trains on the digits (standard, AdvProp or PGD-AT), and a
classifier behind a preprocessing defence (notebook 07)."""

from __future__ import annotations

import torch
from torch import nn

from workbench.defenses.advprop import DualBatchNorm2d
from workbench.models.layers import Classifier

# Mean and standard deviation of every pixel of the default training split,
# load_digits_split(size=16, test_fraction=0.25, seed=0)[0]: x_train.mean(), x_train.std().
# Constants, so that building a model reads no data; tests/test_defenses.py recomputes them.
DIGITS_MEAN = 0.3052247166633606
DIGITS_STD = 0.3188493549823761
DIGITS_INPUT_SIZE = (1, 16, 16)
DIGITS_CATEGORIES = [str(i) for i in range(10)]


def _conv_block(in_channels: int, out_channels: int, dual_bn: bool) -> nn.Sequential:
    """conv 3x3 (same padding) -> BN -> ReLU -> max-pool 2: (N, in, H, W) -> (N, out, H/2, W/2)."""
    norm = DualBatchNorm2d(out_channels) if dual_bn else nn.BatchNorm2d(out_channels)
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), norm,
                         nn.ReLU(), nn.AvgPool2d(2))


def digits_cnn(*, dual_bn: bool = False, seed: int = 0) -> Classifier:
    """A two-block CNN for 16 x 16 digits, with its normalisation inside.

    conv16-BN-ReLU-pool, conv32-BN-ReLU-pool, linear 512 -> 10 (about 10k parameters: small
    enough that PGD training takes seconds on a CPU). Weights are initialised from
    ``seed`` (PyTorch's default initialisers, run under a forked RNG so the global generator is
    left as it was): same seed, same weights, with or without ``dual_bn``.

    Args:
        dual_bn: every BatchNorm is a :class:`DualBatchNorm2d` (main + auxiliary), for AdvProp.
        seed: seed of the initial weights.

    Returns:
        :class:`Classifier` in train mode: x (N, 1, 16, 16) in [0, 1] -> logits (N, 10).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(_conv_block(1, 16, dual_bn), _conv_block(16, 32, dual_bn),
                            nn.Flatten(), nn.Linear(32 * 4 * 4, len(DIGITS_CATEGORIES)))
    kind = "dual (main + auxiliary) BatchNorm for AdvProp" if dual_bn else "BatchNorm"
    return Classifier(
        net, mean=[DIGITS_MEAN], std=[DIGITS_STD], categories=DIGITS_CATEGORIES,
        input_size=DIGITS_INPUT_SIZE, name="digits_cnn", mode="lite",
        architecture="digits CNN" + (" (dual BN)" if dual_bn else ""),
        weights=f"initialised from seed {seed}",
        source=f"A small CNN with {kind}, initialised from seed {seed}, for scikit-learn's "
               f"digits upsampled to 16 x 16; train it with workbench.defenses.")


class Preprocessed(nn.Module):
    """A classifier behind a preprocessing defence: ``model(preprocess(x))``, (N, C, H, W) ->
    (N, K) logits. ``preprocess`` maps images to images: a feature squeezer, an autoencoder, or
    the attacker's :class:`~workbench.attacks.adaptive.BPDA` stand-in for one."""

    def __init__(self, preprocess: nn.Module, model: nn.Module):
        super().__init__()
        self.preprocess, self.model = preprocess, model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(x))
