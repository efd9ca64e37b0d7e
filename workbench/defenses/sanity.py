"""Checks every robustness evaluation should pass (Carlini et al., 2019, "On Evaluating
Adversarial Robustness"; Athalye et al., 2018), run on a model and the attack that evaluates it.

A robust accuracy is only as good as the attack behind it. When the attack is broken, by a
defence that hides the gradient or by a bug, the numbers it gives betray it:

* **unbounded**: with a budget that allows any image (L-inf eps = 1), every prediction can be
  changed; accuracy must fall to (about) zero.
* **more effort**: more steps and random restarts can only find more adversarial examples;
  accuracy must not rise.
* **white box beats black box**: an attacker who sees the model must do at least as well as one
  who transfers examples crafted on another, undefended model; if the transfer attack is
  stronger, the white-box attack is not using what it sees.

An evaluation attack here is ``attack(x, y, eps, steps, generator) -> x_adv``: it crafts
untargeted L-inf examples on whatever model it likes (a BPDA stand-in, say), and the accuracy
is always measured on the defended model itself. :func:`pgd_attack` makes one from
:func:`workbench.attacks.pgd`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from workbench.attacks import pgd, predict
from workbench.attacks.core import attack_mode, check_batch, check_eps
from workbench.defenses.evaluation import accuracy
from workbench.defenses.training import default_alpha

Attack = Callable[[torch.Tensor, torch.Tensor, float, int, torch.Generator], torch.Tensor]

UNBOUNDED_EPS = 1.0  # L-inf: every image in [0, 1] is within reach
ZERO = 0.05  # accuracy at or below this counts as "about zero"
SLACK = 0.02  # accuracy differences smaller than this (random starts, ties) are not flagged


def pgd_attack(target: nn.Module, *, loss: str = "ce") -> Attack:
    """An evaluation attack: PGD on ``target`` (the defended model, or a stand-in for it),
    ``steps`` steps of Madry's 2.5 eps / steps (at most 1, the whole pixel range), random
    start from ``generator``; ``loss`` as :func:`workbench.attacks.pgd`'s. ``eps`` a float or
    an (N,) tensor, one budget per image."""
    def attack(x, y, eps, steps, generator):
        alpha = default_alpha(eps, steps)
        alpha = alpha.clamp(max=1.0) if torch.is_tensor(alpha) else min(alpha, 1.0)
        return pgd(target, x, y, eps=eps, alpha=alpha, steps=steps, generator=generator,
                   loss=loss).x_adv
    return attack


def strongest_of(model: nn.Module, attacks: list[Attack]) -> Attack:
    """An evaluation attack that runs each of ``attacks`` in turn and keeps, per image, the
    first adversarial example that fools ``model`` (the last one tried when none does): the
    accuracy under it is the worst case per image over the attacks."""
    def attack(x, y, eps, steps, generator):
        best = attacks[0](x, y, eps, steps, generator)
        for other in attacks[1:]:
            standing = predictions(model, best) == y.cpu()
            if not standing.any():
                break
            rows = standing.nonzero().squeeze(1).to(x.device)
            budget = eps[rows] if torch.is_tensor(eps) and eps.dim() else eps
            best[rows] = other(x[rows], y[rows], budget, steps, generator)
        return best
    return attack


@dataclass(frozen=True)
class SanityCheck:
    """One check: its ``name``, whether it ``passed``, and the measured numbers in words."""

    name: str
    passed: bool
    detail: str


def worst_over_restarts(model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor, *,
                        eps: float, steps: int, restarts: int,
                        generator: torch.Generator) -> float:
    """Accuracy of ``model`` when an image counts as robust only if it survives each of
    ``restarts`` runs of ``attack`` (each from its own random start)."""
    robust = torch.ones(len(y), dtype=torch.bool)
    for _ in range(restarts):
        x_adv = attack(x, y, eps, steps, generator)
        robust &= predictions(model, x_adv) == y
    return robust.float().mean().item()


def predictions(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Predicted classes (N,) on the CPU, in eval mode (restored), in batches."""
    with attack_mode(model):
        return torch.cat([predict(model, xb) for xb in x.split(256)]).cpu()


def sanity_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                  attack: Attack, source: nn.Module, steps: int = 10, more_steps: int = 50,
                  restarts: int = 3, seed: int = 0) -> list[SanityCheck]:
    """Run the three checks of the module's docstring on ``model`` evaluated by ``attack``.

    Args:
        model: the defended model, images (N, C, H, W) in [0, 1] -> logits; the accuracies
            are its own. x: (N, C, H, W) in [0, 1]. y: (N,) true labels.
        eps: the evaluation's L-inf budget, in pixel units.
        attack: the evaluation attack (see the module's docstring).
        source: an undefended model taking the same images, for the transfer attack (PGD
            with ``steps`` steps on it).
        steps: the evaluation's steps. more_steps, restarts: the greater effort compared
            with it.
        seed: seeds every random start (one generator for the whole run).

    Returns:
        Three :class:`SanityCheck`: "unbounded", "more effort", "white box beats black box".
    """
    eps = check_eps(eps)
    x, y = check_batch(model, x, y)
    y = y.cpu()
    generator = torch.Generator().manual_seed(seed)
    white_box = worst_over_restarts(model, attack, x, y, eps=eps, steps=steps, restarts=1,
                                    generator=generator)
    unbounded = worst_over_restarts(model, attack, x, y, eps=UNBOUNDED_EPS, steps=steps,
                                    restarts=1, generator=generator)
    effort = worst_over_restarts(model, attack, x, y, eps=eps, steps=more_steps,
                                 restarts=restarts, generator=generator)
    transfer = accuracy(model, pgd_attack(source)(x, y, eps, steps, generator), y)
    return [
        SanityCheck("unbounded", unbounded <= ZERO,
                    f"accuracy {unbounded:.3f} at eps = {UNBOUNDED_EPS:g} (should be <= {ZERO})"),
        SanityCheck("more effort", effort <= white_box + SLACK,
                    f"accuracy {effort:.3f} with {more_steps} steps x {restarts} restarts vs "
                    f"{white_box:.3f} with {steps} steps (should not rise)"),
        SanityCheck("white box beats black box", white_box <= transfer + SLACK,
                    f"white-box accuracy {white_box:.3f} vs {transfer:.3f} under transfer from "
                    f"an undefended model (white box should be lower or equal)"),
    ]


def as_dicts(checks: list[SanityCheck]) -> list[dict]:
    """The checks as JSON-ready dicts (``name``, ``passed``, ``detail``)."""
    return [asdict(check) for check in checks]
