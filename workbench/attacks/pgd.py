"""Projected gradient descent (Madry et al., 2018) in L-inf and L2. Taught in notebook 03.

Each step moves along the (sign of, or normalised) gradient, then projects by assignment:
first onto the eps-ball around the clean image, then onto the image box [0, 1]. Clamping a
perturbation into the box only shrinks each of its coordinates, so the result stays inside
the ball in both norms.

Cost, per restart: ``steps`` forward+backward passes and one forward pass without a graph.
The objective at the point a step starts from comes with that step's gradient, so the loss
trace costs nothing extra; the last point's objective and the success of the attack come from
the one final forward (``attack_success`` would run it again). With ``early_stop`` the
success of every step is read from the logits of the next step's forward, fooled examples
leave the batch (the model only sees the examples still moving), and a restart only attacks
the examples no earlier restart has fooled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from workbench.attacks.core import (
    attack_mode,
    attack_objective,
    check_batch,
    check_eps,
    check_labels,
    loss_grad_and_logits,
    success_from_logits,
)

NORMS = ("linf", "l2")
_TINY = 1e-12

# Run the attack on channels-last (NHWC) images. Convolutions follow the layout of their
# input, so the whole network then runs in NHWC, without changing the model. On CUDA this is
# what cuDNN (and the registry, which puts CUDA models in channels_last) is fastest with. On
# the CPU oneDNN's NHWC kernels are faster too, mostly for depthwise convolutions: measured
# with `benchmarks/bench_pgd.py --variants` (EfficientNet-Lite0, batch 8 at 224 px, 10 steps,
# 2 threads, a shared machine), NCHW whole batch 3.36 s, NHWC whole batch 2.29 s (1.47x);
# with micro-batches of 4: NCHW 2.32 s, NHWC 1.70 s (1.98x).
CHANNELS_LAST = {"cuda": True, "cpu": True}

# On the CPU, run each forward and backward pass on micro-batches of at most this many input
# values (4 images of 3 x 224 x 224). The largest activations of an ImageNet network are
# 30-40 times its input; at batch 8 they pass 32 MB, above which glibc's malloc maps fresh
# pages from the kernel for every tensor and unmaps them when it is freed, so each step pays
# page faults on hundreds of MB. Micro-batches keep them on the reusable heap (and nearer
# the caches): 1.35-1.45x in the measurement above; micro-batches of 2 were slower than of 4
# (1.87 s). With a malloc that keeps big blocks (MALLOC_MMAP_THRESHOLD_ raised) the whole
# batch is as fast, and both attacks are faster. Small images (the digits sets) fit whole
# batches in one micro-batch. On CUDA the caching allocator has no such cost and big batches
# keep the GPU busy: no micro-batches.
MICRO_BATCH_VALUES = {"cpu": 4 * 3 * 224 * 224}


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


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype PGD's arithmetic runs in: x's own when it is float32 or float64, else
    float32 (bfloat16 has 8 bits of mantissa: 0.5 + 8/255 is not representable)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _round_towards(v: torch.Tensor, x: torch.Tensor, x_work: torch.Tensor) -> torch.Tensor:
    """``v`` (work dtype) in x's dtype, every coordinate rounded towards x.

    Rounding to nearest can push a coordinate past the edge of the ball by half a unit in the
    last place; rounding towards x never moves a coordinate further from x than it was, so
    the ball (in any norm) and the box [0, 1] (both ends representable) still hold. Free when
    x is float32 or float64.
    """
    if v.dtype == x.dtype:
        return v
    rounded = v.to(x.dtype)
    outside = (rounded.to(v.dtype) - x_work).abs() > (v - x_work).abs()
    return torch.where(outside, torch.nextafter(rounded, x), rounded)


def random_start_point(x: torch.Tensor, eps: float, norm: str,
                       generator: torch.Generator | None) -> torch.Tensor:
    """A random point of the eps-ball around x, inside [0, 1], drawn from ``generator``.

    L-inf: uniform in the cube. L2: uniform direction, radius eps * U(0, 1). Drawn in float32
    on the generator's device (CPU by default) and moved to x's, so results match across
    devices. Returns a new tensor with x's dtype and device.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    shape = x.shape
    if norm == "linf":
        delta = (torch.rand(shape, generator=generator, device=gen_device) * 2 - 1) * eps
    else:
        direction = torch.randn(shape, generator=generator, device=gen_device)
        radius = torch.rand((shape[0], 1, 1, 1), generator=generator, device=gen_device)
        delta = direction / _per_example_norm(direction) * radius * eps
    work = _work_dtype(x.dtype)
    x_work = x.to(work)
    start = (x_work + delta.to(device=x.device, dtype=work)).clamp(0.0, 1.0)
    return _round_towards(start, x, x_work)


@dataclass
class _Run:
    """One PGD run over a batch: (N, C, H, W) points, (steps, N) trace, (N,) objective at the
    last point, (N,) success there."""

    x_adv: torch.Tensor
    trace: torch.Tensor
    final: torch.Tensor
    success: torch.Tensor


def _pgd_once(model, x, x_work, y, *, eps, alpha, steps, norm, targeted, start, early_stop,
              check, on_step, micro) -> _Run:
    """One PGD run from ``start`` (a tensor this function may overwrite).

    Model calls: one forward+backward per step (on the examples still moving when
    ``early_stop``), then one forward without a graph for the examples that moved in the last
    step: the objective and success at the last point. The objective at the point a step
    starts from comes with its gradient and is the previous step's trace entry.
    """
    n = x.shape[0]
    x_adv = start
    trace = torch.empty((steps, n), dtype=torch.float32, device=x.device)
    final = torch.empty(n, dtype=torch.float32, device=x.device)
    success = torch.zeros(n, dtype=torch.bool, device=x.device)
    moving = None  # indices (M,) of the examples still moving; None: all of them

    def report(k: int) -> None:
        if on_step is not None:
            on_step(k, trace[k].clone())

    for k in range(steps):
        if moving is None:
            xs, xk, xw, yk = x_adv, x, x_work, y
        else:
            xs, xk, xw, yk = x_adv[moving], x[moving], x_work[moving], y[moving]
        objective, grad, logits = _forward_backward(model, xs, yk, targeted=targeted,
                                                    check=check and k == 0, micro=micro)
        if k > 0:  # the objective where step k starts is the one after step k - 1
            _put(trace[k - 1], moving, objective)
            if early_stop:
                fooled = success_from_logits(logits, yk, targeted=targeted)
                if fooled.any():  # they stay where they are: fill in the rest of their story
                    rows = fooled.nonzero().squeeze(1)
                    ids = rows if moving is None else moving[rows]
                    trace[k - 1:, ids] = objective[rows]
                    final[ids] = objective[rows]
                    success[ids] = True
                    keep = ~fooled
                    moving = keep.nonzero().squeeze(1) if moving is None else moving[keep]
                    if moving.numel() == 0:
                        for j in range(k - 1, steps):
                            report(j)
                        return _Run(x_adv, trace, final, success)
                    xs, xk, xw, grad = xs[keep], xk[keep], xw[keep], grad[keep]
            report(k - 1)
        stepped = _step(xs, grad, xk, xw, eps=eps, alpha=alpha, norm=norm)
        if moving is None:
            x_adv = stepped
        else:
            x_adv[moving] = stepped

    # The one forward without a graph: objective and success at the last point.
    xs, yk = (x_adv, y) if moving is None else (x_adv[moving], y[moving])
    logits = _forward(model, xs, micro=micro)
    if check and steps == 0:
        check_labels(yk, logits.shape[1])
    objective = attack_objective(logits, yk, targeted=targeted)
    _put(final, moving, objective)
    _put(success, moving, success_from_logits(logits, yk, targeted=targeted))
    if steps:
        _put(trace[steps - 1], moving, objective)
        report(steps - 1)
    return _Run(x_adv, trace, final, success)


def _put(target: torch.Tensor, index: torch.Tensor | None, values: torch.Tensor) -> None:
    """``target[index] = values`` along the first dimension; all of it when index is None."""
    if index is None:
        target.copy_(values)
    else:
        target[index] = values


def _step(x_adv, grad, x, x_work, *, eps, alpha, norm):
    """One PGD step from x_adv: ascend, project onto the eps-ball around x by assignment,
    then onto [0, 1]. Arithmetic in x_work's dtype, the result in x's."""
    work = x_work.dtype
    stepped = x_adv.to(work) + ascent_step(grad.to(work), alpha, norm)
    moved = (x_work + project(stepped - x_work, eps, norm)).clamp_(0.0, 1.0)
    return _round_towards(moved, x, x_work)


def _merge(best: _Run, run: _Run, rows: torch.Tensor | None) -> None:
    """Keep, per example, the better of ``best`` and ``run`` (``run`` covers ``rows`` of
    ``best``, or all of it when rows is None): success first, then the higher objective."""
    if rows is None:
        old_success, old_final = best.success, best.final
    else:
        old_success, old_final = best.success[rows], best.final[rows]
    better = (run.success & ~old_success) | ((run.success == old_success)
                                             & (run.final > old_final))
    if rows is None:
        best.x_adv = torch.where(better.view(-1, 1, 1, 1), run.x_adv, best.x_adv)
        best.success = torch.where(better, run.success, best.success)
        best.trace = torch.where(better.view(1, -1), run.trace, best.trace)
        best.final = torch.where(better, run.final, best.final)
        return
    ids = rows[better]
    best.x_adv[ids] = run.x_adv[better]
    best.success[ids] = run.success[better]
    best.trace[:, ids] = run.trace[:, better]
    best.final[ids] = run.final[better]


def _scatter_report(on_step, base: torch.Tensor, rows: torch.Tensor):
    """``on_step`` for a run over ``rows`` of the batch: it still gets (N,) objectives, those of
    the other examples taken from ``base``."""
    base = base.clone()

    def report(k: int, objective: torch.Tensor) -> None:
        on_step(k, base.index_put((rows,), objective))

    return report


def _use_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and CHANNELS_LAST.get(x.device.type, False)


def _micro_batch(x: torch.Tensor) -> int:
    """Examples per forward/backward pass on x's device (see MICRO_BATCH_VALUES)."""
    values = MICRO_BATCH_VALUES.get(x.device.type)
    if not values:
        return max(1, x.shape[0])
    return max(1, values // max(1, x[0].numel()))


def _forward_backward(model, x, y, *, targeted, check, micro):
    """:func:`loss_grad_and_logits` over micro-batches of ``micro`` examples, concatenated."""
    if x.shape[0] <= micro:
        return loss_grad_and_logits(model, x, y, targeted=targeted, check=check)
    parts = [loss_grad_and_logits(model, xc, yc, targeted=targeted, check=check)
             for xc, yc in zip(x.split(micro), y.split(micro))]
    return tuple(torch.cat(part) for part in zip(*parts))


def _forward(model, x, *, micro):
    """Logits without a graph, over micro-batches of ``micro`` examples."""
    with torch.no_grad():
        if x.shape[0] <= micro:
            return model(x)
        return torch.cat([model(xc) for xc in x.split(micro)])


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float,
        steps: int, norm: str = "linf", targeted: bool = False, random_start: bool = True,
        generator: torch.Generator | None = None, restarts: int = 1,
        early_stop: bool = False,
        on_step: Callable[[int, torch.Tensor], None] | None = None) -> AttackResult:
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
            objective) is kept. Without a random start every run is the same, so one runs.
        early_stop: stop moving an example once the attack succeeds on it (checked after
            every step); fooled examples leave the batch, and later restarts only attack the
            examples no earlier restart fooled.
        on_step: called as ``on_step(k, objective)`` once per step k (of each restart), in
            order, with the (N,) objective after step k, e.g. to draw a live loss curve.

    Returns:
        :class:`AttackResult` with ``x_adv`` (N, C, H, W), ``success`` (N,), ``loss_trace``
        (steps, N). The model's modes, parameters, their ``.grad`` and ``x`` are unchanged.
        ``x_adv`` has x's dtype (its arithmetic runs in float32 at least, and it is rounded
        towards x, so low-precision images stay inside the ball too) and layout.

    Cost per restart: ``steps`` forward+backward passes and one forward pass. Under
    ``torch.autocast`` the objective and the norms are computed in float32.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    eps = check_eps(eps, norm=norm)
    alpha = check_eps(alpha, name="alpha", norm=norm)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a whole number >= 0, got {steps!r}")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be a whole number >= 1, got {restarts!r}")
    x_in, y = check_batch(model, x, y)
    options = dict(eps=eps, alpha=alpha, steps=steps, norm=norm, targeted=targeted,
                   random_start=random_start, generator=generator, restarts=restarts,
                   early_stop=early_stop, on_step=on_step)
    if not _use_channels_last(x_in) or x_in.is_contiguous(memory_format=torch.channels_last):
        return _pgd(model, x_in, y, x_in, **options)
    # A copy in NHWC (x_in, maybe the caller's tensor, is untouched). Code written for NCHW
    # can fail on it (``x.view(n, -1)`` on a channels-last tensor raises): then the attack
    # runs again in the caller's layout, from the same random state.
    rng = generator if generator is not None else torch.random.default_generator
    rng_state = rng.get_state()
    try:
        return _pgd(model, x_in.contiguous(memory_format=torch.channels_last), y, x_in,
                    **options)
    except RuntimeError:
        rng.set_state(rng_state)
        return _pgd(model, x_in, y, x_in, **options)


def _pgd(model, x, y, x_in, *, eps, alpha, steps, norm, targeted, random_start, generator,
         restarts, early_stop, on_step) -> AttackResult:
    """:func:`pgd` on checked arguments, x in the layout to run in; x_in gives the caller's."""
    x_work = x.to(_work_dtype(x.dtype))
    micro = _micro_batch(x)
    with attack_mode(model):
        best = None
        for _ in range(restarts if random_start else 1):
            rows = None  # which examples this restart attacks; None: all
            report = on_step
            if early_stop and best is not None:
                rows = (~best.success).nonzero().squeeze(1)
                if rows.numel() == 0:
                    break
                if on_step is not None:  # (N,) objectives: the fooled ones keep theirs
                    report = _scatter_report(on_step, best.final, rows)
            # Every restart draws a start for the whole batch, so an example's start does not
            # depend on which others were fooled.
            start = random_start_point(x, eps, norm, generator) if random_start else x.clone()
            if rows is None:
                xr, xw, yr = x, x_work, y
            else:
                xr, xw, yr, start = x[rows], x_work[rows], y[rows], start[rows]
            run = _pgd_once(model, xr, xw, yr, eps=eps, alpha=alpha, steps=steps, norm=norm,
                            targeted=targeted, start=start, early_stop=early_stop,
                            check=best is None, on_step=report, micro=micro)
            if best is None:
                best = run
            else:
                _merge(best, run, rows)
    x_adv = best.x_adv
    if x_adv.stride() != x_in.stride():  # back to the caller's layout
        x_adv = torch.empty_like(x_in).copy_(x_adv)
    return AttackResult(x_adv=x_adv.detach(), success=best.success, loss_trace=best.trace)
