"""Notebook 02's checks: they pass on the reference solutions, and each broken variant a learner
is likely to write fails with a message that names its mistake."""

from __future__ import annotations

import nbformat
import pytest
import torch
import torch.nn.functional as F

from workbench.attacks import fgsm as reference_fgsm
from workbench.exercises import check, run_checks
from workbench.exercises.grader import learner_source
from workbench.exercises.nb02_fgsm import reference_sweep_eps


def _gradient(model, x, y):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    return grad


def no_sign(model, x, y, eps, *, targeted=False):
    grad = _gradient(model, x, y)
    return (x - eps * grad if targeted else x + eps * grad).clamp(0, 1)


def targeted_wrong_direction(model, x, y, eps, *, targeted=False):
    return (x + eps * _gradient(model, x, y).sign()).clamp(0, 1)


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


def returns_input(model, x, y, eps, *, targeted=False):
    return x.clone()


BROKEN_FGSM = {
    no_sign: "forget .sign()",
    targeted_wrong_direction: "targeted=True you stepped away from the target",
    no_clamp: "clamp",
    modifies_input: "changed x in place",
    leaves_train_mode: "train mode",
    returns_input: "returned the input unchanged",
}


def test_reference_fgsm_passes_every_check():
    results = run_checks("fgsm", reference_fgsm)
    assert results and all(r.passed for r in results), [r for r in results if not r.passed]


@pytest.mark.parametrize("broken", list(BROKEN_FGSM), ids=lambda f: f.__name__)
def test_broken_fgsm_fails_with_a_message_naming_the_mistake(broken):
    results = run_checks("fgsm", broken)
    failed = [r for r in results if not r.passed]
    assert failed, f"{broken.__name__} passed every check"
    expected = BROKEN_FGSM[broken]
    assert any(expected in r.message for r in failed), [r.message for r in failed]


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


def test_reference_sweep_passes_and_broken_sweeps_fail():
    assert all(r.passed for r in run_checks("sweep_eps", reference_sweep_eps))

    def max_prob_confidence(model, x, y, epsilons, attack):
        accuracy, confidence = reference_sweep_eps(model, x, y, epsilons, attack)
        tops = []
        for eps in epsilons:
            with torch.no_grad():
                tops.append(model(attack(model, x, y, eps)).softmax(1).max(1).values.mean())
        return accuracy, torch.stack(tops)

    def clean_accuracy(model, x, y, epsilons, attack):
        accuracy, confidence = reference_sweep_eps(model, x, y, epsilons, attack)
        return torch.ones_like(accuracy), confidence

    def ignores_attack(model, x, y, epsilons, attack):
        return reference_sweep_eps(model, x, y, epsilons, lambda m, x_, y_, e: reference_fgsm(
            m, x_, y_, e))

    expectations = {max_prob_confidence: "true class y", clean_accuracy: "on x_adv, not on x",
                    ignores_attack: "not fgsm directly"}
    for broken, expected in expectations.items():
        failed = [r.message for r in run_checks("sweep_eps", broken) if not r.passed]
        assert any(expected in m for m in failed), (broken.__name__, failed)


def test_check_prints_a_summary(capsys):
    assert check("fgsm", reference_fgsm) is None  # nothing for the cell to echo
    check("fgsm", no_clamp)
    out = capsys.readouterr().out
    assert "8/8 checks passed" in out and "FAIL" in out and "clamp" in out


def test_learner_source_takes_imports_and_the_last_definition():
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("%matplotlib inline\nimport torch\nmodel = load()"),
        nbformat.v4.new_code_cell("def fgsm(model, x, y, eps, *, targeted=False):\n    return 1"),
        nbformat.v4.new_code_cell("import math\nSCALE = 2\ndef fgsm(model, x, y, eps, *, "
                                  "targeted=False):\n    return 2\nprint(model)"),
    ])
    source = learner_source(notebook, "fgsm")
    namespace = {}
    exec(source, namespace)
    assert namespace["fgsm"](None, None, None, 0) == 2
    assert "torch" in namespace and namespace["SCALE"] == 2
    assert "print(model)" not in source and "load()" not in source


def test_learner_source_without_the_function_says_so():
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("def fgsm2(): pass")])
    with pytest.raises(ValueError, match="no cell defines `def fgsm"):
        learner_source(notebook, "fgsm")
