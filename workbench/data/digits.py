"""scikit-learn's handwritten digits (ships with the package, no download) as a small image set.

The 1,797 images are 8 x 8 with values 0..16. Notebook 03 (part B) trains its own models on
them, upsampled to 16 x 16 so that a small CNN has two pooling stages to work with. torch and
scikit-learn are imported inside the function: ``import workbench.data`` stays cheap.
"""

from __future__ import annotations

import numpy as np

DIGITS_MAX = 16.0  # the largest value in load_digits' 8 x 8 images (ink intensity 0..16)


def _check_args(size, test_fraction) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size must be a whole number of pixels >= 8 (the digits are 8 x 8), "
                         f"got {size!r}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not (
            0.0 < test_fraction < 1.0):
        raise ValueError(f"test_fraction must be a number strictly between 0 and 1 (the share "
                         f"of each class held out for testing), got {test_fraction!r}")


def load_digits_split(*, size: int = 16, test_fraction: float = 0.25, seed: int = 0):
    """The digits as image tensors, split into stratified train and test sets.

    Pixels are scaled from 0..16 to [0, 1], then upsampled bilinearly (no antialiasing, which
    only matters when shrinking) from 8 x 8 to ``size`` x ``size``. The split keeps each
    class's share equal in both sets and depends only on ``seed``.

    Args:
        size: side of the output images in pixels, >= 8.
        test_fraction: share of the examples held out, strictly between 0 and 1.
        seed: seed of the shuffle before the split; same seed, same split.

    Returns:
        (x_train, y_train, x_test, y_test): x (N, 1, size, size) float32 in [0, 1], y (N,)
        int64 class ids 0..9. With the defaults, 1,347 training and 450 test images.
    """
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    _check_args(size, test_fraction)
    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / DIGITS_MAX)[:, None]
    images = F.interpolate(images, size=(int(size), int(size)), mode="bilinear",
                           align_corners=False).clamp(0.0, 1.0)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=test_fraction,
                                           random_state=seed, stratify=digits.target)
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]
