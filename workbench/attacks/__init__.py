"""Attacks as small pure functions over tensors (the Kolter and Madry tutorial's style).

All take images in [0, 1], NCHW, and a model that returns logits; none modifies its input,
the model's train/eval mode, or its parameters' ``.grad``. Budgets are floats, or (N,)
tensors with one budget per example.
"""

from workbench.attacks.apgd import apgd, dlr_loss
from workbench.attacks.core import attack_success, predict
from workbench.attacks.fgsm import fgsm, fgsm_direction
from workbench.attacks.pgd import (AttackResult, PGDStep, ascent_step, l2_norms, pgd, pgd_step,
                                   project, random_in_ball, random_start_point)
from workbench.attacks.restarts import pgd_restarts
from workbench.attacks.sweep import SweepResult, pgd_sweep, repeat_over_budgets

__all__ = ["AttackResult", "PGDStep", "SweepResult", "apgd", "ascent_step", "attack_success",
           "dlr_loss", "fgsm",
           "fgsm_direction", "l2_norms", "pgd", "pgd_restarts", "pgd_step", "pgd_sweep",
           "predict", "project", "random_in_ball", "random_start_point", "repeat_over_budgets"]
