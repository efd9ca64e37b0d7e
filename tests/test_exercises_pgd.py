"""Notebook 03's PGD checks pass on the references and name the codelab's bugs."""

from __future__ import annotations

import pytest
import torch.nn.functional as F

from workbench.attacks import project
from workbench.exercises import run_checks
from workbench.exercises.nb03_pgd import reference_pgd_linf_step


def _failures(name, fn):
    return [r.message for r in run_checks(name, fn) if not r.passed]


def test_references_pass():
    assert not _failures("pgd_linf_step", reference_pgd_linf_step)
    assert not _failures("project_l2", lambda delta, eps: project(delta, eps, "l2"))
    assert not _failures("targeted_objective",
                         lambda logits, t: -F.cross_entropy(logits, t, reduction="none"))


def codelab_added_projection(x_adv, x, grad, *, alpha, eps):
    stepped = x_adv + alpha * grad.sign()
    return (stepped + (stepped - x).clamp(-eps, eps)).clamp(0, 1)


def eps_on_255_scale(x_adv, x, grad, *, alpha, eps):
    return reference_pgd_linf_step(x_adv, x, grad, alpha=alpha / 255, eps=eps / 255)


def no_projection(x_adv, x, grad, *, alpha, eps):
    return (x_adv + alpha * grad.sign()).clamp(0, 1)


def descends(x_adv, x, grad, *, alpha, eps):
    return reference_pgd_linf_step(x_adv, x, -grad, alpha=alpha, eps=eps)


@pytest.mark.parametrize("broken, expected", [
    (codelab_added_projection, "added the clipped perturbation"),
    (eps_on_255_scale, "255 times too small"),
    (no_projection, "project back onto the ball"),
    (descends, "against the gradient"),
], ids=lambda v: getattr(v, "__name__", ""))
def test_broken_steps_are_named(broken, expected):
    assert any(expected in m for m in _failures("pgd_linf_step", broken))


def test_broken_l2_projections_are_named():
    def always_rescale(delta, eps):
        return delta * (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, 1, 1, 1)

    def batch_norm(delta, eps):
        return delta * min(1.0, eps / delta.flatten().norm().clamp_min(1e-12).item())

    def divides_by_zero(delta, eps):
        norms = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        return delta / norms * norms.clamp(max=eps)

    assert any("only shrink" in m or "don't always rescale" in m
               for m in _failures("project_l2", always_rescale))
    assert any("whole batch" in m for m in _failures("project_l2", batch_norm))
    assert any("NaN" in m for m in _failures("project_l2", divides_by_zero))


def test_broken_targeted_objectives_are_named():
    on_probs = lambda logits, t: -F.cross_entropy(logits.softmax(1), t, reduction="none")  # noqa
    wrong_sign = lambda logits, t: F.cross_entropy(logits, t, reduction="none")  # noqa
    averaged = lambda logits, t: -F.cross_entropy(logits, t)  # noqa
    assert any("probabilities" in m for m in _failures("targeted_objective", on_probs))
    assert any("negate" in m for m in _failures("targeted_objective", wrong_sign))
    assert any("one value per example" in m for m in _failures("targeted_objective", averaged))


def test_advprop_checks_pass_on_the_reference_and_name_broken_routing():
    from workbench.defenses import DualBatchNorm2d, advprop_loss

    assert not _failures("advprop_loss", advprop_loss)

    def all_main(model, x_clean, x_adv, y):
        return F.cross_entropy(model(x_clean), y) + F.cross_entropy(model(x_adv), y)

    def leaves_aux_on(model, x_clean, x_adv, y):
        clean = F.cross_entropy(model(x_clean), y)
        for layer in model.modules():  # switched on by hand, never switched back
            if isinstance(layer, DualBatchNorm2d):
                layer.use_aux = True
        return clean + F.cross_entropy(model(x_adv), y)

    def returns_float(model, x_clean, x_adv, y):
        return advprop_loss(model, x_clean, x_adv, y).item()

    assert any("through the main BatchNorm" in m for m in _failures("advprop_loss", all_main))
    assert any("still switched on" in m for m in _failures("advprop_loss", leaves_aux_on))
    assert _failures("advprop_loss", returns_float)
