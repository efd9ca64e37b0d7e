"""Three ways to train a classifier, as small loops over shuffled mini-batches.

* standard: cross-entropy on clean images.
* AdvProp (Xie et al., 2020): clean images through the main BN plus PGD examples through the
  auxiliary BN (:func:`workbench.defenses.advprop_loss`); the PGD examples are crafted against
  the model routed through the auxiliary BN, as in the paper.
* PGD-AT (Madry et al., 2018): cross-entropy on PGD examples only.

Adversarial examples are crafted with :func:`workbench.attacks.pgd`, which runs the model in
eval mode (BatchNorm uses its running statistics, not the batch's) and puts it back in train
mode afterwards: the attack sees the model as it predicts, and crafting does not move the
running statistics. Every random choice (shuffling, PGD random starts) is drawn from one
``torch.Generator`` seeded with ``seed``; with the same seed and initial weights, training
gives the same weights.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from workbench.attacks import pgd
from workbench.attacks.core import check_batch, check_eps
from workbench.defenses.advprop import DualBatchNorm2d, advprop_loss, auxiliary_bn

METHODS = ("standard", "advprop", "pgd_at")
EPOCHS = 6
BATCH_SIZE = 64
LR = 2e-3
EPS = 0.15  # L-inf budget in pixel units (digits in [0, 1]); PGD-AT and AdvProp train at it
STEPS = 5  # PGD steps when crafting training examples


def default_alpha(eps: float, steps: int) -> float:
    """Madry et al.'s PGD step size, 2.5 * eps / steps: enough to cross the ball and back."""
    return 2.5 * eps / max(steps, 1)


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


def _batch_loss(method: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                eps: float, alpha: float, steps: int, generator: torch.Generator):
    """The loss of one batch x (B, C, H, W), y (B,) for ``method``: a scalar tensor."""
    if method == "standard":
        return F.cross_entropy(model(x), y)
    attack = dict(eps=eps, alpha=alpha, steps=steps, generator=generator)
    if method == "pgd_at":
        return F.cross_entropy(model(pgd(model, x, y, **attack).x_adv), y)
    with auxiliary_bn(model):
        x_adv = pgd(model, x, y, **attack).x_adv
    return advprop_loss(model, x, x_adv, y)


def train(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, *, method: str,
          epochs: int = EPOCHS, batch_size: int = BATCH_SIZE, lr: float = LR, eps: float = EPS,
          alpha: float | None = None, steps: int = STEPS, seed: int = 0,
          progress: bool = True) -> dict:
    """Train ``model`` in place with Adam on shuffled mini-batches; return its history.

    Args:
        model: classifier over [0, 1] images returning logits (for "advprop", one with
            :class:`DualBatchNorm2d` layers: ``digits_cnn(dual_bn=True)``).
        x_train: (N, C, H, W) float images in [0, 1]. y_train: (N,) int64 labels.
        method: one of ``METHODS``: "standard", "advprop", "pgd_at".
        epochs: passes over the training set. batch_size: images per step. lr: Adam's rate.
        eps: L-inf budget of the training attack, in pixel units ("standard" ignores it, as
            it does alpha and steps). alpha: PGD step size (default 2.5 * eps / steps).
        steps: PGD steps per training batch.
        seed: seeds the shuffling and the PGD random starts.
        progress: show a tqdm progress bar over the batches.

    Returns:
        ``{"method", "epoch_loss": [epochs floats], "batch_loss": [floats], "seconds"}``: the
        mean training loss per epoch and per batch (for AdvProp the sum of the clean and the
        adversarial cross-entropy) and the wall time. The model is left in eval mode.
    """
    if method not in METHODS:
        raise ValueError(f"unknown training method {method!r}; choose one of {METHODS}")
    if method == "advprop" and not any(isinstance(m, DualBatchNorm2d) for m in model.modules()):
        raise ValueError("AdvProp needs a model with DualBatchNorm2d layers (an auxiliary BN "
                         "for the adversarial examples): build it with digits_cnn(dual_bn=True)")
    steps = _check_positive_int(steps, "steps")
    eps = check_eps(eps)
    alpha = default_alpha(eps, steps) if alpha is None else check_eps(alpha, name="alpha")
    attack = dict(eps=eps, alpha=alpha, steps=steps)

    def batch_loss(model, x, y, generator):
        return _batch_loss(method, model, x, y, generator=generator, **attack)

    return fit(model, x_train, y_train, batch_loss, epochs=epochs, batch_size=batch_size, lr=lr,
               seed=seed, progress=progress, name=method)


def fit(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
        batch_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator],
                             torch.Tensor], *,
        epochs: int = EPOCHS, batch_size: int = BATCH_SIZE, lr: float = LR, seed: int = 0,
        progress: bool = True, name: str = "") -> dict:
    """The training loop every method shares: Adam over shuffled mini-batches, in train mode.

    ``batch_loss(model, x, y, generator)`` gives the loss of one batch x (B, C, H, W), y (B,)
    as a scalar tensor (crafting adversarial examples or perturbations from ``generator`` as
    it needs). Shuffling and every random choice of ``batch_loss`` are drawn from one
    generator seeded with ``seed``. Returns ``{"method": name, "epoch_loss", "batch_loss",
    "seconds"}`` as :func:`train` does; the model is left in eval mode.
    """
    epochs = _check_positive_int(epochs, "epochs")
    batch_size = _check_positive_int(batch_size, "batch_size")
    if not lr > 0:
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
    x_train, y_train = check_batch(model, x_train, y_train)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    batches = -(-len(y_train) // batch_size)
    history = {"method": name, "epoch_loss": [], "batch_loss": []}
    start = time.perf_counter()
    model.train()
    with tqdm(total=epochs * batches, desc=f"training ({name})", disable=not progress) as bar:
        for _ in range(epochs):
            for idx in torch.randperm(len(y_train), generator=generator).split(batch_size):
                loss = batch_loss(model, x_train[idx], y_train[idx], generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                history["batch_loss"].append(loss.item())
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            history["epoch_loss"].append(sum(history["batch_loss"][-batches:]) / batches)
    model.eval()
    history["seconds"] = time.perf_counter() - start
    return history


def train_standard(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
                   **hp) -> dict:
    """Standard training: cross-entropy on clean images. Keywords and history as :func:`train`
    (eps, alpha and steps are accepted and unused, so the three trainers take the same)."""
    return train(model, x_train, y_train, method="standard", **hp)


def train_advprop(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
                  **hp) -> dict:
    """AdvProp: clean CE through the main BN + CE of PGD examples (crafted through the
    auxiliary BN) through the auxiliary BN. ``model`` needs :class:`DualBatchNorm2d` layers.
    Keywords and history as :func:`train`."""
    return train(model, x_train, y_train, method="advprop", **hp)


def train_pgd_at(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
                 **hp) -> dict:
    """PGD adversarial training (Madry et al.): CE of PGD examples only. Keywords and history
    as :func:`train`."""
    return train(model, x_train, y_train, method="pgd_at", **hp)
