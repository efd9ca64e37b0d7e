"""One batched PGD over a grid of budgets, instead of one attack per epsilon.

Each image is repeated once per budget and every copy gets its own ``eps`` (and step size):
PGD's per-example budgets then attack the whole (E budgets x N images) grid in one loop, so a
robustness curve, a sweep table and a slider's precompute each cost one attack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from workbench.attacks.core import check_budget
from workbench.attacks.pgd import PGDStep, pgd


@dataclass
class SweepResult:
    """PGD at every budget of a grid, for every image.

    * ``epsilons``: (E,) float32, the budgets in pixel units.
    * ``x_adv``: (E, N, C, H, W) adversarial images, row e inside the ball of ``epsilons[e]``.
    * ``success``: (E, N) bool. ``loss_trace``: (steps, E, N) float32.
    """

    epsilons: torch.Tensor
    x_adv: torch.Tensor
    success: torch.Tensor
    loss_trace: torch.Tensor


def repeat_over_budgets(x: torch.Tensor, y: torch.Tensor, epsilons: Sequence[float] | torch.Tensor):
    """The grid as one batch: x (N, C, H, W), y (N,), E budgets -> x (E*N, C, H, W),
    y (E*N,) and eps (E*N,), budget-major (rows e*N .. e*N + N - 1 have budget e)."""
    eps = torch.as_tensor(epsilons, dtype=torch.float32).flatten()
    if eps.numel() == 0:
        raise ValueError("epsilons is empty: give at least one budget")
    n, e = x.shape[0], eps.numel()
    return (x.repeat(e, *([1] * (x.dim() - 1))), y.repeat(e),
            eps.to(x.device).repeat_interleave(n))


def pgd_sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
              epsilons: Sequence[float] | torch.Tensor, *, steps: int,
              alpha_over_eps: float | None = None, norm: str = "linf", targeted: bool = False,
              random_start: bool = True, generator: torch.Generator | None = None,
              early_stop: bool = False, batch_size: int | None = None,
              on_step: Callable[[PGDStep], None] | None = None) -> SweepResult:
    """:func:`workbench.attacks.pgd` at every budget of ``epsilons`` on every image of x.

    Args:
        x: (N, C, H, W) images in [0, 1]; y: (N,) labels (targets when ``targeted``).
        epsilons: E budgets in pixel units (L-inf or L2, as ``norm``).
        steps: PGD steps at every budget.
        alpha_over_eps: step size as a fraction of each budget; default ``2.5 / steps``
            (Madry et al.'s choice: enough to cross the ball and come back).
        batch_size: at most this many of the E*N attacked images per PGD call (memory);
            default all in one. ``on_step`` needs them all in one call.
        Other arguments as :func:`pgd`; the random starts of the whole grid come from
        ``generator`` in turn.

    Returns:
        :class:`SweepResult`: ``x_adv`` (E, N, C, H, W), ``success`` (E, N), ``loss_trace``
        (steps, E, N).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a whole number >= 0, got {steps!r}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a tensor shaped (N, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    ratio = 2.5 / max(steps, 1) if alpha_over_eps is None else float(alpha_over_eps)
    xs, ys, eps = repeat_over_budgets(x, torch.as_tensor(y), epsilons)
    check_budget(eps.cpu(), eps.numel(), norm=norm)
    rows = xs.shape[0]
    size = rows if batch_size is None else int(batch_size)
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if on_step is not None and size < rows:
        raise ValueError("on_step needs the whole grid in one PGD call: leave batch_size unset")
    parts = [pgd(model, xs[i:i + size], ys[i:i + size], eps=eps[i:i + size],
                 alpha=ratio * eps[i:i + size], steps=steps, norm=norm, targeted=targeted,
                 random_start=random_start, generator=generator, early_stop=early_stop,
                 on_step=on_step)
             for i in range(0, rows, size)]
    e, n = eps.numel() // x.shape[0], x.shape[0]
    return SweepResult(
        epsilons=eps.view(e, n)[:, 0].cpu(),
        x_adv=torch.cat([p.x_adv for p in parts]).reshape(e, n, *x.shape[1:]),
        success=torch.cat([p.success for p in parts]).view(e, n),
        loss_trace=torch.cat([p.loss_trace for p in parts], dim=1).view(steps, e, n))
