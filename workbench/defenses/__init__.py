"""Defences for notebook 03 (part B): train your own standard, AdvProp and PGD-AT models on the
digits and compare how they hold up under attack.

    from workbench.data import load_digits_split
    from workbench.defenses import digits_cnn, train_pgd_at, robust_accuracy
    x_train, y_train, x_test, y_test = load_digits_split()
    model = digits_cnn(seed=0)
    train_pgd_at(model, x_train, y_train, epochs=8, eps=0.15, seed=0)
    robust_accuracy(model, x_test, y_test, eps=0.15)
"""

from workbench.defenses.advprop import DualBatchNorm2d, advprop_loss, auxiliary_bn
from workbench.defenses.evaluation import (
    ATTACKS,
    accuracy,
    adversarial_examples,
    robust_accuracy,
    robustness_curve,
    transfer_accuracy,
)
from workbench.defenses.models import digits_cnn
from workbench.defenses.worst_case import RobustEvaluation, evaluate_robustness
from workbench.defenses.training import (
    METHODS,
    default_alpha,
    train,
    train_advprop,
    train_pgd_at,
    train_standard,
)

__all__ = ["ATTACKS", "METHODS", "DualBatchNorm2d", "RobustEvaluation", "accuracy",
           "adversarial_examples", "advprop_loss", "auxiliary_bn", "default_alpha", "digits_cnn",
           "evaluate_robustness", "robust_accuracy", "robustness_curve", "train",
           "train_advprop", "train_pgd_at", "train_standard", "transfer_accuracy"]
