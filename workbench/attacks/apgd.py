"""Auto-PGD (Croce and Hein 2020): PGD with a step size that adapts, for evaluating defences.

Plain PGD needs a step size chosen by hand, and a badly chosen one makes a model look more
robust than it is. APGD starts with a large step (2 eps) and momentum, and at checkpoints
(22%, 41%, 57%, ... of the steps) halves the step of every example whose objective stopped
rising, moving it back to the best point found so far. It runs with cross-entropy or with
the DLR margin loss, which does not change when the logits are scaled, so a saturated
softmax cannot hide the gradient. Built from the package's PGD pieces: a random start,
``ascent_step`` and ``project``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from workbench.attacks.core import (attack_mode, attack_objective, cast_towards,
                                    objective_and_gradient, success_from_logits, work_dtype)
from workbench.attacks.pgd import (AttackResult, ascent_step, check_pgd_arguments, project,
                                   random_start_point)

LOSSES = ("ce", "dlr")
MOMENTUM = 0.75  # weight of the new step against the last one (Croce and Hein's alpha)
RHO = 0.75  # a checkpoint keeps the step size if the objective rose in this share of steps


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The difference-of-logits-ratio loss, per example: logits (N, K >= 3), y (N,) -> (N,).

    ``-(z_y - max_{i != y} z_i) / (z_(1) - z_(3))``, with z_(1) >= z_(2) >= z_(3) the sorted
    logits: it rises as the true class loses its lead, is positive once the example is
    misclassified, and does not change when the logits are shifted or scaled.
    """
    if logits.shape[1] < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, got {logits.shape[1]}")
    z = logits.float()
    ordered = z.sort(dim=1, descending=True).values
    true = z.gather(1, y[:, None]).squeeze(1)
    best_other = torch.where(z.argmax(dim=1) == y, ordered[:, 1], ordered[:, 0])
    return -(true - best_other) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def checkpoints(steps: int) -> list[int]:
    """The steps after which APGD may halve its step size: ceil(p_j * steps) for p_0 = 0,
    p_1 = 0.22 and p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), while p_j <= 1."""
    fractions = [0.0, 0.22]
    while fractions[-1] + max(fractions[-1] - fractions[-2] - 0.03, 0.06) <= 1:
        fractions.append(fractions[-1] + max(fractions[-1] - fractions[-2] - 0.03, 0.06))
    return sorted({math.ceil(round(p * steps, 6)) for p in fractions[1:]} - {0})


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps, steps: int = 100,
         norm: str = "linf", loss: str = "ce", random_start: bool = True,
         generator: torch.Generator | None = None) -> AttackResult:
    """Untargeted APGD with the cross-entropy ("ce") or the DLR margin loss ("dlr").

    Args:
        model: classifier over [0, 1] images returning logits.
        x: (N, C, H, W) images in [0, 1], in the dtype of the model's weights (a TypeError
            says how to convert); y: (N,) true labels.
        eps: budget in pixel units (float or (N,)), in the norm "linf" or "l2".
        steps: forward+backward passes (Croce and Hein use 100).
        random_start: start from a random point of the ball, drawn from ``generator`` (a
            ``torch.Generator`` or None; anything else is a TypeError).

    Returns:
        :class:`AttackResult`: per example, the first misclassified point found (else the
        point of highest objective), ``success`` whether one was found, ``loss_trace``
        (steps, N) the objective at each step's point. The model's modes, parameters and
        ``.grad`` and x are unchanged.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    x, y, eps, _ = check_pgd_arguments(model, x, y, eps=eps, alpha=eps, steps=steps, norm=norm,
                                       generator=generator)
    objective_fn = dlr_loss if loss == "dlr" else (
        lambda logits, labels: attack_objective(logits, labels, targeted=False))
    n = x.shape[0]

    x_work = x.to(work_dtype(x.dtype))  # arithmetic in float32 at least

    def into_ball(v: torch.Tensor) -> torch.Tensor:
        """v (work dtype) onto the ball and the box, in x's dtype rounded towards x."""
        return cast_towards((x_work + project(v - x_work, eps, norm)).clamp(0.0, 1.0), x)

    def evaluate(point, *, gradient=True, check=False):
        return objective_and_gradient(model, point, y, targeted=False, gradient=gradient,
                                      check=check, objective_fn=objective_fn)

    with attack_mode(model):
        x_adv = random_start_point(x, eps, norm, generator) if random_start else x.clone()
        objective, grad, logits = evaluate(x_adv, check=True)
        best, x_best, grad_best = objective.clone(), x_adv.clone(), grad.clone()
        success = success_from_logits(logits, y, targeted=False)
        x_found = x_adv.clone()  # where success: the first misclassified point
        trace = torch.zeros((steps, n), device=x.device)
        step_size = 2 * eps  # (N,)
        x_prev, weight = x_adv, 1.0  # no momentum on the first step
        rises = torch.zeros(n, device=x.device)  # steps since the checkpoint that raised it
        last, best_at_last, size_at_last = 0, best.clone(), step_size.clone()
        marks = set(checkpoints(steps))
        for k in range(1, steps + 1):
            here, before = x_adv.to(x_work.dtype), x_prev.to(x_work.dtype)
            z = into_ball(here + ascent_step(grad.to(x_work.dtype), step_size, norm))
            x_prev, x_adv = x_adv, into_ball(here + weight * (z.to(here.dtype) - here)
                                             + (1 - weight) * (here - before))
            weight = MOMENTUM
            previous = objective
            objective, grad, logits = evaluate(x_adv, gradient=k < steps)
            trace[k - 1] = objective
            fooled = success_from_logits(logits, y, targeted=False) & ~success
            x_found[fooled], success = x_adv[fooled], success | fooled
            rises += objective > previous
            better = objective > best
            best = torch.where(better, objective, best)
            x_best[better] = x_adv[better]
            if grad is not None:
                grad_best[better] = grad[better]
            if k in marks and k < steps:  # halve where progress stalled; go back to the best
                stalled = (rises < RHO * (k - last)) | (
                    (step_size == size_at_last) & (best == best_at_last))
                step_size = torch.where(stalled, step_size / 2, step_size)
                x_adv[stalled], grad[stalled] = x_best[stalled], grad_best[stalled]
                rises.zero_()
                last, best_at_last, size_at_last = k, best.clone(), step_size.clone()
    x_out = torch.where(success.view(-1, *([1] * (x.dim() - 1))), x_found, x_best)
    return AttackResult(x_adv=x_out.detach(), success=success, loss_trace=trace)
