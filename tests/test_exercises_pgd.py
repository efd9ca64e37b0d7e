"""Notebook 03's PGD checks pass on the references and name the codelab's bugs: each broken
variant fails exactly the checks it should, every one of them with a message naming its
mistake and none naming another."""

from __future__ import annotations

import pytest
import torch.nn.functional as F

from conftest import assert_named
from workbench.attacks import project
from workbench.exercises import get_exercise, run_checks
from workbench.exercises import nb03_pgd
from workbench.exercises.nb03_pgd import reference_pgd_linf_step


def _failures(name, fn):
    return [r.message for r in run_checks(name, fn) if not r.passed]


def test_references_pass():
    from workbench.defenses import advprop_loss

    assert not _failures("pgd_linf_step", reference_pgd_linf_step)
    assert not _failures("project_l2", lambda delta, eps: project(delta, eps, "l2"))
    assert not _failures("targeted_objective",
                         lambda logits, t: -F.cross_entropy(logits, t, reduction="none"))
    assert not _failures("advprop_loss", advprop_loss)


def test_each_diagnosis_tells_its_known_mistakes_from_each_other_and_from_the_reference():
    from workbench.defenses import advprop_loss

    for diagnose, mistakes, reference in (
            (nb03_pgd.diagnose_step, nb03_pgd.STEP_MISTAKES, reference_pgd_linf_step),
            (nb03_pgd.diagnose_l2, nb03_pgd.L2_MISTAKES, lambda d, eps: project(d, eps, "l2")),
            (nb03_pgd.diagnose_objective, nb03_pgd.OBJECTIVE_MISTAKES,
             lambda logits, t: -F.cross_entropy(logits, t, reduction="none")),
            (nb03_pgd.diagnose_advprop, nb03_pgd.ADVPROP_MISTAKES, advprop_loss)):
        assert diagnose(reference) is None, diagnose.__name__
        for message, wrong in mistakes:
            assert diagnose(wrong) == message, (diagnose.__name__, message)


def test_the_checks_are_the_ones_these_tests_name():
    for name, checks in (("pgd_linf_step", STEP_CHECKS), ("project_l2", L2_CHECKS),
                         ("targeted_objective", TARGETED_CHECKS), ("advprop_loss", ADVPROP_CHECKS)):
        assert [d for d, _ in get_exercise(name).checks] == list(checks.values())


# ----------------------------------------------------------------------------- the L-inf step

STEP_MISTAKES = {
    "added": "added the clipped perturbation",
    "too_small": "255 times too small",
    "too_large": "255 times too large",
    "projection": "did not project",
    "descends": "stepped against the gradient",
    "sign": "forgot .sign()",
    "clamp": "clamp it after the projection",
    "in_place": "changed x in place",
}

STEP_CHECKS = {
    "shape": "returns a tensor shaped like x",
    "assignment": "projects by assignment onto the eps-ball around x",
    "units": "keeps eps and alpha in pixel units (no 255 scale)",
    "direction": "steps along sign(gradient), towards higher loss",
    "random": "keeps pixels in [0, 1] and matches the reference on random cases",
    "x_unchanged": "leaves x unchanged",
}


def codelab_added_projection(x_adv, x, grad, *, alpha, eps):
    stepped = x_adv + alpha * grad.sign()
    return (stepped + (stepped - x).clamp(-eps, eps)).clamp(0, 1)


def adds_clipped_delta(x_adv, x, grad, *, alpha, eps):
    delta = (x_adv + alpha * grad.sign() - x).clamp(-eps, eps)
    return (x_adv + delta).clamp(0, 1)  # x_adv + delta, not x + delta


def adds_clipped_delta_unclamped(x_adv, x, grad, *, alpha, eps):
    return x_adv + (x_adv + alpha * grad.sign() - x).clamp(-eps, eps)


def eps_on_255_scale(x_adv, x, grad, *, alpha, eps):
    return reference_pgd_linf_step(x_adv, x, grad, alpha=alpha / 255, eps=eps / 255)


def alpha_times_255(x_adv, x, grad, *, alpha, eps):
    delta = (x_adv + alpha * 255 * grad.sign() - x).clamp(-eps, eps)
    return (x + delta).clamp(0, 1)


def eps_times_255(x_adv, x, grad, *, alpha, eps):
    delta = (x_adv + alpha * grad.sign() - x).clamp(-eps * 255, eps * 255)
    return (x + delta).clamp(0, 1)


def no_projection(x_adv, x, grad, *, alpha, eps):
    return (x_adv + alpha * grad.sign()).clamp(0, 1)


def descends(x_adv, x, grad, *, alpha, eps):
    return reference_pgd_linf_step(x_adv, x, -grad, alpha=alpha, eps=eps)


def step_without_sign(x_adv, x, grad, *, alpha, eps):
    delta = (x_adv + alpha * grad - x).clamp(-eps, eps)
    return (x + delta).clamp(0, 1)


def step_without_clamp(x_adv, x, grad, *, alpha, eps):
    return x + (x_adv + alpha * grad.sign() - x).clamp(-eps, eps)


def step_modifies_x(x_adv, x, grad, *, alpha, eps):
    delta = (x_adv + alpha * grad.sign() - x).clamp(-eps, eps)
    return x.add_(delta).clamp_(0, 1)


BROKEN_STEPS = {
    codelab_added_projection: ({"assignment", "units", "direction", "random"}, {"added"}),
    adds_clipped_delta: ({"assignment", "random"}, {"added"}),
    adds_clipped_delta_unclamped: ({"assignment", "random"}, {"added", "clamp"}),
    eps_on_255_scale: ({"assignment", "units", "direction", "random"}, {"too_small"}),
    alpha_times_255: ({"units", "direction", "random"}, {"too_large"}),
    eps_times_255: ({"assignment", "random"}, {"too_large"}),
    no_projection: ({"assignment", "random"}, {"projection"}),
    descends: ({"assignment", "direction", "random"}, {"descends"}),
    step_without_sign: ({"direction", "random"}, {"sign"}),
    step_without_clamp: ({"random"}, {"clamp"}),
    step_modifies_x: ({"x_unchanged"}, {"in_place"}),
}


@pytest.mark.parametrize("broken", list(BROKEN_STEPS), ids=lambda f: f.__name__)
def test_broken_steps_fail_the_right_checks_each_naming_its_mistake(broken):
    expected_checks, mistakes = BROKEN_STEPS[broken]
    assert_named(run_checks("pgd_linf_step", broken), expected_checks, mistakes, STEP_CHECKS,
                 STEP_MISTAKES)


def test_the_clipped_delta_is_never_told_to_take_the_sign():
    # The example: x_adv + clamp(x_adv + alpha * sign(g) - x, -eps, eps).
    for broken in (codelab_added_projection, adds_clipped_delta, adds_clipped_delta_unclamped):
        messages = _failures("pgd_linf_step", broken)
        assert not any("forget .sign()" in m or "forgot .sign()" in m for m in messages), messages


# ----------------------------------------------------------------------------- L2 projection

L2_MISTAKES = {
    "always": "don't always rescale",
    "batch": "whole batch",
    "nan": "NaN",
    "linf": "the L-inf projection",
}

L2_CHECKS = {
    "inside": "leaves a perturbation inside the ball unchanged",
    "outside": "rescales each example outside the ball to norm eps, same direction",
    "zero": "handles a zero perturbation without NaN",
}


def always_rescale(delta, eps):
    return delta * (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, 1, 1, 1)


def one_norm_for_the_batch(delta, eps):
    return delta * min(1.0, eps / delta.flatten().norm().clamp_min(1e-12).item())


def divides_by_zero(delta, eps):
    norms = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    return delta / norms * norms.clamp(max=eps)


def clamps_each_value(delta, eps):
    return delta.clamp(-eps, eps)


BROKEN_L2 = {
    always_rescale: ({"inside", "outside"}, {"always"}),
    one_norm_for_the_batch: ({"outside"}, {"batch"}),
    divides_by_zero: ({"zero"}, {"nan"}),
    clamps_each_value: ({"outside"}, {"linf"}),
}


@pytest.mark.parametrize("broken", list(BROKEN_L2), ids=lambda f: f.__name__)
def test_broken_l2_projections_fail_the_right_checks_each_naming_its_mistake(broken):
    expected_checks, mistakes = BROKEN_L2[broken]
    assert_named(run_checks("project_l2", broken), expected_checks, mistakes, L2_CHECKS,
                 L2_MISTAKES)


# ----------------------------------------------------------------------------- targeted objective

TARGETED_MISTAKES = {
    "softmax": "takes logits",
    "sign": "negate it",
    "mean": "one value per example",
}

TARGETED_CHECKS = {
    "shape": "returns one value per example",
    "value": "is minus the cross-entropy of the target, from logits",
    "monotone": "grows as the target's logit grows",
    "logits": "takes the cross-entropy of the logits, not of probabilities",
}


def objective_on_probabilities(logits, target):
    return -F.cross_entropy(logits.softmax(1), target, reduction="none")


def objective_wrong_sign(logits, target):
    return F.cross_entropy(logits, target, reduction="none")  # pushes away from the target


def objective_averaged(logits, target):
    return -F.cross_entropy(logits, target)


BROKEN_OBJECTIVES = {
    objective_on_probabilities: ({"value", "logits"}, {"softmax"}),
    objective_wrong_sign: ({"value", "monotone", "logits"}, {"sign"}),
    objective_averaged: ({"shape", "value", "logits"}, {"mean"}),
}


@pytest.mark.parametrize("broken", list(BROKEN_OBJECTIVES), ids=lambda f: f.__name__)
def test_broken_targeted_objectives_fail_the_right_checks_each_naming_its_mistake(broken):
    expected_checks, mistakes = BROKEN_OBJECTIVES[broken]
    assert_named(run_checks("targeted_objective", broken), expected_checks, mistakes,
                 TARGETED_CHECKS, TARGETED_MISTAKES)


# ----------------------------------------------------------------------------- AdvProp

ADVPROP_MISTAKES = {
    "main": "went through the main BatchNorm",
    "swapped": "swapped",
    "aux_on": "still switched on",
    "tensor": "return the tensor",
    "softmax": "takes logits",
}

ADVPROP_CHECKS = {
    "value": "equals clean CE (main BN) + adversarial CE (auxiliary BN)",
    "stats": "each BatchNorm's statistics see only their own kind of image",
    "restores": "leaves the model on its main BatchNorm",
    "gradients": "trains both BatchNorms (the loss keeps its graph)",
}


def all_main(model, x_clean, x_adv, y):
    return F.cross_entropy(model(x_clean), y) + F.cross_entropy(model(x_adv), y)


def swapped_batches(model, x_clean, x_adv, y):
    from workbench.defenses import auxiliary_bn

    with auxiliary_bn(model):
        clean = F.cross_entropy(model(x_clean), y)
    return clean + F.cross_entropy(model(x_adv), y)


def leaves_aux_on(model, x_clean, x_adv, y):
    from workbench.defenses import DualBatchNorm2d

    clean = F.cross_entropy(model(x_clean), y)
    for layer in model.modules():  # switched on by hand, never switched back
        if isinstance(layer, DualBatchNorm2d):
            layer.use_aux = True
    return clean + F.cross_entropy(model(x_adv), y)


def returns_float(model, x_clean, x_adv, y):
    from workbench.defenses import advprop_loss

    return advprop_loss(model, x_clean, x_adv, y).item()


def advprop_on_probabilities(model, x_clean, x_adv, y):
    from workbench.defenses import auxiliary_bn

    clean = F.cross_entropy(model(x_clean).softmax(1), y)
    with auxiliary_bn(model):
        adversarial = F.cross_entropy(model(x_adv).softmax(1), y)
    return clean + adversarial


BROKEN_ADVPROP = {
    all_main: ({"value", "stats", "gradients"}, {"main"}),
    swapped_batches: ({"value", "stats"}, {"swapped"}),
    leaves_aux_on: ({"restores"}, {"aux_on"}),
    returns_float: ({"value", "gradients"}, {"tensor"}),
    advprop_on_probabilities: ({"value"}, {"softmax"}),
}


@pytest.mark.parametrize("broken", list(BROKEN_ADVPROP), ids=lambda f: f.__name__)
def test_broken_advprop_losses_fail_the_right_checks_each_naming_its_mistake(broken):
    expected_checks, mistakes = BROKEN_ADVPROP[broken]
    assert_named(run_checks("advprop_loss", broken), expected_checks, mistakes, ADVPROP_CHECKS,
                 ADVPROP_MISTAKES)
