"""Notebook 02's checks: they pass on the reference solutions, and each broken variant a learner
is likely to write fails exactly the checks it should, every one of them with a message that
names its mistake and none naming another."""

from __future__ import annotations

import nbformat
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_named
from workbench.attacks import fgsm as reference_fgsm
from workbench.exercises import check, get_exercise, run_checks
from workbench.exercises.nb02_fgsm import (FGSM_MISTAKES, diagnose_fgsm, diagnose_sweep,
                                           reference_sweep_eps)

# The phrase that names each mistake in a check's message; a failing check must contain one of
# its variant's phrases and none of the others.
MISTAKES = {
    "sign": "forgot .sign()",
    "targeted": "stepped away from the target",
    "descends": "stepped against the gradient",
    "clamp": "clamp it to the image range",
    "in_place": "changed x in place",
    "train_left": "in train mode after your function",
    "train_gradient": "took the gradient with the model in train mode",
    "unchanged": "returned the input unchanged",
    "softmax": "takes logits",
    "too_small": "255 times too small",
    "too_large": "255 times too large",
}

# Still eight checks, as tests/test_notebooks.py counts them: every check now says when the
# shape is wrong (the separate shape check went), and "leaves x unchanged" and the eval-mode
# check became one, to make room for the units and the logits checks.
FGSM_CHECKS = {
    "untargeted": "untargeted: every pixel moves by eps along sign(gradient) (linear model)",
    "targeted": "targeted: steps against the gradient of the target's loss (linear model)",
    "units": "keeps eps in pixel units (no 255 scale)",
    "logits": "takes the cross-entropy of the logits, not of probabilities",
    "clamp": "keeps every pixel in [0, 1]",
    "side_effects": "leaves x unchanged and attacks the model in eval mode, leaving it there",
    "random": "matches the reference on random networks and images",
    "lite": "fools the real lite ImageNet model like the reference does",
}


def _gradient(model, x, y, *, probabilities=False):
    x = x.clone().requires_grad_(True)
    out = model(x)
    (grad,) = torch.autograd.grad(F.cross_entropy(out.softmax(1) if probabilities else out, y),
                                  x)
    return grad


def no_sign(model, x, y, eps, *, targeted=False):
    grad = _gradient(model, x, y)
    return (x - eps * grad if targeted else x + eps * grad).clamp(0, 1)


def targeted_wrong_direction(model, x, y, eps, *, targeted=False):
    return (x + eps * _gradient(model, x, y).sign()).clamp(0, 1)


def untargeted_wrong_direction(model, x, y, eps, *, targeted=False):
    return (x - eps * _gradient(model, x, y).sign()).clamp(0, 1)


def no_clamp(model, x, y, eps, *, targeted=False):
    step = eps * _gradient(model, x, y).sign()
    return x - step if targeted else x + step


def modifies_input(model, x, y, eps, *, targeted=False):
    step = eps * _gradient(model, x, y).sign()
    x.add_(-step if targeted else step).clamp_(0, 1)
    return x


def leaves_train_mode(model, x, y, eps, *, targeted=False):
    model.train()  # a learner who thinks gradients need train mode
    step = eps * _gradient(model, x, y).sign()
    return (x - step if targeted else x + step).clamp(0, 1).detach()


def gradient_in_train_mode(model, x, y, eps, *, targeted=False):
    model.train()
    step = eps * _gradient(model, x, y).sign()
    model.eval()
    return (x - step if targeted else x + step).clamp(0, 1).detach()


def returns_input(model, x, y, eps, *, targeted=False):
    return x.clone()


def softmax_in_the_loss(model, x, y, eps, *, targeted=False):
    step = eps * _gradient(model, x, y, probabilities=True).sign()  # F.cross_entropy(p, y)
    return (x - step if targeted else x + step).clamp(0, 1)


def eps_divided_by_255(model, x, y, eps, *, targeted=False):
    step = eps / 255 * _gradient(model, x, y).sign()  # eps taken for 0-255 units
    return (x - step if targeted else x + step).clamp(0, 1)


def eps_times_255(model, x, y, eps, *, targeted=False):
    step = eps * 255 * _gradient(model, x, y).sign()
    return (x - step if targeted else x + step).clamp(0, 1)


# broken variant -> (the checks it fails, the mistakes its messages may name)
BROKEN_FGSM = {
    no_sign: ({"untargeted", "targeted", "units", "logits", "random", "lite"}, {"sign"}),
    targeted_wrong_direction: ({"targeted"}, {"targeted"}),
    untargeted_wrong_direction: ({"untargeted", "logits", "random", "lite"}, {"descends"}),
    no_clamp: ({"clamp", "random"}, {"clamp"}),  # the photo stays inside [0, 1] at 2/255
    modifies_input: ({"side_effects"}, {"in_place"}),
    leaves_train_mode: ({"side_effects", "random", "lite"}, {"train_left"}),
    gradient_in_train_mode: ({"side_effects", "random", "lite"}, {"train_gradient"}),
    returns_input: ({"untargeted", "targeted", "units", "logits", "random", "lite"},
                    {"unchanged"}),
    softmax_in_the_loss: ({"logits", "random"}, {"softmax"}),
    eps_divided_by_255: ({"untargeted", "targeted", "units", "logits", "random", "lite"},
                         {"too_small"}),
    eps_times_255: ({"untargeted", "targeted", "units", "logits", "random", "lite"},
                    {"too_large"}),
}


def test_the_checks_are_the_ones_these_tests_name():
    assert [d for d, _ in get_exercise("fgsm").checks] == list(FGSM_CHECKS.values())
    assert [d for d, _ in get_exercise("sweep_eps").checks] == list(SWEEP_CHECKS.values())


def test_reference_fgsm_passes_every_check():
    results = run_checks("fgsm", reference_fgsm)
    assert results and all(r.passed for r in results), [r for r in results if not r.passed]


def test_the_diagnosis_tells_each_known_mistake_from_the_others_and_from_the_reference():
    assert diagnose_fgsm(reference_fgsm) is None
    for message, wrong in FGSM_MISTAKES:
        assert diagnose_fgsm(wrong) == message
    assert diagnose_sweep(reference_sweep_eps) is None


@pytest.mark.parametrize("broken", list(BROKEN_FGSM), ids=lambda f: f.__name__)
def test_broken_fgsm_fails_the_right_checks_each_naming_its_mistake(broken):
    expected_checks, mistakes = BROKEN_FGSM[broken]
    assert_named(run_checks("fgsm", broken), expected_checks, mistakes, FGSM_CHECKS, MISTAKES)


def test_returning_none_or_the_wrong_shape_is_said_by_every_check():
    results = run_checks("fgsm", lambda model, x, y, eps, targeted=False: None)
    assert all("returned None" in r.message for r in results)
    results = run_checks("fgsm", lambda model, x, y, eps, targeted=False: x[:, :1].clone())
    assert all("one adversarial image per input image" in r.message for r in results)


def test_hard_coded_answer_cannot_pass():
    constant = torch.full((2, 3, 4, 4), 0.5)
    results = run_checks("fgsm", lambda model, x, y, eps, targeted=False: constant.clone())
    assert not all(r.passed for r in results)


def test_not_implemented_and_crashes_are_reported_not_raised():
    def student(model, x, y, eps, *, targeted=False):
        raise NotImplementedError("exercise: write this part")

    def crashes(model, x, y, eps, *, targeted=False):
        return x[:, 99]

    assert all("not implemented yet" in r.message for r in run_checks("fgsm", student))
    messages = [r.message for r in run_checks("fgsm", crashes)]
    assert all("raised IndexError" in m for m in messages), messages


def test_endless_loop_is_stopped_by_the_check_time_limit():
    def spins(model, x, y, eps, *, targeted=False):
        while True:
            pass

    results = run_checks("fgsm", spins, timeout=0.5)
    assert not any(r.passed for r in results)
    assert all("loop forever" in r.message for r in results)
    assert all(r.seconds < 2 for r in results)


# ----------------------------------------------------------------------------- sweep_eps

SWEEP_MISTAKES = {
    "top_class": "true class y",
    "clean": "on x_adv, not on x",
    "ignores_attack": "not fgsm directly",
    "train_left": "in train mode after your function",
    "too_small": "255 times too small",
    "too_large": "255 times too large",
}

SWEEP_CHECKS = {
    "shape": "returns one accuracy and one confidence per epsilon",
    "uses_attack": "calls the attack it is given, once per epsilon, in order",
    "values": "accuracy and confidence match the reference on random networks",
    "eval": "leaves the model in eval mode",
}


def _sweep(model, x, y, epsilons, attack, *, on_clean=False, top_class=False):
    accuracy, confidence = [], []
    for eps in epsilons:
        x_adv = attack(model, x, y, eps)
        with torch.no_grad():
            probs = model(x_adv).softmax(dim=1)
            judged = model(x).softmax(dim=1) if on_clean else probs  # accuracy on x, by mistake
        accuracy.append((judged.argmax(dim=1) == y).float().mean())
        confidence.append(probs.max(1).values.mean() if top_class
                          else probs.gather(1, y[:, None]).mean())
    return torch.stack(accuracy), torch.stack(confidence)


def max_prob_confidence(model, x, y, epsilons, attack):
    return _sweep(model, x, y, epsilons, attack, top_class=True)


def clean_accuracy(model, x, y, epsilons, attack):
    return _sweep(model, x, y, epsilons, attack, on_clean=True)


def ignores_attack(model, x, y, epsilons, attack):
    return reference_sweep_eps(model, x, y, epsilons, lambda m, x_, y_, e: reference_fgsm(
        m, x_, y_, e))


def sweep_leaves_train_mode(model, x, y, epsilons, attack):
    model.train()
    return _sweep(model, x, y, epsilons, attack)


def sweep_eps_divided_by_255(model, x, y, epsilons, attack):
    return _sweep(model, x, y, [e / 255 for e in epsilons], attack)


def sweep_eps_times_255(model, x, y, epsilons, attack):  # the attack refuses eps > 1: it raises
    return _sweep(model, x, y, [e * 255 for e in epsilons], attack)


BROKEN_SWEEPS = {
    max_prob_confidence: ({"values"}, {"top_class"}),
    clean_accuracy: ({"values"}, {"clean"}),
    ignores_attack: ({"uses_attack"}, {"ignores_attack"}),
    sweep_leaves_train_mode: ({"values", "eval"}, {"train_left"}),
    sweep_eps_divided_by_255: ({"uses_attack", "values"}, {"too_small"}),
    sweep_eps_times_255: ({"shape", "uses_attack", "values", "eval"}, {"too_large"}),
}


def test_reference_sweep_passes_every_check():
    assert all(r.passed for r in run_checks("sweep_eps", reference_sweep_eps))


@pytest.mark.parametrize("broken", list(BROKEN_SWEEPS), ids=lambda f: f.__name__)
def test_broken_sweeps_fail_the_right_checks_each_naming_its_mistake(broken):
    expected_checks, mistakes = BROKEN_SWEEPS[broken]
    assert_named(run_checks("sweep_eps", broken), expected_checks, mistakes, SWEEP_CHECKS,
                 SWEEP_MISTAKES)


def test_check_prints_a_summary(capsys):
    assert check("fgsm", reference_fgsm) is None  # nothing for the cell to echo
    check("fgsm", no_clamp)
    out = capsys.readouterr().out
    assert "8/8 checks passed" in out and "FAIL" in out and "clamp" in out


def test_importing_the_checks_builds_no_model_and_imports_no_keras():
    # Every `workbench grade` and every notebook's `check` cell imports the registry: grading
    # notebook 02 must not pay for building notebook 05's keras-hub Llamas (12 s per grade).
    import subprocess
    import sys

    code = ("import sys, workbench.exercises.registry\n"
            "print([m for m in ('keras', 'keras_hub', 'tensorflow') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
