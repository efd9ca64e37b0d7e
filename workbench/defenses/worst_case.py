"""Robust accuracy as a worst case over several attacks, in the manner of AutoAttack.

Every robust accuracy is an upper bound: an attack that fails to fool an example does not
prove that no attack can. A weak attack (few PGD steps, one start, cross-entropy only) gives
a loose bound. Here an example counts as robust only if it is classified correctly and
survives, in turn, PGD, APGD with cross-entropy and APGD with the DLR margin loss (Croce and
Hein 2020), each from ``restarts`` random starts; each attack only runs on the examples all
earlier ones left standing, so the strong attacks cost little on a weak model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from workbench.attacks import pgd, predict
from workbench.attacks.apgd import apgd
from workbench.attacks.core import attack_mode, check_batch, check_eps

PGD_STEPS = 10
APGD_STEPS = 100


@dataclass
class RobustEvaluation:
    """The result of :func:`evaluate_robustness`.

    * ``robust_acc``: share of examples that are correct and survive every attack, in [0, 1].
    * ``clean_acc``: share correct without attack.
    * ``after``: attack name -> robust accuracy once that attack and all before it have run
      (non-increasing, in the order run).
    * ``robust``: (N,) bool, per example. ``eps``, ``norm``, ``restarts``: the budget.
    """

    eps: float
    norm: str
    restarts: int
    clean_acc: float
    robust_acc: float
    after: dict[str, float] = field(default_factory=dict)
    robust: torch.Tensor | None = None

    @property
    def description(self) -> str:
        """Which attacks, steps and budget, in words, for a table's caption."""
        budget = f"{self.norm} eps {self.eps:.4g}"
        starts = f", {self.restarts} random starts each" if self.restarts > 1 else ""
        return (f"worst case per example over {', '.join(self.after)} at {budget}{starts}")


def evaluate_robustness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                        norm: str = "linf", pgd_steps: int = PGD_STEPS,
                        apgd_steps: int = APGD_STEPS, restarts: int = 1, seed: int = 0,
                        batch_size: int = 256) -> RobustEvaluation:
    """Robust accuracy of ``model`` on x (N, C, H, W) in [0, 1], y (N,), at ``eps`` (pixel
    units): per example the worst case over PGD (``pgd_steps`` steps of 2.5 eps / steps),
    APGD-CE and APGD-DLR (``apgd_steps`` steps; DLR needs 3 classes or more), each from
    ``restarts`` random starts drawn from a generator seeded with ``seed``. Never more than
    the accuracy under PGD alone on the same examples. The model runs in eval mode and its
    mode is restored. x in another dtype than the model's weights is a TypeError saying how
    to convert it (``x.float()`` for float64 images on a float32 model).
    """
    eps = check_eps(eps, norm=norm)
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be a whole number >= 1, got {restarts!r}")
    x, y = check_batch(model, x, y)
    generator = torch.Generator().manual_seed(seed)
    with attack_mode(model):
        robust = torch.cat([predict(model, xb) == yb
                            for xb, yb in zip(x.split(batch_size), y.split(batch_size))])
        num_classes = int(model(x[:1]).shape[1])
    clean_acc = robust.float().mean().item()
    attacks = {
        f"PGD-{pgd_steps}": lambda xb, yb: pgd(
            model, xb, yb, eps=eps, alpha=2.5 * eps / max(pgd_steps, 1), steps=pgd_steps,
            norm=norm, generator=generator).success,
        f"APGD-CE-{apgd_steps}": lambda xb, yb: apgd(
            model, xb, yb, eps=eps, steps=apgd_steps, norm=norm, loss="ce",
            generator=generator).success,
    }
    if num_classes >= 3:
        attacks[f"APGD-DLR-{apgd_steps}"] = lambda xb, yb: apgd(
            model, xb, yb, eps=eps, steps=apgd_steps, norm=norm, loss="dlr",
            generator=generator).success
    after = {}
    for name, attack in attacks.items():
        for _ in range(restarts if eps > 0 else 0):
            rows = robust.nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            for chunk in rows.split(batch_size):
                robust[chunk[attack(x[chunk], y[chunk])]] = False
        after[name] = robust.float().mean().item()
    return RobustEvaluation(eps=eps, norm=norm, restarts=restarts, clean_acc=clean_acc,
                            robust_acc=robust.float().mean().item(), after=after,
                            robust=robust.cpu())
