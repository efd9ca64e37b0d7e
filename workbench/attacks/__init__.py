"""Attacks as small pure functions over tensors (the Kolter and Madry tutorial's style).

All take images in [0, 1], NCHW, and a model that returns logits; none modifies its input,
the model's train/eval mode, or its parameters' ``.grad``.
"""

from workbench.attacks.core import attack_success, predict
from workbench.attacks.fgsm import fgsm, fgsm_direction
from workbench.attacks.pgd import AttackResult, ascent_step, pgd, project, random_start_point

__all__ = ["AttackResult", "ascent_step", "attack_success", "fgsm", "fgsm_direction", "pgd",
           "predict", "project", "random_start_point"]
