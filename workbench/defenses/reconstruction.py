"""Input reconstruction in the manner of MagNet (Meng and Chen, 2017): a small convolutional
autoencoder, trained on clean images only, in front of the classifier (``Preprocessed(
autoencoder, model)``, :class:`workbench.defenses.models.Preprocessed`). An adversarial
perturbation is off the data's manifold; the autoencoder maps the image back towards it, and
the classifier sees the reconstruction.

Attacked through the classifier alone, the defence looks strong; attacked through the whole
pipeline (autoencoder and classifier together, which is differentiable end to end), it is
about as weak as the classifier (Carlini and Wagner, 2017, "MagNet and 'Efficient Defenses
...' are not robust").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workbench.defenses.training import fit

NOISE = 0.1  # std of the Gaussian noise added to training inputs (a denoising autoencoder)


def digits_autoencoder(*, channels: int = 16, seed: int = 0) -> nn.Sequential:
    """A small convolutional autoencoder for (N, 1, H, W) images in [0, 1], H and W even.

    conv 3x3 (1 -> channels) - ReLU - average pool 2 - conv 3x3 - ReLU - upsample 2 (nearest)
    - conv 3x3 (channels -> 1) - sigmoid: (N, 1, H, W) -> (N, 1, H, W) in [0, 1]. Weights from
    ``seed`` (under a forked RNG: torch's global generator is left as it was).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(channels, 1, 3, padding=1), nn.Sigmoid())


def train_autoencoder(autoencoder: nn.Module, x_train: torch.Tensor, *, noise: float = NOISE,
                      seed: int = 0, progress: bool = False, **hp) -> dict:
    """Train ``autoencoder`` to reconstruct clean images x_train (N, C, H, W) in [0, 1] from
    copies with Gaussian noise of std ``noise`` added (clamped to [0, 1]): mean squared error.
    The noise is drawn from the training loop's generator (seeded with ``seed``). Keywords
    (epochs, batch_size, lr) and history as :func:`workbench.defenses.training.fit`."""
    if not noise >= 0:
        raise ValueError(f"noise must be a number >= 0, got {noise!r}")

    def batch_loss(model, x, unused_labels, generator):
        noisy = (x + noise * torch.randn(x.shape, generator=generator)).clamp(0, 1)
        return F.mse_loss(model(noisy), x)

    return fit(autoencoder, x_train, torch.zeros(len(x_train), dtype=torch.long), batch_loss,
               seed=seed, progress=progress, name="autoencoder", **hp)
