"""Defensive distillation (Papernot et al., 2016).

A teacher is trained with its softmax at temperature T, ``softmax(logits / T)``; a student of
the same architecture is trained, also at T, to match the teacher's soft labels
``softmax(teacher(x) / T)``; the student is then served at T = 1, its raw logits. Trained to
be right at T, its raw logits are about T times larger than a normally trained model's, so its
softmax saturates: in float32 the cross-entropy's gradient is exactly zero for most images,
and a gradient attack that trusts it stalls. Carlini and Wagner (2017) showed that this hides
the gradient without making the model robust: attack the logits divided by T, or a margin of
logits (:mod:`workbench.attacks.adaptive`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workbench.attacks.core import attack_mode, check_images
from workbench.defenses.training import fit

TEMPERATURE = 20.0  # Papernot et al. used 20 to 100


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not temperature >= 1:
        raise ValueError(f"temperature must be a number >= 1, got {temperature!r}")
    return float(temperature)


def soft_labels(teacher: nn.Module, x: torch.Tensor, temperature: float,
                batch_size: int = 256) -> torch.Tensor:
    """The teacher's predictions at ``temperature``: x (N, C, H, W) -> (N, K) probabilities,
    ``softmax(teacher(x) / T)``, computed in eval mode without gradients."""
    temperature = _check_temperature(temperature)
    x = check_images(teacher, x)
    with attack_mode(teacher), torch.no_grad():
        return torch.cat([(teacher(xb).float() / temperature).softmax(dim=1)
                          for xb in x.split(batch_size)])


def distillation_loss(student_logits: torch.Tensor, targets: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """The cross-entropy between soft ``targets`` (B, K) (probabilities, rows summing to 1) and
    the student's prediction at ``temperature``, ``softmax(student_logits / T)``: a scalar,
    the mean over the batch."""
    log_probs = (student_logits.float() / temperature).log_softmax(dim=1)
    return -(targets * log_probs).sum(dim=1).mean()


def train_at_temperature(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, *,
                         temperature: float, seed: int = 0, progress: bool = False,
                         **hp) -> dict:
    """The teacher's training: cross-entropy of ``softmax(model(x) / T)`` with the labels
    y_train (N,). Keywords (epochs, batch_size, lr) and history as
    :func:`workbench.defenses.training.fit`."""
    temperature = _check_temperature(temperature)

    def batch_loss(model, x, y, generator):
        return F.cross_entropy(model(x) / temperature, y)

    return fit(model, x_train, y_train, batch_loss, seed=seed, progress=progress,
               name=f"teacher at T = {temperature:g}", **hp)


def train_student(student: nn.Module, teacher: nn.Module, x_train: torch.Tensor, *,
                  temperature: float, seed: int = 0, progress: bool = False, **hp) -> dict:
    """The student's training: :func:`distillation_loss` against the teacher's soft labels
    at ``temperature`` on x_train (N, C, H, W). Keywords and history as
    :func:`workbench.defenses.training.fit`."""
    temperature = _check_temperature(temperature)
    targets = soft_labels(teacher, x_train, temperature)
    # The loop hands each batch its labels; here a "label" is the example's index, which
    # picks its soft label.
    index = torch.arange(len(x_train))

    def batch_loss(model, x, rows, generator):
        return distillation_loss(model(x), targets[rows], temperature)

    return fit(student, x_train, index, batch_loss, seed=seed, progress=progress,
               name=f"student at T = {temperature:g}", **hp)
