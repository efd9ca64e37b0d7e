"""Projected gradient descent (Madry et al., 2018) in L-inf and L2. Taught in notebook 03.

Each step moves along the (sign of, or normalised) gradient, then projects by assignment:
first onto the eps-ball around the clean image, then onto the image box [0, 1]. Clamping a
perturbation into the box only shrinks each of its coordinates, so the result stays inside
the ball in both norms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from workbench.attacks.core import (
    attack_mode,
    attack_success,
    check_batch,
    check_eps,
    loss_and_grad,
)

NORMS = ("linf", "l2")
_TINY = 1e-12


@dataclass
class AttackResult:
    """What an iterative attack returns.

    * ``x_adv``: (N, C, H, W) adversarial images in [0, 1], inside the eps-ball.
    * ``success``: (N,) bool, per example: the prediction left the label (untargeted) or
      reached the target (targeted).
    * ``loss_trace``: (steps, N) float32, the attack objective after each step (cross-entropy
      of the label, or minus cross-entropy of the target when targeted): it should rise. With
      restarts, the trace of the restart whose example was kept.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    loss_trace: torch.Tensor


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each example, shaped (N, 1, 1, 1) for broadcasting; computed in float32."""
    return t.float().flatten(1).norm(dim=1).clamp_min(_TINY).view(-1, *([1] * (t.dim() - 1)))


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project perturbations onto the eps-ball: (N, C, H, W) -> (N, C, H, W).

    L-inf clamps every coordinate to [-eps, eps]; L2 rescales examples whose norm exceeds eps
    to norm eps and leaves the others unchanged.
    """
    if norm == "linf":
        return delta.clamp(-eps, eps)
    factor = torch.clamp(eps / _per_example_norm(delta), max=1.0)
    return delta * factor.to(delta.dtype)


def ascent_step(grad: torch.Tensor, alpha: float, norm: str) -> torch.Tensor:
    """The step that increases the objective fastest within a step of size alpha in the norm:
    ``alpha * sign(grad)`` (L-inf) or ``alpha * grad / ||grad||_2`` (L2)."""
    if norm == "linf":
        return alpha * grad.sign()
    return alpha * grad / _per_example_norm(grad).to(grad.dtype)


def random_start_point(x: torch.Tensor, eps: float, norm: str,
                 generator: torch.Generator | None) -> torch.Tensor:
    """A random point of the eps-ball around x, inside [0, 1], drawn from ``generator``.

    L-inf: uniform in the cube. L2: uniform direction, radius eps * U(0, 1). Drawn on the
    generator's device (CPU by default) and moved to x's, so results match across devices.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    shape = x.shape
    if norm == "linf":
        delta = (torch.rand(shape, generator=generator, device=gen_device) * 2 - 1) * eps
    else:
        direction = torch.randn(shape, generator=generator, device=gen_device)
        radius = torch.rand((shape[0], 1, 1, 1), generator=generator, device=gen_device)
        delta = direction / _per_example_norm(direction) * radius * eps
    return (x + delta.to(device=x.device, dtype=x.dtype)).clamp(0.0, 1.0)


def _pgd_once(model, x, y, *, eps, alpha, steps, norm, targeted, start, early_stop):
    """One PGD run from ``start``. Returns x_adv (N, C, H, W), the objective after each step
    (steps, N) and the final objective (N,)."""
    x_adv = start
    objectives = []  # objectives[k]: at the point step k starts from (free with its gradient)
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(steps):
        objective, grad = loss_and_grad(model, x_adv, y, targeted=targeted)
        objectives.append(objective)
        stepped = (x + project(x_adv + ascent_step(grad, alpha, norm) - x, eps, norm)).clamp(0, 1)
        x_adv = torch.where(active.view(-1, 1, 1, 1), stepped, x_adv)
        if early_stop:
            active &= ~attack_success(model, x_adv, y, targeted=targeted)
            if not active.any():
                break
    final, _ = loss_and_grad(model, x_adv, y, targeted=targeted)
    after_step = objectives[1:] + [final] * (steps - len(objectives) + 1)
    trace = torch.stack(after_step[:steps]) if steps else final.new_zeros((0, x.shape[0]))
    return x_adv, trace, final


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float,
        steps: int, norm: str = "linf", targeted: bool = False, random_start: bool = True,
        generator: torch.Generator | None = None, restarts: int = 1,
        early_stop: bool = False) -> AttackResult:
    """Projected gradient descent.

    Args:
        model: classifier over [0, 1] images returning logits.
        x: (N, C, H, W) float images in [0, 1].
        y: (N,) class ids: the true labels, or the targets when ``targeted``.
        eps: budget in pixel units: L-inf (<= 1, e.g. 8/255) or L2 (e.g. 1.0 at 224 px).
        alpha: step size in the same units.
        steps: number of gradient steps (>= 0).
        norm: "linf" or "l2".
        targeted: push towards ``y`` instead of away from it.
        random_start: start from a random point of the ball (drawn from ``generator``).
        generator: ``torch.Generator`` for the random start; same seed, same result.
        restarts: independent runs; per example the successful one (else the highest
            objective) is kept.
        early_stop: stop moving an example once the attack succeeds on it.

    Returns:
        :class:`AttackResult` with ``x_adv`` (N, C, H, W), ``success`` (N,), ``loss_trace``
        (steps, N). The model's modes, parameters, their ``.grad`` and ``x`` are unchanged.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    eps = check_eps(eps, norm=norm)
    alpha = check_eps(alpha, name="alpha", norm=norm)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a whole number >= 0, got {steps!r}")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be a whole number >= 1, got {restarts!r}")
    x, y = check_batch(model, x, y)
    with attack_mode(model):
        best = None
        for _ in range(restarts):
            start = random_start_point(x, eps, norm, generator) if random_start else x.clone()
            x_adv, trace, final = _pgd_once(model, x, y, eps=eps, alpha=alpha, steps=steps,
                                            norm=norm, targeted=targeted, start=start,
                                            early_stop=early_stop)
            success = attack_success(model, x_adv, y, targeted=targeted)
            if best is None:
                best = [x_adv, success, trace, final]
                continue
            better = (success & ~best[1]) | ((success == best[1]) & (final > best[3]))
            best[0] = torch.where(better.view(-1, 1, 1, 1), x_adv, best[0])
            best[1] = torch.where(better, success, best[1])
            best[2] = torch.where(better.view(1, -1), trace, best[2])
            best[3] = torch.where(better, final, best[3])
    return AttackResult(x_adv=best[0].detach(), success=best[1], loss_trace=best[2])

