"""AdvProp (Xie et al., CVPR 2020): adversarial examples as extra training data, with their own
batch normalisation.

Clean and adversarial images have different statistics; one BatchNorm over both mixes two
distributions. AdvProp keeps the convolution and linear weights shared but gives adversarial
examples an auxiliary BatchNorm: clean batches go through the main BN, adversarial batches
through the auxiliary BN, and at test time only the main BN is used. The paper reports better
clean accuracy on ImageNet, not robustness.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


class DualBatchNorm2d(nn.Module):
    """Two BatchNorm2d layers of the same size; ``use_aux`` picks the one in use.

    * ``main``: clean examples, and every prediction at test time (``use_aux=False``).
    * ``aux``: adversarial examples during AdvProp training (``use_aux=True``).

    Shapes: x (N, C, H, W) -> (N, C, H, W), C = ``num_features``.
    """

    def __init__(self, num_features: int, **kwargs):
        super().__init__()
        self.main = nn.BatchNorm2d(num_features, **kwargs)
        self.aux = nn.BatchNorm2d(num_features, **kwargs)
        self.use_aux = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aux(x) if self.use_aux else self.main(x)

    def extra_repr(self) -> str:
        return f"use_aux={self.use_aux}"


@contextlib.contextmanager
def _bn_route(model: nn.Module, use_aux: bool):
    """Set ``use_aux`` on every :class:`DualBatchNorm2d` of ``model`` in the block; restore
    each layer's previous value when the block ends, also on an exception."""
    layers = [m for m in model.modules() if isinstance(m, DualBatchNorm2d)]
    previous = [layer.use_aux for layer in layers]
    try:
        for layer in layers:
            layer.use_aux = use_aux
        yield model
    finally:
        for layer, flag in zip(layers, previous):
            layer.use_aux = flag


def auxiliary_bn(model: nn.Module):
    """Context manager: route every :class:`DualBatchNorm2d` of ``model`` through its
    auxiliary BN in the block::

        with auxiliary_bn(model):
            logits_adv = model(x_adv)

    Each layer's previous ``use_aux`` is restored when the block ends, also on an exception.
    A model without dual BN layers is left as it is.
    """
    return _bn_route(model, True)


def advprop_loss(model: nn.Module, x_clean: torch.Tensor, x_adv: torch.Tensor,
                 y: torch.Tensor) -> torch.Tensor:
    """The AdvProp training loss: CE on clean images through the main BN plus CE on their
    adversarial versions through the auxiliary BN.

    Args:
        x_clean, x_adv: (N, C, H, W) images in [0, 1]; x_adv crafted from x_clean.
        y: (N,) int64 true labels of both.

    Returns:
        Scalar tensor (mean cross-entropy of each batch, summed), differentiable in the
        model's parameters. In train mode each BN's running statistics see only its own
        kind of image.
    """
    with _bn_route(model, False):
        clean = F.cross_entropy(model(x_clean), y)
    with auxiliary_bn(model):
        adversarial = F.cross_entropy(model(x_adv), y)
    return clean + adversarial
