"""Notebook 03's PGD exercises: the L-inf step with its projection, the L2 projection, the
targeted objective and AdvProp's loss. Their checks name the bugs of the DevFest 2024 codelab
this course modernises: the projection added the clipped perturbation instead of assigning it,
epsilon was on the 0-255 scale, and the loss read probabilities as logits. The references are
the package's own functions (:func:`workbench.attacks.pgd_step`,
:func:`~workbench.attacks.project`, :func:`workbench.attacks.core.attack_objective`,
:func:`workbench.defenses.advprop_loss`), not copies of the notebook's solutions.

Each exercise has one diagnosis (``diagnose_step``, ``diagnose_l2``, ``diagnose_objective``,
``diagnose_advprop``): the learner's function is tried against small wrong versions of it, and
every failing check names the mistake it reproduces, so that no check guesses another cause
(``workbench.exercises.core.diagnosed``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workbench.attacks import pgd_step as reference_pgd_linf_step  # norm="linf" by default
from workbench.attacks import project
from workbench.attacks.core import attack_objective
from workbench.exercises.core import (SMALL_IMAGE_SHAPE, CheckFailed, as_tensor, diagnosed,
                                      exercise, known_mistake)


def _case(seed: int, n: int = 4):
    """Clean images x, a current adversarial point inside the ball, a gradient, from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *SMALL_IMAGE_SHAPE), generator=g)
    eps = 8 / 255
    x_adv = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * eps).clamp(0, 1)
    grad = torch.randn(x.shape, generator=g)
    return x, x_adv, grad, eps


def _random_case(seed: int):
    """A case of :func:`_case` with pixels at 0 and at 1 (the clamp matters)."""
    x, x_adv, grad, eps = _case(seed)
    x[:, 0] = 0.0
    x[:, 1] = 1.0
    return x, (x + (x_adv - x).clamp(-eps, eps)).clamp(0, 1), grad, eps


def _half(n: int = 2) -> torch.Tensor:
    return torch.full((n, *SMALL_IMAGE_SHAPE), 0.5)


def _signs(seed: int, n: int = 2) -> torch.Tensor:
    return torch.randn((n, *SMALL_IMAGE_SHAPE), generator=torch.Generator().manual_seed(seed))


step_exercise = exercise("pgd_linf_step", notebook="03_pgd",
                         title="one L-inf PGD step, pgd_linf_step(x_adv, x, grad, alpha=, eps=)",
                         references=("workbench.attacks.pgd.pgd_step",
                                     "workbench.attacks.pgd.ascent_step",
                                     "workbench.attacks.pgd.project"))

ADDED = ("you added the clipped perturbation to x_adv, x_adv + delta, the codelab's bug: it "
         "walks out of the ball. Assign it instead, x + delta, with delta = clamp(x_adv + "
         "alpha * grad.sign() - x, -eps, eps)")
STEP_TOO_SMALL = ("alpha or eps is 255 times too small: both are already in pixel units, like "
                  "the images in [0, 1] (alpha = 2/255 = 0.0078, eps = 8/255 = 0.031); don't "
                  "divide them by 255")
STEP_TOO_LARGE = ("alpha or eps is 255 times too large: both are already in pixel units, like "
                  "the images in [0, 1] (alpha = 2/255 = 0.0078, eps = 8/255 = 0.031); don't "
                  "multiply them by 255")
NO_PROJECTION = ("you did not project: after the step x_adv must come back within eps of x, "
                 "x + clamp(x_adv + alpha * grad.sign() - x, -eps, eps)")
STEP_DESCENDS = ("you stepped against the gradient: PGD ascends the loss, "
                 "x_adv + alpha * grad.sign()")
STEP_NO_SIGN = ("you forgot .sign(): each pixel moved by alpha times its gradient, but an L-inf "
                "step moves every pixel by exactly alpha, x_adv + alpha * grad.sign()")
STEP_NO_CLAMP = "x_adv leaves [0, 1]: clamp it after the projection, (x + delta).clamp(0, 1)"
STEP_IN_PLACE = ("your function changed x in place (x += ..., x.add_(...)): x is the centre of "
                 "the ball and must stay as it is; build a new tensor, (x + delta).clamp(0, 1)")


def _wrong_step(*, sign=True, direction=1, alpha_scale=1.0, eps_scale=1.0, base="x",
                project_=True, clamp=True):
    """The L-inf step with known mistakes: the step ``direction * alpha * sign(grad)`` (or
    without the sign), alpha and eps rescaled, the clipped perturbation added to ``base``
    ("x" is right; "x_adv": the codelab's bug; "stepped": added to the point after the step),
    no projection or no clamp to [0, 1]."""
    def step(x_adv, x, grad, *, alpha, eps):
        stepped = x_adv + direction * alpha * alpha_scale * (grad.sign() if sign else grad)
        if not project_:
            out = stepped
        else:
            delta = (stepped - x).clamp(-eps * eps_scale, eps * eps_scale)
            out = {"x": x, "x_adv": x_adv, "stepped": stepped}[base] + delta
        return out.clamp(0, 1) if clamp else out
    return step


def _step_probe(case):
    def make():
        x_adv, x, grad, alpha, eps = case()
        return (x_adv, x, grad), {"alpha": alpha, "eps": eps}
    return make


STEP_PROBES = (
    # random points inside the ball, pixels at 0 and 1
    _step_probe(lambda: (lambda x, x_adv, g, eps: (x_adv, x, g, 3 / 255, eps))(*_random_case(2))),
    # near the edge of the ball, pushed out by the step
    _step_probe(lambda: (_half() + 0.9 * 8 / 255, _half(), torch.ones_like(_half()), 2 / 255,
                         8 / 255)),
    # from x: alpha * 255 = 0.255 stays inside a large ball, alpha / 255 is still seen
    _step_probe(lambda: (_half(), _half(), _signs(9), 0.001, 0.4)),
    # far outside a small ball: eps * 255 = 0.255 clips what no projection would not
    _step_probe(lambda: (_half() + 0.2 * _signs(10).sign(), _half(), _signs(11), 0.1, 0.001)),
)
STEP_MISTAKES = (
    (ADDED, _wrong_step(base="x_adv")),
    (ADDED, _wrong_step(base="x_adv", clamp=False)),
    (ADDED, _wrong_step(base="stepped")),
    (ADDED, _wrong_step(base="stepped", clamp=False)),
    (STEP_TOO_SMALL, _wrong_step(alpha_scale=1 / 255, eps_scale=1 / 255)),
    (STEP_TOO_SMALL, _wrong_step(alpha_scale=1 / 255)),
    (STEP_TOO_SMALL, _wrong_step(eps_scale=1 / 255)),
    (STEP_TOO_LARGE, _wrong_step(alpha_scale=255)),
    (STEP_TOO_LARGE, _wrong_step(eps_scale=255)),
    (STEP_TOO_LARGE, _wrong_step(alpha_scale=255, eps_scale=255)),
    (NO_PROJECTION, _wrong_step(project_=False)),
    (STEP_DESCENDS, _wrong_step(direction=-1)),
    (STEP_NO_SIGN, _wrong_step(sign=False)),
    (STEP_NO_CLAMP, _wrong_step(clamp=False)),
)


def diagnose_step(pgd_linf_step) -> str | None:
    """The known mistake ``pgd_linf_step`` makes, as the message every failing check of the
    exercise gives, or None when it makes none of them."""
    return known_mistake(pgd_linf_step, STEP_PROBES, STEP_MISTAKES, atol=1e-6)


def _step_fail(pgd_linf_step, message: str) -> CheckFailed:
    return diagnosed(diagnose_step, pgd_linf_step, message)


def _new_point(result, x: torch.Tensor) -> torch.Tensor:
    out = as_tensor(result, "x_adv")
    if out.shape != x.shape:
        raise CheckFailed(f"got shape {tuple(out.shape)}, expected {tuple(x.shape)}")
    return out


@step_exercise.check("returns a tensor shaped like x")
def _step_shape(pgd_linf_step):
    x, x_adv, grad, eps = _case(0)
    _new_point(pgd_linf_step(x_adv.clone(), x.clone(), grad, alpha=2 / 255, eps=eps), x)


@step_exercise.check("projects by assignment onto the eps-ball around x")
def _step_assignment(pgd_linf_step):
    x = _half()
    eps, alpha = 8 / 255, 2 / 255
    x_adv = x + 0.9 * eps  # near the edge of the ball: the step pushes it out
    grad = torch.ones_like(x)
    out = _new_point(pgd_linf_step(x_adv.clone(), x.clone(), grad, alpha=alpha, eps=eps), x)
    if torch.allclose(out, x + eps, atol=1e-6):
        return
    if (out - x).abs().max() > eps + 1e-6:
        raise _step_fail(pgd_linf_step, f"x_adv is {255 * (out - x).abs().max():.1f}/255 from x, "
                                        f"more than eps = 8/255: it must end within eps of x, "
                                        f"x + clamp(x_adv + alpha * grad.sign() - x, -eps, eps)")
    raise _step_fail(pgd_linf_step, "a step that leaves the ball should end exactly on its edge, "
                                    "x + eps")


@step_exercise.check("keeps eps and alpha in pixel units (no 255 scale)")
def _step_units(pgd_linf_step):
    x = _half()
    grad = torch.ones_like(x)
    out = _new_point(pgd_linf_step(x.clone(), x.clone(), grad, alpha=2 / 255, eps=8 / 255), x)
    moved = (out - x).abs().max().item()
    if not abs(moved - 2 / 255) < 1e-6:
        raise _step_fail(pgd_linf_step, f"from x, one step of alpha = 2/255 should move each "
                                        f"pixel by 2/255, got {255 * moved:.2f}/255")


@step_exercise.check("steps along sign(gradient), towards higher loss")
def _step_direction(pgd_linf_step):
    x = _half()
    grad = _signs(1)
    alpha = 2 / 255
    out = _new_point(pgd_linf_step(x.clone(), x.clone(), grad, alpha=alpha, eps=8 / 255), x)
    if torch.allclose(out, x + alpha * grad.sign(), atol=1e-6):
        return
    if torch.allclose(out, x - alpha * grad.sign(), atol=1e-6):
        raise _step_fail(pgd_linf_step, STEP_DESCENDS)
    raise _step_fail(pgd_linf_step, "from x, each pixel should move by exactly alpha, in the "
                                    "direction of its gradient's sign")


@step_exercise.check("keeps pixels in [0, 1] and matches the reference on random cases")
def _step_random(pgd_linf_step):
    for seed in (2, 3, 4):
        x, x_adv, grad, eps = _random_case(seed)
        out = _new_point(pgd_linf_step(x_adv.clone(), x.clone(), grad, alpha=3 / 255, eps=eps), x)
        if out.min() < 0 or out.max() > 1:
            raise CheckFailed(STEP_NO_CLAMP)
        expected = reference_pgd_linf_step(x_adv, x, grad, alpha=3 / 255, eps=eps)
        if not torch.allclose(out, expected, atol=1e-6):
            raise _step_fail(pgd_linf_step, f"differs from the reference on random inputs "
                                            f"(seed {seed})")


@step_exercise.check("leaves x unchanged")
def _step_keeps_x(pgd_linf_step):
    x, x_adv, grad, eps = _random_case(5)
    before = x.clone()
    pgd_linf_step(x_adv.clone(), x, grad, alpha=3 / 255, eps=eps)
    if not torch.equal(x, before):
        raise CheckFailed(STEP_IN_PLACE)


# ----------------------------------------------------------------------------- L2 projection

l2_exercise = exercise("project_l2", notebook="03_pgd",
                       title="projection onto the L2 ball, project_l2(delta, eps)",
                       references=("workbench.attacks.pgd.project",))

ALWAYS_RESCALED = ("every example now has norm eps, also those that were inside the ball: use "
                   "the factor min(1, eps / norm), don't always rescale")
ONE_NORM = ("you used one norm for the whole batch: compute one per example, "
            "delta.flatten(1).norm(dim=1)")
CLAMPED = ("you clamped each value to [-eps, eps], which is the L-inf projection: for L2 scale "
           "the whole example by min(1, eps / norm)")


def _norms(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def _deltas(seed: int, norms) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    delta = torch.randn((len(norms), *SMALL_IMAGE_SHAPE), generator=generator)
    return delta / _norms(delta).view(-1, 1, 1, 1) * torch.tensor(norms).view(-1, 1, 1, 1)


def _per_example_factor(factor):
    def project_l2(delta, eps):
        return delta * factor(eps, _norms(delta).clamp_min(1e-12)).view(-1, 1, 1, 1)
    return project_l2


def _batch_factor(factor):
    def project_l2(delta, eps):
        return delta * factor(eps, delta.flatten().norm().clamp_min(1e-12))
    return project_l2


L2_PROBES = (
    lambda: ((_deltas(5, [0.5, 0.5, 0.5]), 1.0), {}),
    lambda: ((_deltas(6, [2.0, 0.5, 5.0]), 1.0), {}),
    lambda: ((_deltas(7, [0.1, 0.4]), 0.3), {}),
)
L2_MISTAKES = (
    (ALWAYS_RESCALED, _per_example_factor(lambda eps, norm: eps / norm)),
    (ONE_NORM, _batch_factor(lambda eps, norm: torch.clamp(eps / norm, max=1.0))),
    (ONE_NORM, _batch_factor(lambda eps, norm: eps / norm)),
    (CLAMPED, lambda delta, eps: delta.clamp(-eps, eps)),
)


def diagnose_l2(project_l2) -> str | None:
    """The known mistake ``project_l2`` makes, as the message every failing check of the
    exercise gives, or None when it makes none of them."""
    return known_mistake(project_l2, L2_PROBES, L2_MISTAKES, atol=1e-6)


def _l2_fail(project_l2, message: str) -> CheckFailed:
    return diagnosed(diagnose_l2, project_l2, message)


@l2_exercise.check("leaves a perturbation inside the ball unchanged")
def _l2_inside(project_l2):
    delta = _deltas(5, [0.5, 0.5, 0.5])
    out = as_tensor(project_l2(delta.clone(), 1.0), "the projected delta")
    if not (out.shape == delta.shape and torch.allclose(out, delta, atol=1e-6)):
        raise _l2_fail(project_l2, "a perturbation with norm 0.5 < eps = 1 changed: only shrink "
                                   "those whose norm exceeds eps (factor min(1, eps / norm))")


@l2_exercise.check("rescales each example outside the ball to norm eps, same direction")
def _l2_outside(project_l2):
    delta = _deltas(6, [2.0, 0.5, 5.0])
    out = as_tensor(project_l2(delta.clone(), 1.0), "the projected delta")
    expected = project(delta, 1.0, "l2")
    if out.shape != delta.shape:
        raise CheckFailed(f"got shape {tuple(out.shape)}, expected {tuple(delta.shape)}")
    if not torch.allclose(out, expected, atol=1e-5):
        raise _l2_fail(project_l2, f"norms after projection {_norms(out).tolist()}, expected "
                                   f"{_norms(expected).tolist()}")


@l2_exercise.check("handles a zero perturbation without NaN")
def _l2_zero(project_l2):
    out = as_tensor(project_l2(torch.zeros((2, *SMALL_IMAGE_SHAPE)), 1.0), "the projected delta")
    if torch.isnan(out).any() or out.abs().max() > 0:
        raise CheckFailed("a zero perturbation gave NaN or non-zero values: guard the division, "
                          "norm.clamp_min(1e-12)")


# ----------------------------------------------------------------------------- targeted objective

targeted_exercise = exercise("targeted_objective", notebook="03_pgd",
                             title="the targeted objective, targeted_objective(logits, target)",
                             references=("workbench.attacks.core.attack_objective",))

OBJECTIVE_ON_PROBABILITIES = (
    "you passed probabilities (softmax) to F.cross_entropy, which takes logits and applies the "
    "softmax itself (the codelab's bug): the objective hardly changes however unlikely the "
    "target is, and its gradient almost vanishes; use -F.cross_entropy(logits, target, "
    "reduction='none')")
OBJECTIVE_SIGN = ("PGD ascends this objective: ascending the target's cross-entropy pushes away "
                  "from the target; negate it")
OBJECTIVE_MEAN = ("you returned the batch's mean: return one value per example, "
                  "F.cross_entropy(..., reduction='none')")


def _reference_objective(logits, target):
    return attack_objective(logits, target, targeted=True)


def _confident_logits():
    """Logits sure of another class: the target's logit is -8, another's +8."""
    logits = torch.zeros((4, 10))
    target = torch.tensor([3, 0, 7, 9])
    logits[torch.arange(4), target] = -8.0
    logits[torch.arange(4), torch.tensor([5, 2, 1, 4])] = 8.0
    return logits, target


def _random_logits():
    g = torch.Generator().manual_seed(8)
    return torch.randn((6, 10), generator=g) * 3, torch.randint(0, 10, (6,), generator=g)


def _wrong_objective(*, sign=-1, probabilities=False, mean=False):
    """The targeted objective with known mistakes, flattened: the cross-entropy of the target
    not negated, of probabilities instead of logits, or averaged over the batch."""
    def targeted_objective(logits, target):
        return sign * F.cross_entropy(logits.softmax(1) if probabilities else logits, target,
                                      reduction="mean" if mean else "none").flatten()
    return targeted_objective


OBJECTIVE_PROBES = (lambda: (_random_logits(), {}), lambda: (_confident_logits(), {}))
OBJECTIVE_MISTAKES = (
    (OBJECTIVE_ON_PROBABILITIES, _wrong_objective(probabilities=True)),
    (OBJECTIVE_ON_PROBABILITIES, _wrong_objective(probabilities=True, mean=True)),
    (OBJECTIVE_SIGN, _wrong_objective(sign=1)),
    (OBJECTIVE_SIGN, _wrong_objective(sign=1, mean=True)),
    (OBJECTIVE_MEAN, _wrong_objective(mean=True)),
)


def diagnose_objective(targeted_objective) -> str | None:
    """The known mistake ``targeted_objective`` makes, as the message every failing check of
    the exercise gives, or None when it makes none of them."""
    def flattened(logits, target):  # (N, 1) is one value per example too
        return torch.as_tensor(targeted_objective(logits, target)).flatten()

    return known_mistake(flattened, OBJECTIVE_PROBES, OBJECTIVE_MISTAKES)


def _objective_fail(targeted_objective, message: str) -> CheckFailed:
    return diagnosed(diagnose_objective, targeted_objective, message)


@targeted_exercise.check("returns one value per example")
def _targeted_shape(targeted_objective):
    logits = torch.randn((5, 10), generator=torch.Generator().manual_seed(7))
    out = as_tensor(targeted_objective(logits, torch.arange(5)), "the objective")
    if out.shape != (5,):
        raise CheckFailed(f"got shape {tuple(out.shape)}: return one value per example, "
                          f"F.cross_entropy(..., reduction='none')")


@targeted_exercise.check("is minus the cross-entropy of the target, from logits")
def _targeted_value(targeted_objective):
    logits, target = _random_logits()
    out = as_tensor(targeted_objective(logits, target), "the objective").flatten()
    expected = _reference_objective(logits, target)
    if not (out.shape == expected.shape and torch.allclose(out, expected, atol=1e-5)):
        raise _objective_fail(targeted_objective, "expected -F.cross_entropy(logits, target, "
                                                  "reduction='none')")


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
        raise _objective_fail(targeted_objective, f"objective {values} should rise as the "
                                                  f"target's logit rises")


@targeted_exercise.check("takes the cross-entropy of the logits, not of probabilities")
def _targeted_from_logits(targeted_objective):
    logits, target = _confident_logits()
    out = as_tensor(targeted_objective(logits, target), "the objective").flatten()
    expected = _reference_objective(logits, target)
    if not (out.shape == expected.shape and torch.allclose(out, expected, atol=1e-4)):
        raise _objective_fail(targeted_objective, f"where the model is sure of another class "
                                                  f"(target logit -8, another +8) the objective "
                                                  f"is {out.tolist()}, expected about -16 each")


# ----------------------------------------------------------------------------- AdvProp

advprop_exercise = exercise("advprop_loss", notebook="03_pgd",
                            title="AdvProp's dual-BatchNorm loss, advprop_loss(model, x_clean, "
                                  "x_adv, y)",
                            references=("workbench.defenses.advprop.advprop_loss",))

ALL_MAIN = ("the adversarial batch went through the main BatchNorm: run its forward pass inside "
            "`with auxiliary_bn(model):`")
SWAPPED = ("the batches are swapped: the clean batch went through the auxiliary BatchNorm and "
           "the adversarial one through the main BatchNorm; only the adversarial forward pass "
           "goes inside `with auxiliary_bn(model):`")
ALL_AUX = ("the clean batch went through the auxiliary BatchNorm too: only the adversarial "
           "forward pass goes inside `with auxiliary_bn(model):`")
ONE_BATCH = ("the loss has only one of the two batches: return CE(model(x_clean), y) plus "
             "CE(model(x_adv), y) computed inside `with auxiliary_bn(model):`")
AVERAGED = "you averaged the two cross-entropies: AdvProp's loss is their sum"
ADVPROP_ON_PROBABILITIES = ("you passed probabilities (softmax) to F.cross_entropy, which takes "
                            "logits and applies the softmax itself: use "
                            "F.cross_entropy(model(x), y) on what the model returns")


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


def _wrong_advprop(*, clean_aux=False, adv_aux=True, clean=True, adversarial=True, mean=False,
                   probabilities=False):
    """AdvProp's loss with known mistakes: each batch through the main or the auxiliary BN,
    one batch left out, the mean instead of the sum, probabilities in the cross-entropy."""
    from workbench.defenses import auxiliary_bn

    def loss_of(model, x, y, aux):
        if aux:
            with auxiliary_bn(model):
                logits = model(x)
        else:
            logits = model(x)
        return F.cross_entropy(logits.softmax(1) if probabilities else logits, y)

    def advprop_loss(model, x_clean, x_adv, y):
        terms = ([loss_of(model, x_clean, y, clean_aux)] if clean else []) + (
            [loss_of(model, x_adv, y, adv_aux)] if adversarial else [])
        return sum(terms) / (len(terms) if mean else 1)
    return advprop_loss


ADVPROP_PROBES = (lambda: ((lambda m, _, xc, xa, y: (m, xc, xa, y))(*_advprop_case(34)), {}),)
ADVPROP_MISTAKES = (
    (ALL_MAIN, _wrong_advprop(adv_aux=False)),
    (SWAPPED, _wrong_advprop(clean_aux=True, adv_aux=False)),
    (ALL_AUX, _wrong_advprop(clean_aux=True)),
    (ONE_BATCH, _wrong_advprop(adversarial=False)),
    (ONE_BATCH, _wrong_advprop(clean=False)),
    (AVERAGED, _wrong_advprop(mean=True)),
    (ADVPROP_ON_PROBABILITIES, _wrong_advprop(probabilities=True)),
)


def diagnose_advprop(advprop_loss) -> str | None:
    """The known mistake ``advprop_loss`` makes, as the message every failing check of the
    exercise gives, or None when it makes none of them."""
    return known_mistake(advprop_loss, ADVPROP_PROBES, ADVPROP_MISTAKES)


def _advprop_fail(advprop_loss, message: str) -> CheckFailed:
    return diagnosed(diagnose_advprop, advprop_loss, message)


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
    if not torch.allclose(out.reshape(()), expected, atol=1e-5):
        raise _advprop_fail(advprop_loss, f"loss {out.item():.4f}, expected "
                                          f"{expected.item():.4f}: the sum of F.cross_entropy "
                                          f"on the logits of each batch")


@advprop_exercise.check("each BatchNorm's statistics see only their own kind of image")
def _advprop_stats(advprop_loss):
    from workbench.defenses import advprop_loss as reference

    learner_model, reference_model, x_clean, x_adv, y = _advprop_case(31)
    advprop_loss(learner_model, x_clean, x_adv, y)
    reference(reference_model, x_clean, x_adv, y)
    for half, kind in (("main", "clean"), ("aux", "adversarial")):
        if not torch.allclose(_bn_stats(learner_model, half), _bn_stats(reference_model, half),
                              atol=1e-6):
            raise _advprop_fail(advprop_loss, f"the {half} BatchNorm's running statistics are "
                                              f"not those of the {kind} batch alone: clean "
                                              f"images through the main BN, adversarial ones "
                                              f"(only) through the auxiliary BN")


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
            raise _advprop_fail(advprop_loss, f"no gradient reaches the {half} BatchNorm: both "
                                              f"batches must contribute to the loss")
