"""Adaptive attacks: the same PGD, run on a model whose forward pass is the defended model's and
whose backward pass is useful (Athalye, Carlini and Wagner, 2018; Tramer et al., 2020).

A defence that breaks the gradient does not break the attack. It only breaks an attacker who
trusts the gradient autograd gives. Each piece here wraps a model so that plain
:func:`workbench.attacks.pgd` gets a useful gradient again:

* :class:`BPDA` (Backward Pass Differentiable Approximation): a preprocessing step whose
  gradient is zero almost everywhere (bit-depth reduction rounds) runs in the forward pass, and
  the backward pass treats it as the identity (:func:`straight_through`).
* :class:`EOT` (Expectation over Transformation): a randomised defence is attacked through the
  average of its predictions over ``samples`` draws of its randomness, so the gradient is
  averaged over the randomness too.
* :class:`LogitScale`: logits multiplied by a factor (1 / T for a defensively distilled model
  served at T = 1), so a softmax that saturates in float32 has a gradient again. Predictions
  are unchanged. ``pgd(..., loss="margin")`` is the other cure: Carlini and Wagner's margin is
  a difference of logits, which no softmax saturates.
* Attacking through the whole pipeline (an autoencoder in front of a classifier, say) needs no
  wrapper: ``nn.Sequential(autoencoder, classifier)`` is differentiable end to end.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class _StraightThrough(torch.autograd.Function):
    """Forward: ``transformed``. Backward: the gradient passes to ``x`` unchanged."""

    @staticmethod
    def forward(ctx, x, transformed):
        return transformed.clone()

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output, None


def straight_through(x: torch.Tensor, transformed: torch.Tensor) -> torch.Tensor:
    """``transformed``'s values with the identity's gradient with respect to ``x``.

    Shapes: x and transformed (N, ...), the same. The value is exactly ``transformed``
    (not ``x + (transformed - x).detach()``, which rounds), so predictions on it equal the
    defended model's; the gradient of anything computed from it flows to x as if the
    transformation were the identity.
    """
    if transformed.shape != x.shape:
        raise ValueError(f"a straight-through step needs the transformed tensor shaped like its "
                         f"input: got {tuple(transformed.shape)} for {tuple(x.shape)}")
    return _StraightThrough.apply(x, transformed.detach())


class BPDA(nn.Module):
    """A preprocessing step with the identity as its backward pass (Athalye et al.'s BPDA).

    ``BPDA(transform)(x)`` equals ``transform(x)``, (N, C, H, W) -> (N, C, H, W); its gradient
    with respect to x is the identity's. Put it where the defence's own step was:
    ``nn.Sequential(BPDA(squeeze), classifier)`` predicts as the squeezed classifier does and
    can be attacked with :func:`workbench.attacks.pgd`.
    """

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.transform = transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            transformed = self.transform(x.detach())
        return straight_through(x, transformed)


class EOT(nn.Module):
    """A randomised model averaged over ``samples`` draws of its randomness (Athalye et al.'s
    Expectation over Transformation).

    ``EOT(model, samples)(x)``: x (N, ...) is repeated ``samples`` times through ``model``
    (whose forward pass draws fresh randomness each call, from its own generator), and the
    result is the log of the mean predicted probability, (N, K): logits whose softmax is the
    expected prediction. A cross-entropy on them is the loss of the expected prediction, and its
    gradient averages over the randomness instead of following one draw of it.
    """

    def __init__(self, model: nn.Module, samples: int):
        super().__init__()
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be a whole number >= 1, got {samples!r}")
        self.model = model
        self.samples = samples

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        repeated = x.repeat(self.samples, *([1] * (x.dim() - 1)))
        log_probs = self.model(repeated).float().log_softmax(dim=1)
        log_probs = log_probs.view(self.samples, x.shape[0], -1)
        return torch.logsumexp(log_probs, dim=0) - torch.log(torch.tensor(float(self.samples)))


class LogitScale(nn.Module):
    """``model``'s logits times ``factor``: (N, ...) -> (N, K), the same predictions.

    ``LogitScale(distilled, 1 / T)`` undoes the scale defensive distillation gives the logits
    when the student, trained at temperature T, is served at T = 1: the softmax no longer
    saturates, so the cross-entropy has a gradient again.
    """

    def __init__(self, model: nn.Module, factor: float):
        super().__init__()
        if not factor > 0:
            raise ValueError(f"factor must be a number > 0 (it keeps the predictions), "
                             f"got {factor!r}")
        self.model = model
        self.factor = float(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.factor
