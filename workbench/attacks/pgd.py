"""Projected gradient descent (Madry et al., 2018) in L-inf and L2. Taught in notebook 03.

PGD is three small pieces and a loop, the way foolbox builds every gradient attack:

* :func:`random_start_point`: a random point of the eps-ball around x, inside [0, 1];
* :func:`ascent_step`: the steepest step of size alpha in the norm (the sign of the gradient
  in L-inf, the gradient scaled to length alpha in L2);
* :func:`project`: back onto the eps-ball around x, *by assignment*; then onto the box [0, 1].

:func:`pgd_step` is one ascent step followed by both projections, and :func:`pgd` is the loop
over it. Clamping a perturbation into the box only shrinks each of its coordinates, so the
result stays inside the ball in both norms. The same ``project`` and ``ascent_step`` serve
the latent attacks of ``workbench.lat``: they work on any (N, ...) tensor.

Budgets ``eps`` and step sizes ``alpha`` are a float, or an (N,) tensor with one value per
example: a single attack then sweeps a whole grid of budgets (:mod:`workbench.attacks.sweep`).
Restarts are in :mod:`workbench.attacks.restarts`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from workbench.attacks.core import (
    attack_mode,
    attack_objective,
    cast_towards,
    check_batch,
    check_budget,
    check_generator,
    margin_objective,
    objective_and_gradient,
    per_example,
    success_from_logits,
    work_dtype,
)

NORMS = ("linf", "l2")
LOSSES = {"ce": attack_objective, "margin": margin_objective}  # name -> (logits, y, *, targeted)
_TINY = 1e-12


@dataclass
class AttackResult:
    """What an iterative attack returns.

    * ``x_adv``: (N, C, H, W) adversarial images in [0, 1], inside the eps-ball.
    * ``success``: (N,) bool, per example: the prediction left the label (untargeted) or
      reached the target (targeted).
    * ``loss_trace``: (steps, N) float32, the attack objective after each step (cross-entropy
      of the label, or minus cross-entropy of the target when targeted; the logit margin
      with ``loss="margin"``): it should rise.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    loss_trace: torch.Tensor


@dataclass(frozen=True)
class PGDStep:
    """What ``on_step`` receives after each step: copies, safe to keep.

    ``step`` counts from 0; ``x_adv`` (N, C, H, W) the points after it; ``objective`` (N,)
    float32 and ``logits`` (N, K) there; ``success`` (N,) bool.
    """

    step: int
    x_adv: torch.Tensor
    objective: torch.Tensor
    logits: torch.Tensor
    success: torch.Tensor


def l2_norms(t: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each example of t (N, ...), shaped (N, 1, ..., 1) to broadcast over
    it; computed in float32 and at least 1e-12, so that dividing by it is safe."""
    return t.float().flatten(1).norm(dim=1).clamp_min(_TINY).view(-1, *([1] * (t.dim() - 1)))


def project(delta: torch.Tensor, eps, norm: str) -> torch.Tensor:
    """Project perturbations onto the eps-ball: (N, ...) -> (N, ...).

    L-inf clamps every coordinate to [-eps, eps]; L2 rescales examples whose norm exceeds eps
    to norm eps and leaves the others unchanged. ``eps``: a float, or (N,) one per example.
    """
    eps = per_example(eps, delta)
    if norm == "linf":
        return torch.minimum(torch.maximum(delta, -eps), eps) if torch.is_tensor(eps) \
            else delta.clamp(-eps, eps)
    factor = torch.clamp(eps / l2_norms(delta), max=1.0)
    return delta * factor.to(delta.dtype)


def ascent_step(grad: torch.Tensor, alpha, norm: str) -> torch.Tensor:
    """The step that increases the objective fastest within a step of size alpha in the norm:
    ``alpha * sign(grad)`` (L-inf) or ``alpha * grad / ||grad||_2`` (L2), per example.
    Shapes: grad (N, ...) -> (N, ...); ``alpha`` a float or (N,)."""
    alpha = per_example(alpha, grad)
    if norm == "linf":
        return alpha * grad.sign()
    return alpha * grad / l2_norms(grad).to(grad.dtype)


def pgd_step(x_adv: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, *, alpha, eps,
             norm: str = "linf") -> torch.Tensor:
    """One PGD step from x_adv: ascend, project onto the eps-ball around x *by assignment*
    (``x + project(...)``, never ``x_adv + project(...)``), then onto [0, 1].

    Shapes: x_adv, x, grad (N, C, H, W) -> (N, C, H, W). ``alpha`` and ``eps`` in pixel units,
    floats or (N,) tensors.
    """
    stepped = x_adv + ascent_step(grad, alpha, norm)
    return (x + project(stepped - x, eps, norm)).clamp(0.0, 1.0)


def random_start_point(x: torch.Tensor, eps, norm: str,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """A random point of the eps-ball around x, inside [0, 1], drawn from ``generator``.

    L-inf: uniform in the cube. L2: uniform direction, radius eps * U(0, 1). ``eps`` a float
    or (N,). Drawn in float32 on the generator's device (CPU by default) and moved to x's, so
    results match across devices. Returns a new tensor with x's dtype, device and layout.
    TypeError when ``generator`` is not None or a ``torch.Generator`` (a seed is not one).
    """
    delta = random_in_ball(x, eps, norm, generator)
    start = (x.to(work_dtype(x.dtype)) + delta).clamp(0.0, 1.0)
    return torch.empty_like(x).copy_(cast_towards(start, x))


def random_in_ball(like: torch.Tensor, eps, norm: str,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """A random offset in the eps-ball, one per example, shaped like ``like`` (N, ...).

    L-inf: uniform in the cube. L2: uniform direction, radius eps * U(0, 1). ``eps`` a float
    or (N,). Drawn in float32 on the generator's device (CPU by default), returned float32 on
    ``like``'s device, so results match across devices. The ball is over all of an example's
    dimensions, so it serves images and hidden activations alike.
    """
    check_generator(generator)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    shape = like.shape
    if norm == "linf":
        delta = torch.rand(shape, generator=generator, device=gen_device) * 2 - 1
    else:
        direction = torch.randn(shape, generator=generator, device=gen_device)
        radius = torch.rand((shape[0], *([1] * (like.dim() - 1))), generator=generator,
                            device=gen_device)
        delta = direction / l2_norms(direction) * radius
    delta = delta.to(like.device)
    return delta * per_example(eps, delta)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps, alpha, steps: int,
        norm: str = "linf", targeted: bool = False, random_start: bool = True,
        generator: torch.Generator | None = None, early_stop: bool = False,
        on_step: Callable[[PGDStep], None] | None = None, loss: str = "ce") -> AttackResult:
    """Projected gradient descent.

    Args:
        model: classifier over [0, 1] images returning logits.
        x: (N, C, H, W) float images in [0, 1], in the dtype of the model's weights (a
            TypeError says how to convert, e.g. float64 images from NumPy: ``x.float()``).
        y: (N,) class ids: the true labels, or the targets when ``targeted``.
        eps: budget in pixel units, a float or (N,) one per example: L-inf (<= 1, e.g.
            8/255) or L2 (e.g. 1.0 at 224 px).
        alpha: step size in the same units, a float or (N,).
        steps: number of gradient steps (>= 0).
        norm: "linf" or "l2".
        targeted: push towards ``y`` instead of away from it.
        random_start: start from a random point of the ball (drawn from ``generator``).
        generator: ``torch.Generator`` for the random start (None: torch's global one);
            same seed, same result. Anything else, a seed say, is a TypeError.
        early_stop: an example stops moving once the attack succeeds on it (checked at the
            start and after every step) and leaves the batch the model sees.
        on_step: called after every step with a :class:`PGDStep`, e.g. to draw a live loss
            curve or keep every step's images.
        loss: what the attack ascends, from the logits: "ce", the cross-entropy of the label
            (of minus the target's, targeted), or "margin", Carlini and Wagner's logit
            margin (:func:`~workbench.attacks.core.margin_objective`), whose gradient
            survives a saturated softmax.

    Returns:
        :class:`AttackResult` with ``x_adv`` (N, C, H, W), ``success`` (N,), ``loss_trace``
        (steps, N). The model's modes, parameters, their ``.grad`` and ``x`` are unchanged.
        ``x_adv`` has x's dtype and layout (steps run in float32 at least and are rounded
        towards x, so low-precision images stay inside the ball too).

    Cost: ``steps`` forward+backward passes and one forward pass. Under ``torch.autocast``
    the objective and the norms are computed in float32.
    """
    x, y, eps, alpha = check_pgd_arguments(model, x, y, eps=eps, alpha=alpha, steps=steps,
                                           norm=norm, generator=generator)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {tuple(LOSSES)}, got {loss!r}")
    objective_fn = functools.partial(LOSSES[loss], targeted=targeted)
    n = x.shape[0]
    with attack_mode(model):
        x_adv = random_start_point(x, eps, norm, generator) if random_start else x.clone()
        objective = torch.zeros(n, device=x.device)  # at each example's current point
        success = torch.zeros(n, dtype=torch.bool, device=x.device)
        logits = None
        trace = torch.zeros((steps, n), device=x.device)
        rows = torch.arange(n, device=x.device)  # the examples still moving
        for k in range(steps + 1):
            # Objective and logits where step k starts (= after step k - 1); a gradient only
            # when a step follows.
            value, grad, out = objective_and_gradient(
                model, x_adv[rows], y[rows], targeted=targeted, gradient=k < steps, check=k == 0,
                objective_fn=objective_fn)
            logits = out.new_zeros((n, out.shape[1])) if logits is None else logits
            objective[rows], logits[rows] = value, out
            success[rows] = success_from_logits(out, y[rows], targeted=targeted)
            if k > 0:
                trace[k - 1] = objective
                _report(on_step, k - 1, x_adv, objective, logits, success)
            if k == steps:
                break
            if early_stop:  # fooled examples stay where they are
                moving = ~success[rows]
                rows, grad = rows[moving], grad[moving]
                if rows.numel() == 0:
                    trace[k:] = objective
                    for later in range(k, steps):
                        _report(on_step, later, x_adv, objective, logits, success)
                    break
            x_adv[rows] = _step_in_precision(x_adv[rows], x[rows], grad, alpha=alpha[rows],
                                             eps=eps[rows], norm=norm)
    return AttackResult(x_adv=x_adv.detach(), success=success, loss_trace=trace)


def check_pgd_arguments(model, x, y, *, eps, alpha, steps, norm, generator=None):
    """For PGD and the attacks built like it: validated (x, y, eps, alpha): x and y on the
    model's device, eps and alpha as (N,) float32 tensors there. ValueError names what is
    wrong; TypeError for x in another dtype than the model's weights (see
    :func:`~workbench.attacks.core.check_batch`) or a ``generator`` that is not a
    ``torch.Generator``."""
    check_generator(generator)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a whole number >= 0, got {steps!r}")
    x, y = check_batch(model, x, y)
    n = x.shape[0]
    budgets = []
    for name, value in (("eps", eps), ("alpha", alpha)):
        value = check_budget(value, n, name=name, norm=norm)
        budgets.append(torch.as_tensor(value, dtype=torch.float32).expand(n).to(x.device))
    return x, y, *budgets


def _step_in_precision(x_adv, x, grad, *, alpha, eps, norm):
    """:func:`pgd_step` in float32 at least, the result in x's dtype rounded towards x (so a
    bfloat16 image stays inside its ball); for float32 images this is ``pgd_step``."""
    work = work_dtype(x.dtype)
    stepped = pgd_step(x_adv.to(work), x.to(work), grad.to(work), alpha=alpha, eps=eps,
                       norm=norm)
    return cast_towards(stepped, x)


def _report(on_step, k, x_adv, objective, logits, success) -> None:
    if on_step is not None:
        on_step(PGDStep(k, x_adv.detach().clone(), objective.clone(), logits.clone(),
                        success.clone()))
