"""Accuracy on clean images, under attack, and under attacks crafted on another model.

Every function runs the model in eval mode and restores its mode afterwards. Attacks are
untargeted and L-inf, with eps in pixel units (images in [0, 1]); PGD's random starts are
drawn from a generator seeded with ``seed``, so the same call gives the same number.

Images are in the dtype of the model's weights: x in another one (float64 images from NumPy on
a float32 model, say) is a TypeError saying how to convert it (``x.float()``), as in the
attacks (:func:`workbench.attacks.core.check_batch`); nothing is converted silently.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from workbench.attacks import fgsm, pgd, pgd_sweep, predict, repeat_over_budgets
from workbench.attacks.core import attack_mode, check_batch, check_eps
from workbench.defenses.training import default_alpha

ATTACKS = ("pgd", "fgsm")
EVAL_STEPS = 10


def _check_attack(attack: str) -> None:
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose one of {ATTACKS}")


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Share of images whose top prediction is the label, in [0, 1].

    x: (N, C, H, W) float in [0, 1]; y: (N,) int64. The model runs in eval mode, in batches
    of ``batch_size``; its mode is restored.
    """
    x, y = check_batch(model, x, y)
    with attack_mode(model):  # eval mode, frozen parameters, both restored afterwards
        correct = sum(int((predict(model, xb) == yb).sum())
                      for xb, yb in zip(x.split(batch_size), y.split(batch_size)))
    return correct / len(y)


def accuracy_and_confidence(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                            batch_size: int = 256) -> tuple[float, float]:
    """Top-1 accuracy, and the mean softmax probability of the true class: two floats in
    [0, 1].

    x: (N, C, H, W) float in [0, 1]; y: (N,) int64 class ids. The model runs in eval mode,
    without gradients, in batches of ``batch_size``; its mode is restored.
    """
    x, y = check_batch(model, x, y)
    correct, true_class_prob = 0, 0.0
    with attack_mode(model), torch.no_grad():
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            probs = model(xb).float().softmax(dim=1)
            correct += int((probs.argmax(dim=1) == yb).sum())
            true_class_prob += float(probs.gather(1, yb[:, None]).sum())
    return correct / len(y), true_class_prob / len(y)


def accuracy_and_confidence_curve(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: Sequence[float],
        attack: Callable[[nn.Module, torch.Tensor, torch.Tensor, float], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accuracy and confidence under ``attack`` at each budget of ``epsilons``: notebook 02's
    ``sweep_eps``.

    Args:
        model: a classifier taking images in [0, 1]; it runs in eval mode (the attack too),
            and its mode is restored.
        x: (N, C, H, W) float in [0, 1]. y: (N,) int64 true labels.
        epsilons: budgets in pixel units, in the order to sweep them.
        attack: ``attack(model, x, y, eps) -> x_adv`` (N, C, H, W), e.g.
            :func:`workbench.attacks.fgsm`; called once per eps, in order, on the whole batch.

    Returns:
        ``(accuracy, confidence)``, two float32 tensors shaped ``(len(epsilons),)``: per eps,
        the top-1 accuracy on ``x_adv`` and the mean softmax probability of the true class
        (see :func:`accuracy_and_confidence`), both in [0, 1].
    """
    x, y = check_batch(model, x, y)
    accuracies, confidences = [], []
    with attack_mode(model):
        for eps in epsilons:
            acc, conf = accuracy_and_confidence(model, attack(model, x, y, eps), y)
            accuracies.append(acc)
            confidences.append(conf)
    return torch.tensor(accuracies), torch.tensor(confidences)


def adversarial_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                         attack: str = "pgd", steps: int = EVAL_STEPS,
                         alpha: float | None = None, seed: int = 0,
                         batch_size: int = 256) -> torch.Tensor:
    """Untargeted L-inf adversarial versions of x, crafted on ``model`` in batches.

    Args:
        x: (N, C, H, W) float in [0, 1]. y: (N,) int64 true labels.
        eps: budget in pixel units. attack: "pgd" or "fgsm" (which ignores steps and alpha).
        steps: PGD steps. alpha: PGD step size (default 2.5 * eps / steps).
        seed: seeds PGD's random starts (one generator across the batches).

    Returns:
        (N, C, H, W) in [0, 1], each within eps of its clean image.
    """
    _check_attack(attack)
    eps = check_eps(eps)
    alpha = default_alpha(eps, steps) if alpha is None else alpha
    generator = torch.Generator().manual_seed(seed)
    x, y = check_batch(model, x, y)
    parts = [fgsm(model, xb, yb, eps) if attack == "fgsm" else
             pgd(model, xb, yb, eps=eps, alpha=alpha, steps=steps, generator=generator).x_adv
             for xb, yb in zip(x.split(batch_size), y.split(batch_size))]
    return torch.cat(parts)


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                    attack: str = "pgd", steps: int = EVAL_STEPS, alpha: float | None = None,
                    seed: int = 0, batch_size: int = 256) -> float:
    """Accuracy on adversarial examples crafted against ``model`` itself (white box), in
    [0, 1]. Arguments as :func:`adversarial_examples`. At eps = 0 no attack can move an image,
    so it is :func:`accuracy`, computed without running one."""
    _check_attack(attack)
    if check_eps(eps) == 0:
        return accuracy(model, x, y, batch_size)
    x_adv = adversarial_examples(model, x, y, eps=eps, attack=attack, steps=steps, alpha=alpha,
                                 seed=seed, batch_size=batch_size)
    return accuracy(model, x_adv, y, batch_size)


def robustness_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     epsilons: Sequence[float], attack: str = "pgd", *,
                     steps: int = EVAL_STEPS, seed: int = 0,
                     batch_size: int = 256) -> list[float]:
    """Robust accuracy at each eps of ``epsilons`` (pixel units): a list of floats in [0, 1],
    one per eps.

    One batched attack for the whole curve: every image is repeated once per eps with its own
    budget (:func:`workbench.attacks.pgd_sweep`, PGD step size 2.5 * eps / steps at each; FGSM
    with one budget per image), ``batch_size`` attacked images at a time. The random starts
    come from a generator seeded with ``seed``.
    """
    _check_attack(attack)
    x, y = check_batch(model, x, y)
    for eps in epsilons:
        check_eps(eps)
    xs, ys, budgets = repeat_over_budgets(x, y, epsilons)
    if attack == "pgd":
        x_adv = pgd_sweep(model, x, y, epsilons, steps=steps, batch_size=batch_size,
                          generator=torch.Generator().manual_seed(seed)).x_adv.flatten(0, 1)
    else:
        x_adv = torch.cat([fgsm(model, xb, yb, eb) for xb, yb, eb in
                           zip(xs.split(batch_size), ys.split(batch_size),
                               budgets.split(batch_size))])
    with attack_mode(model), torch.no_grad():
        correct = torch.cat([predict(model, xb) == yb
                             for xb, yb in zip(x_adv.split(batch_size), ys.split(batch_size))])
    per_eps = correct.view(len(budgets) // len(y), len(y)).sum(dim=1)
    return [int(count) / len(y) for count in per_eps]


def transfer_accuracy(source_model: nn.Module, target_model: nn.Module, x: torch.Tensor,
                      y: torch.Tensor, *, eps: float, steps: int = EVAL_STEPS,
                      alpha: float | None = None, seed: int = 0, batch_size: int = 256) -> float:
    """Black-box transfer: accuracy of ``target_model`` on PGD examples crafted against
    ``source_model`` (which must take the same images), in [0, 1]."""
    x_adv = adversarial_examples(source_model, x, y, eps=eps, steps=steps, alpha=alpha,
                                 seed=seed, batch_size=batch_size)
    return accuracy(target_model, x_adv, y, batch_size)
