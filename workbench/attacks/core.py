"""What every attack shares: input checks, the model's state during an attack, the gradient.

The gradient is taken with ``torch.autograd.grad`` with respect to the input only, so the
model's parameters never receive a ``.grad``; their ``requires_grad`` is switched off for the
attack (fewer gradients to compute) and restored afterwards, as is each module's train/eval
mode.

Objective and success are functions of the logits (:func:`attack_objective`,
:func:`success_from_logits`), so an attack that already has a forward pass's logits gets both
without running the model again (:func:`objective_and_gradient`).
"""

from __future__ import annotations

import contextlib
import math
from numbers import Real

import torch
import torch.nn.functional as F
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a parameterless model)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating-point parameter or buffer (its weights'
    dtype); None when it has none."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def check_generator(generator) -> None:
    """TypeError unless ``generator`` is None or a ``torch.Generator`` (a seed is not one)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator, e.g. torch.Generator().manual_seed(0); got "
            f"{type(generator).__name__} {generator!r:.40}")


def check_eps(eps, *, name: str = "eps", norm: str = "linf") -> float:
    """``eps`` as a float, or ValueError: it must be a finite number >= 0, and at most 1 in
    L-inf (pixels are in [0, 1]: 8/255, not 8)."""
    if isinstance(eps, torch.Tensor) and eps.numel() == 1:
        eps = eps.item()
    if isinstance(eps, bool) or not isinstance(eps, Real):
        raise ValueError(f"{name} must be a number, got {type(eps).__name__}")
    eps = float(eps)
    if math.isnan(eps) or math.isinf(eps):
        raise ValueError(f"{name} must be a finite number, got {eps}")
    if eps < 0:
        raise ValueError(f"{name} must be >= 0, got {eps}: it is the size of the perturbation")
    if norm == "linf" and eps > 1:
        raise ValueError(
            f"{name}={eps} is larger than the whole pixel range: images are in [0, 1], so an "
            f"L-inf budget of 8 pixel levels is 8/255 = {8 / 255:.4f}, not 8")
    return eps


def check_budget(eps, n: int, *, name: str = "eps", norm: str = "linf"):
    """A budget for a batch of ``n`` examples: a float (one for all, checked by
    :func:`check_eps`) or an (n,) float tensor, one per example, each checked the same way.

    Returns the float, or the tensor as float32 on the CPU (callers move it). ValueError
    names what is wrong: a budget per example must have one entry per example.
    """
    if not isinstance(eps, torch.Tensor) or eps.dim() == 0:
        return check_eps(eps, name=name, norm=norm)
    if eps.dim() != 1 or eps.shape[0] != n or eps.dtype == torch.bool:
        raise ValueError(f"{name} per example must be a float tensor shaped (N,) = ({n},), got "
                         f"{tuple(eps.shape)} of {eps.dtype}: one budget per image")
    eps = eps.detach().float().cpu()
    if not torch.isfinite(eps).all():
        raise ValueError(f"{name} must hold finite numbers, got {eps[~torch.isfinite(eps)][:3]}")
    if (eps < 0).any():
        raise ValueError(f"{name} must be >= 0, got {eps.min().item()}: it is the size of the "
                         f"perturbation")
    if norm == "linf" and (eps > 1).any():
        raise ValueError(
            f"{name} holds {eps.max().item()}, larger than the whole pixel range: images are in "
            f"[0, 1], so an L-inf budget of 8 pixel levels is 8/255 = {8 / 255:.4f}, not 8")
    return eps


def per_example(value, like: torch.Tensor):
    """A float as it is, or an (N,) tensor as (N, 1, ..., 1) on ``like``'s device and dtype,
    so that it broadcasts over each example of ``like`` (N, ...)."""
    if not isinstance(value, torch.Tensor):
        return value
    return value.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.dim() - 1)))


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype an attack's arithmetic runs in: the images' own when it is float32 or
    float64, else float32 (bfloat16 has 8 bits of mantissa: 0.5 + 8/255 is not representable)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def cast_towards(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``v`` in x's dtype, every coordinate rounded towards x (a no-op when the dtypes match).

    Rounding to nearest can push a coordinate past the edge of the eps-ball by half a unit in
    the last place; rounding towards x never moves a coordinate further from x than it was, so
    the ball (in any norm) and the box [0, 1] (both ends representable) still hold.
    """
    if v.dtype == x.dtype:
        return v
    x_work = x.to(v.dtype)
    rounded = v.to(x.dtype)
    outside = (rounded.to(v.dtype) - x_work).abs() > (v - x_work).abs()
    return torch.where(outside, torch.nextafter(rounded, x), rounded)


def _check_dtype(model: nn.Module, x: torch.Tensor) -> None:
    """TypeError when x's float dtype is not the model's weights' (float64 images, from NumPy,
    on a float32 model, say). Nothing is converted: an attack's ``x_adv`` keeps x's dtype,
    so it must be an input the model takes."""
    weights = model_dtype(model)
    if weights in (None, x.dtype):
        return
    cast = "x.float()" if weights == torch.float32 else f"x.to({weights})"
    raise TypeError(f"x is {str(x.dtype).removeprefix('torch.')} but the model's weights are "
                    f"{str(weights).removeprefix('torch.')}: pass {cast}")


def check_batch(model: nn.Module, x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate an image batch and its labels; return both on the model's device.

    x: (N, C, H, W) float in [0, 1], in the dtype of the model's weights (else TypeError,
    saying how to convert it; see :func:`_check_dtype`). y: (N,) integer class ids (or one int
    when N == 1). Raises ValueError naming anything else that is wrong.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor of images, got {type(x).__name__}")
    if x.dim() != 4:
        hint = " (one image? add a batch dimension: x[None])" if x.dim() == 3 else ""
        raise ValueError(f"x must be shaped (N, C, H, W), got {tuple(x.shape)}{hint}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a float tensor in [0, 1], got dtype {x.dtype}")
    _check_dtype(model, x)
    if x.numel() == 0:
        raise ValueError(f"x is empty: shape {tuple(x.shape)}")
    low, high = x.min().item(), x.max().item()
    if math.isnan(low) or math.isnan(high):
        raise ValueError("x holds NaN values")
    if low < -1e-6 or high > 1 + 1e-6:
        raise ValueError(
            f"x must hold pixels in [0, 1], got values from {low:.3f} to {high:.3f}: pass "
            f"unnormalised images (the model normalises them itself)")
    if isinstance(y, int) and not isinstance(y, bool):
        y = torch.tensor([y])
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"y must be a tensor of integer class ids, got {y!r:.80}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"y must be shaped (N,) = ({x.shape[0]},) to match x {tuple(x.shape)}, "
            f"got {tuple(y.shape)}")
    device = model_device(model)
    x = x.detach().to(device)
    if x.is_inference():  # made under torch.inference_mode: autograd cannot use it
        with torch.inference_mode(False):
            x = x.clone()
    return x, y.to(device=device, dtype=torch.long)


def check_images(model: nn.Module, x) -> torch.Tensor:
    """:func:`check_batch` for images without labels: x (N, C, H, W) validated, on the
    model's device."""
    n = x.shape[0] if isinstance(x, torch.Tensor) and x.dim() > 0 else 0
    return check_batch(model, x, torch.zeros(n, dtype=torch.long))[0]


def check_labels(y: torch.Tensor, num_classes: int, *, name: str = "y") -> None:
    """ValueError when a label is outside [0, num_classes)."""
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise ValueError(
            f"{name} holds class ids outside [0, {num_classes}): "
            f"{y[bad][:5].tolist()} (the model has {num_classes} classes)")


@contextlib.contextmanager
def attack_mode(model: nn.Module):
    """Run the block with every module in eval mode and parameters frozen; restore both.

    Batch-norm statistics and dropout are those of inference, the parameters' ``.grad`` and
    ``requires_grad`` are as they were when the block ends, whatever happens inside it. Inside
    the block autograd works even when the caller is in ``torch.inference_mode``.
    """
    modes = [(module, module.training) for module in model.modules()]
    flags = [(param, param.requires_grad) for param in model.parameters()]
    try:
        model.eval()
        for param, _ in flags:
            param.requires_grad_(False)
        with torch.inference_mode(False):
            yield model
    finally:
        for module, training in modes:
            module.training = training
        for param, flag in flags:
            param.requires_grad_(flag)


def attack_objective(logits: torch.Tensor, y: torch.Tensor, *, targeted: bool) -> torch.Tensor:
    """What the attacker ascends, per example, from logits (N, K) -> (N,) float32.

    Cross-entropy of the true label (untargeted) or minus cross-entropy of the target
    (targeted), computed in float32 from the logits (also when they come out of autocast in
    bfloat16 or float16).
    """
    objective = F.cross_entropy(logits.float(), y, reduction="none")
    return -objective if targeted else objective


def margin_objective(logits: torch.Tensor, y: torch.Tensor, *, targeted: bool) -> torch.Tensor:
    """Carlini and Wagner's f6 margin, what the attacker ascends, per example: logits (N, K),
    y (N,) -> (N,) float32.

    Untargeted ``max_{j != y} z_j - z_y`` (positive once the example is misclassified);
    targeted ``z_y - max_{j != y} z_j`` with y the target. A difference of logits, not of
    probabilities: a softmax that saturates in float32 (logits scaled up, as defensive
    distillation does at T = 1) zeroes the cross-entropy's gradient, but not this one's.
    """
    z = logits.float()
    true = z.gather(1, y[:, None]).squeeze(1)
    best_other = z.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return true - best_other if targeted else best_other - true


def success_from_logits(logits: torch.Tensor, y: torch.Tensor, *,
                        targeted: bool) -> torch.Tensor:
    """Per example (N,) bool from logits (N, K): the top class is the target (targeted) or is
    not the label (untargeted). The same rule as :func:`attack_success`, without a forward."""
    pred = logits.argmax(dim=1)
    return pred == y if targeted else pred != y


def objective_and_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                           targeted: bool, gradient: bool = True, check: bool = True,
                           objective_fn=None):
    """One forward pass (and one backward when ``gradient``): the attack objective, its
    gradient with respect to x, and the logits.

    Shapes: x (N, C, H, W), y (N,) -> objective (N,) float32 (:func:`attack_objective`, or
    ``objective_fn(logits, y)`` when given, e.g. a margin loss), grad (N, C, H, W) with x's
    dtype and layout (None without ``gradient``), logits (N, K) detached, in the model's
    output dtype. ``check=False`` skips the label range check (one host sync on CUDA) when
    the caller has already made it.
    """
    with torch.enable_grad() if gradient else torch.no_grad():
        x = x.detach().requires_grad_(gradient)
        logits = model(x)
        if check:
            check_labels(y, logits.shape[1])
        objective = (attack_objective(logits, y, targeted=targeted) if objective_fn is None
                     else objective_fn(logits, y))
        grad = torch.autograd.grad(objective.sum(), x)[0] if gradient else None
    return objective.detach(), grad, logits.detach()


def loss_and_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, targeted: bool):
    """The attack objective per example and its gradient with respect to x.

    The objective is what the attacker increases: cross-entropy with the true label
    (untargeted), or minus cross-entropy with the target label (targeted). It is computed from
    logits in float32, also under autocast.

    Shapes: x (N, C, H, W), y (N,) -> objective (N,) float32, grad (N, C, H, W) like x.
    """
    objective, grad, _ = objective_and_gradient(model, x, y, targeted=targeted)
    return objective, grad


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Predicted class ids (N,) for images x (N, C, H, W), without building a graph."""
    with torch.no_grad():
        return model(x).argmax(dim=1)


def attack_success(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, *,
                   targeted: bool) -> torch.Tensor:
    """Per example (N,) bool: prediction is the target (targeted) or is not the label."""
    with torch.no_grad():
        return success_from_logits(model(x_adv), y, targeted=targeted)
