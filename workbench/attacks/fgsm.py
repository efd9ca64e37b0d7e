"""The fast gradient sign method (Goodfellow et al., 2015): one step of size eps along the sign
of the input gradient. Taught in notebook 02."""

from __future__ import annotations

import torch
from torch import nn

from workbench.attacks.core import (attack_mode, cast_towards, check_batch, check_budget,
                                    loss_and_grad, per_example, work_dtype)


def fgsm_direction(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                   targeted: bool = False) -> torch.Tensor:
    """The FGSM step direction, ``sign`` of the gradient of the attack objective.

    It does not depend on eps, so a slider over eps needs it once: ``x + eps * direction``.

    Args:
        x: (N, C, H, W) images in [0, 1], in the dtype of the model's weights (a TypeError
            says how to convert). y: (N,) true labels, or target labels if targeted.

    Returns:
        (N, C, H, W) tensor of -1, 0 and +1 on the model's device.
    """
    x, y = check_batch(model, x, y)
    with attack_mode(model):
        _, grad = loss_and_grad(model, x, y, targeted=targeted)
    return grad.sign()


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps, *,
         targeted: bool = False) -> torch.Tensor:
    """Fast gradient sign method.

    Untargeted: ``x + eps * sign(grad_x CE(model(x), y))`` with ``y`` the true labels, which
    increases the loss of the true class. Targeted: ``x - eps * sign(grad_x CE(model(x), t))``
    with ``y = t`` the target classes, which decreases the loss of the target. The result is
    clamped to [0, 1]. The model runs in eval mode and is restored; ``x`` is not modified.

    Args:
        model: classifier over [0, 1] images returning logits.
        x: (N, C, H, W) float images in [0, 1], in the dtype of the model's weights: float64
            images (from NumPy, say) on a float32 model are a TypeError saying ``x.float()``.
        y: (N,) int64 class ids.
        eps: L-inf budget in pixel units, 0 <= eps <= 1 (8/255 is 8 intensity levels): a
            float, or an (N,) tensor with one budget per example.

    Returns:
        x_adv: (N, C, H, W) in [0, 1], x's dtype, with ``|x_adv - x| <= eps`` per pixel (in
        every dtype: low-precision results are rounded towards x).
    """
    n = x.shape[0] if isinstance(x, torch.Tensor) and x.dim() == 4 else 1
    eps = check_budget(eps, n)
    direction = fgsm_direction(model, x, y, targeted=targeted)
    x = x.detach().to(direction.device)
    # In float32 at least, then back to x's dtype rounded towards x: rounding 0.5 + 8/255 to
    # the nearest bfloat16 would land outside the ball.
    work = work_dtype(x.dtype)
    x_adv = x.to(work) + per_example(eps, direction.to(work)) * direction.to(work)
    return cast_towards(x_adv.clamp(0.0, 1.0), x)
