"""Notebook 03's PGD exercises: the L-inf step with its projection, the L2 projection and the
targeted objective. Their checks name the bugs of the DevFest 2024 codelab this course
modernises: the projection added the clipped perturbation instead of assigning it, epsilon
was on the 0-255 scale, and the loss read probabilities as logits. The references are the
package's own functions (:func:`workbench.attacks.pgd_step`, :func:`~workbench.attacks.project`,
:func:`workbench.defenses.advprop_loss`), not copies of the notebook's solutions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workbench.attacks import pgd_step as reference_pgd_linf_step  # norm="linf" by default
from workbench.attacks import project
from workbench.exercises.core import SMALL_IMAGE_SHAPE, CheckFailed, as_tensor, exercise


def _case(seed: int, n: int = 4):
    """Clean images x, a current adversarial point inside the ball, a gradient, from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *SMALL_IMAGE_SHAPE), generator=g)
    eps = 8 / 255
    x_adv = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * eps).clamp(0, 1)
    grad = torch.randn(x.shape, generator=g)
    return x, x_adv, grad, eps


step_exercise = exercise("pgd_linf_step", notebook="03_pgd",
                         title="one L-inf PGD step, pgd_linf_step(x_adv, x, grad, alpha=, eps=)")


@step_exercise.check("returns a tensor shaped like x")
def _step_shape(pgd_linf_step):
    x, x_adv, grad, eps = _case(0)
    out = as_tensor(pgd_linf_step(x_adv.clone(), x.clone(), grad, alpha=2 / 255, eps=eps),
                     "x_adv")
    if out.shape != x.shape:
        raise CheckFailed(f"got shape {tuple(out.shape)}, expected {tuple(x.shape)}")


@step_exercise.check("projects by assignment onto the eps-ball around x")
def _step_assignment(pgd_linf_step):
    x = torch.full((2, *SMALL_IMAGE_SHAPE), 0.5)
    eps, alpha = 8 / 255, 2 / 255
    x_adv = x + 0.9 * eps  # near the edge of the ball: the step pushes it out
    grad = torch.ones_like(x)
    out = as_tensor(pgd_linf_step(x_adv.clone(), x.clone(), grad, alpha=alpha, eps=eps), "x_adv")
    stepped = x_adv + alpha
    added = (stepped + (stepped - x).clamp(-eps, eps)).clamp(0, 1)
    if torch.allclose(out, added, atol=1e-6):
        raise CheckFailed("you added the clipped perturbation to x_adv (x_adv + clamp(x_adv - x,"
                          " -eps, eps)), the codelab's bug: assign it instead, x_adv = x + "
                          "clamp(x_adv - x, -eps, eps)")
    if (out - x).abs().max() > eps + 1e-6:
        raise CheckFailed(f"x_adv is {255 * (out - x).abs().max():.1f}/255 from x, more than "
                          f"eps = 8/255: project back onto the ball, x + clamp(x_adv - x, -eps, "
                          f"eps)")
    if not torch.allclose(out, x + eps, atol=1e-6):
        raise CheckFailed("a step that leaves the ball should end exactly on its edge, x + eps")


@step_exercise.check("keeps eps and alpha in pixel units (no 255 scale)")
def _step_units(pgd_linf_step):
    x = torch.full((2, *SMALL_IMAGE_SHAPE), 0.5)
    grad = torch.ones_like(x)
    out = as_tensor(pgd_linf_step(x.clone(), x.clone(), grad, alpha=2 / 255, eps=8 / 255),
                     "x_adv")
    moved = (out - x).abs().max().item()
    if 0 < moved < 0.1 * 2 / 255:
        raise CheckFailed("the step is about 255 times too small: alpha and eps are already in "
                          "pixel units (8/255), don't divide them by 255 again")
    if not abs(moved - 2 / 255) < 1e-6:
        raise CheckFailed(f"from x, one step of alpha = 2/255 should move each pixel by 2/255, "
                          f"got {255 * moved:.2f}/255")


@step_exercise.check("steps along sign(gradient), towards higher loss")
def _step_direction(pgd_linf_step):
    x = torch.full((2, *SMALL_IMAGE_SHAPE), 0.5)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    alpha = 2 / 255
    out = as_tensor(pgd_linf_step(x.clone(), x.clone(), grad, alpha=alpha, eps=8 / 255),
                     "x_adv")
    if torch.allclose(out, x - alpha * grad.sign(), atol=1e-6):
        raise CheckFailed("you stepped against the gradient: PGD ascends the loss, "
                          "x_adv + alpha * grad.sign()")
    if not torch.allclose(out, x + alpha * grad.sign(), atol=1e-6):
        raise CheckFailed("each pixel should move by exactly alpha along grad.sign(): did you "
                          "forget .sign()?")


@step_exercise.check("keeps pixels in [0, 1] and matches the reference on random cases")
def _step_random(pgd_linf_step):
    for seed in (2, 3, 4):
        x, x_adv, grad, eps = _case(seed)
        x[:, 0] = 0.0
        x[:, 1] = 1.0
        x_adv = (x + (x_adv - x).clamp(-eps, eps)).clamp(0, 1)
        out = as_tensor(pgd_linf_step(x_adv.clone(), x.clone(), grad, alpha=3 / 255, eps=eps),
                         "x_adv")
        if out.min() < 0 or out.max() > 1:
            raise CheckFailed("x_adv leaves [0, 1]: clamp it after the projection")
        expected = reference_pgd_linf_step(x_adv, x, grad, alpha=3 / 255, eps=eps)
        if not torch.allclose(out, expected, atol=1e-6):
            raise CheckFailed(f"differs from the reference on random inputs (seed {seed})")


# ----------------------------------------------------------------------------- L2 projection

l2_exercise = exercise("project_l2", notebook="03_pgd",
                       title="projection onto the L2 ball, project_l2(delta, eps)")


def _norms(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


@l2_exercise.check("leaves a perturbation inside the ball unchanged")
def _l2_inside(project_l2):
    delta = torch.randn((3, *SMALL_IMAGE_SHAPE), generator=torch.Generator().manual_seed(5))
    delta = delta / _norms(delta).view(-1, 1, 1, 1) * 0.5
    out = as_tensor(project_l2(delta.clone(), 1.0), "the projected delta")
    if not torch.allclose(out, delta, atol=1e-6):
        raise CheckFailed("a perturbation with norm 0.5 < eps = 1 changed: only shrink those "
                          "whose norm exceeds eps (factor min(1, eps / norm))")


@l2_exercise.check("rescales each example outside the ball to norm eps, same direction")
def _l2_outside(project_l2):
    delta = torch.randn((3, *SMALL_IMAGE_SHAPE), generator=torch.Generator().manual_seed(6))
    delta = delta / _norms(delta).view(-1, 1, 1, 1) * torch.tensor([2.0, 0.5, 5.0]).view(-1, 1, 1, 1)
    out = as_tensor(project_l2(delta.clone(), 1.0), "the projected delta")
    if torch.allclose(_norms(out), torch.full((3,), 1.0), atol=1e-4) and not torch.allclose(
            out[1], delta[1], atol=1e-6):
        raise CheckFailed("every example now has norm eps, also the one that was inside the "
                          "ball: use min(1, eps / norm), don't always rescale")
    batch_norm = delta.flatten().norm()
    if torch.allclose(out, delta * (1.0 / batch_norm), atol=1e-6):
        raise CheckFailed("you used one norm for the whole batch: compute one per example, "
                          "delta.flatten(1).norm(dim=1)")
    expected = project(delta, 1.0, "l2")
    if not torch.allclose(out, expected, atol=1e-5):
        raise CheckFailed(f"norms after projection {_norms(out).tolist()}, expected "
                          f"{_norms(expected).tolist()}")


@l2_exercise.check("handles a zero perturbation without NaN")
def _l2_zero(project_l2):
    out = as_tensor(project_l2(torch.zeros((2, *SMALL_IMAGE_SHAPE)), 1.0), "the projected delta")
    if torch.isnan(out).any() or out.abs().max() > 0:
        raise CheckFailed("a zero perturbation gave NaN or non-zero values: guard the division, "
                          "norm.clamp_min(1e-12)")


# ----------------------------------------------------------------------------- targeted objective

targeted_exercise = exercise("targeted_objective", notebook="03_pgd",
                             title="the targeted objective, targeted_objective(logits, target)")


@targeted_exercise.check("returns one value per example")
def _targeted_shape(targeted_objective):
    logits = torch.randn((5, 10), generator=torch.Generator().manual_seed(7))
    out = as_tensor(targeted_objective(logits, torch.arange(5)), "the objective")
    if out.shape != (5,):
        raise CheckFailed(f"got shape {tuple(out.shape)}: return one value per example, "
                          f"F.cross_entropy(..., reduction='none')")


@targeted_exercise.check("is minus the cross-entropy of the target, from logits")
def _targeted_value(targeted_objective):
    g = torch.Generator().manual_seed(8)
    logits = torch.randn((6, 10), generator=g) * 3
    target = torch.randint(0, 10, (6,), generator=g)
    out = as_tensor(targeted_objective(logits, target), "the objective").flatten()
    expected = -F.cross_entropy(logits, target, reduction="none")
    if out.shape == expected.shape and torch.allclose(out, expected, atol=1e-5):
        return
    on_probs = -F.cross_entropy(logits.softmax(1), target, reduction="none")
    if out.shape == expected.shape and torch.allclose(out, on_probs, atol=1e-5):
        raise CheckFailed("you passed probabilities to F.cross_entropy, which expects logits "
                          "(the codelab's bug): its gradients almost vanish")
    if out.shape == expected.shape and torch.allclose(out, -expected, atol=1e-5):
        raise CheckFailed("PGD ascends this objective: ascending the target's cross-entropy "
                          "pushes away from the target; negate it")
    raise CheckFailed("expected -F.cross_entropy(logits, target, reduction='none')")


@targeted_exercise.check("grows as the target's logit grows")
def _targeted_monotone(targeted_objective):
    logits = torch.zeros((1, 10))
    target = torch.tensor([3])
    values = []
    for boost in (0.0, 1.0, 2.0):
        boosted = logits.clone()
        boosted[0, 3] = boost
        values.append(float(as_tensor(targeted_objective(boosted, target), "the objective")
                            .flatten()[0]))
    if not values[0] < values[1] < values[2]:
        raise CheckFailed(f"objective {values} should rise as the target's logit rises")


# ----------------------------------------------------------------------------- AdvProp

advprop_exercise = exercise("advprop_loss", notebook="03_pgd",
                            title="AdvProp's dual-BatchNorm loss, advprop_loss(model, x_clean, "
                                  "x_adv, y)")


def _advprop_case(seed: int):
    """Two identical dual-BN digits CNNs in train mode, clean and perturbed digits, labels."""
    from workbench.defenses import DualBatchNorm2d, digits_cnn

    g = torch.Generator().manual_seed(seed)
    x_clean = torch.rand((8, 1, 16, 16), generator=g)
    x_adv = (x_clean + (torch.rand(x_clean.shape, generator=g) - 0.5) * 0.6).clamp(0, 1)
    y = torch.randint(0, 10, (8,), generator=g)
    models = [digits_cnn(dual_bn=True, seed=seed).train() for _ in range(2)]
    for model in models:  # make the auxiliary halves differ, so routing changes the loss
        with torch.no_grad():
            for layer in model.modules():
                if isinstance(layer, DualBatchNorm2d):
                    layer.aux.weight.fill_(1.5)
                    layer.aux.bias.fill_(0.2)
    return models[0], models[1], x_clean, x_adv, y


def _bn_stats(model, half: str) -> torch.Tensor:
    from workbench.defenses import DualBatchNorm2d

    return torch.cat([getattr(m, half).running_mean for m in model.modules()
                      if isinstance(m, DualBatchNorm2d)])


@advprop_exercise.check("equals clean CE (main BN) + adversarial CE (auxiliary BN)")
def _advprop_value(advprop_loss):
    from workbench.defenses import advprop_loss as reference

    learner_model, reference_model, x_clean, x_adv, y = _advprop_case(30)
    out = as_tensor(advprop_loss(learner_model, x_clean, x_adv, y), "the loss")
    expected = reference(reference_model, x_clean, x_adv, y).detach()
    if out.numel() != 1:
        raise CheckFailed(f"return one number (a scalar tensor), got shape {tuple(out.shape)}")
    if torch.allclose(out.reshape(()), expected, atol=1e-5):
        return
    _, plain_model, *_ = _advprop_case(30)
    both_main = (F.cross_entropy(plain_model(x_clean), y)
                 + F.cross_entropy(plain_model(x_adv), y)).detach()
    if torch.allclose(out.reshape(()), both_main, atol=1e-5):
        raise CheckFailed("the adversarial batch went through the main BatchNorm: run its "
                          "forward pass inside `with auxiliary_bn(model):`")
    raise CheckFailed(f"loss {out.item():.4f}, expected {expected.item():.4f}: the sum of "
                      f"F.cross_entropy on the logits of each batch")


@advprop_exercise.check("each BatchNorm's statistics see only their own kind of image")
def _advprop_stats(advprop_loss):
    from workbench.defenses import advprop_loss as reference

    learner_model, reference_model, x_clean, x_adv, y = _advprop_case(31)
    advprop_loss(learner_model, x_clean, x_adv, y)
    reference(reference_model, x_clean, x_adv, y)
    for half, kind in (("main", "clean"), ("aux", "adversarial")):
        if not torch.allclose(_bn_stats(learner_model, half), _bn_stats(reference_model, half),
                              atol=1e-6):
            raise CheckFailed(f"the {half} BatchNorm's running statistics are not those of the "
                              f"{kind} batch alone: clean images through the main BN, "
                              f"adversarial ones (only) through the auxiliary BN")


@advprop_exercise.check("leaves the model on its main BatchNorm")
def _advprop_restores(advprop_loss):
    from workbench.defenses import DualBatchNorm2d

    learner_model, _, x_clean, x_adv, y = _advprop_case(32)
    advprop_loss(learner_model, x_clean, x_adv, y)
    if any(m.use_aux for m in learner_model.modules() if isinstance(m, DualBatchNorm2d)):
        raise CheckFailed("the auxiliary BatchNorm is still switched on after your function: "
                          "use `with auxiliary_bn(model):`, which switches it back")


@advprop_exercise.check("trains both BatchNorms (the loss keeps its graph)")
def _advprop_gradients(advprop_loss):
    from workbench.defenses import DualBatchNorm2d

    learner_model, _, x_clean, x_adv, y = _advprop_case(33)
    loss = advprop_loss(learner_model, x_clean, x_adv, y)
    if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
        raise CheckFailed("the loss has no gradient: return the tensor itself, not .item() or "
                          "a detached copy, so training can call loss.backward()")
    loss.backward()
    layer = next(m for m in learner_model.modules() if isinstance(m, DualBatchNorm2d))
    for half in ("main", "aux"):
        grad = getattr(layer, half).weight.grad
        if grad is None or grad.abs().sum() == 0:
            raise CheckFailed(f"no gradient reaches the {half} BatchNorm: both batches must "
                              f"contribute to the loss")
