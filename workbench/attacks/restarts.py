"""PGD from several random starts: per example, keep the best run.

A single PGD run can stall in a poor local maximum of the loss; independent random starts
make the attack stronger (Madry et al. 2018 report robust accuracy over restarts). Each
restart is a plain :func:`workbench.attacks.pgd` call drawing its start from the same
generator in turn, so the same seed gives the same result.
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.attacks.pgd import AttackResult, pgd


def pgd_restarts(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, restarts: int,
                 early_stop: bool = False, **options) -> AttackResult:
    """:func:`pgd` from ``restarts`` random starts; per example the run that succeeded, else
    the one with the highest final objective (the first such run on ties).

    Args:
        restarts: number of runs (>= 1); without a random start every run is the same, so
            one runs.
        early_stop: passed to each run; also, a restart then attacks only the examples no
            earlier restart has fooled.
        **options: the keyword arguments of :func:`pgd` (``eps``, ``alpha``, ``steps``,
            ``norm``, ``targeted``, ``random_start``, ``generator``; not ``on_step``). A
            per-example ``eps`` or ``alpha`` follows its examples.

    Returns:
        :class:`AttackResult` as :func:`pgd`'s; ``loss_trace`` is that of the run kept for
        each example.
    """
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be a whole number >= 1, got {restarts!r}")
    if "on_step" in options:
        raise ValueError("on_step is not supported with restarts: call pgd once per restart")
    best = pgd(model, x, y, early_stop=early_stop, **options)
    if not options.get("random_start", True):
        return best
    for _ in range(restarts - 1):
        rows = (~best.success).nonzero().squeeze(1) if early_stop else None
        if rows is not None and rows.numel() == 0:
            break
        run = pgd(model, *_rows(rows, x, y), early_stop=early_stop,
                  **{k: _rows(rows, v)[0] if torch.is_tensor(v) and v.dim() == 1 else v
                     for k, v in options.items()})
        _keep_better(best, run, rows)
    return best


def _rows(rows, *tensors):
    """The given rows of each tensor (all of them when rows is None)."""
    return tuple(t if rows is None else t[rows.to(t.device)] for t in tensors)


def _final_objective(result: AttackResult) -> torch.Tensor:
    """(N,) objective at the last point; with no steps, no objective: all equal."""
    trace = result.loss_trace
    return trace[-1] if trace.shape[0] else torch.zeros_like(result.success, dtype=torch.float32)


def _keep_better(best: AttackResult, run: AttackResult, rows: torch.Tensor | None) -> None:
    """Per example, replace ``best`` by ``run`` (which covers ``rows`` of best, or all of it)
    where run succeeded and best had not, or both agree on success and run's objective is
    higher."""
    if rows is None:
        rows = torch.arange(best.success.shape[0], device=best.success.device)
    old_success, old_final = best.success[rows], _final_objective(best)[rows]
    better = (run.success & ~old_success) | (
        (run.success == old_success) & (_final_objective(run) > old_final))
    ids = rows[better]
    best.x_adv[ids] = run.x_adv[better]
    best.success[ids] = run.success[better]
    best.loss_trace[:, ids] = run.loss_trace[:, better]
