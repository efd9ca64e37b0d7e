"""Notebook 02's exercises: ``fgsm`` and ``sweep_eps``, with checks that name the mistake.

Checks use closed-form cases (for a linear model over pixels the FGSM step is known exactly),
random small networks compared with the reference, and the real lite ImageNet model, so a
hard-coded answer cannot pass. The references are the package's own functions, not copies of
the notebook's solutions: :func:`workbench.attacks.fgsm` and
:func:`workbench.defenses.evaluation.accuracy_and_confidence_curve` (``sweep_eps``).

Each exercise has one diagnosis (:func:`diagnose_fgsm`, :func:`diagnose_sweep`): the learner's
function is tried against small wrong versions (no ``.sign()``, probabilities in the
cross-entropy, eps in 0-255 units, ...) and every failing check names the mistake it
reproduces, so that no check guesses another cause (``workbench.exercises.core.diagnosed``).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from workbench.attacks import fgsm as reference_fgsm
from workbench.defenses.evaluation import accuracy_and_confidence_curve as reference_sweep_eps
from workbench.exercises.core import (SMALL_IMAGE_SHAPE, CheckFailed, Spy, as_adversarial,
                                      as_tensor, diagnosed, exercise, known_mistake)

NUM_PIXELS = math.prod(SMALL_IMAGE_SHAPE)


def linear_model(weights: torch.Tensor) -> nn.Module:
    """Logits ``W @ flatten(x)``: weights (num_classes, NUM_PIXELS). Its input gradient is
    known in closed form, so the exact FGSM answer is too."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(NUM_PIXELS, weights.shape[0], bias=False))
    with torch.no_grad():
        model[1].weight.copy_(weights)
    return model.eval()


def small_net(seed: int, num_classes: int = 5, dropout: float = 0.5) -> nn.Module:
    """A seeded conv net with BatchNorm and Dropout, so train and eval mode differ."""
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(dropout),
        nn.Flatten(), nn.Linear(8 * 16, num_classes))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
        model[1].running_mean.copy_(torch.randn(8, generator=generator) * 0.1)
        model[1].running_var.copy_(torch.rand(8, generator=generator) + 0.5)
    return model.eval()


def _random_images(seed: int, n: int = 4) -> torch.Tensor:
    return torch.rand((n, *SMALL_IMAGE_SHAPE), generator=torch.Generator().manual_seed(seed))


@functools.lru_cache(maxsize=1)
def _lite_case():
    """The lite ImageNet model and one photo with its label (loaded once per process)."""
    from workbench.data import sample_image
    from workbench.models import load_classifier

    model = load_classifier("mobilenet_v2", mode="lite", device="cpu")
    image, label = sample_image("coffee")
    return model, image[None], torch.tensor([label])


# ----------------------------------------------------------------------------- fgsm

fgsm_exercise = exercise("fgsm", notebook="02_fgsm", title="FGSM, fgsm(model, x, y, eps)",
                         references=("workbench.attacks.fgsm.fgsm",
                                     "workbench.attacks.fgsm.fgsm_direction"))


def _closed_form_case(seed: int):
    """A 2-class linear model, x = 0.5 everywhere (no clamping), and the labels."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn((2, NUM_PIXELS), generator=generator)
    x = torch.full((2, *SMALL_IMAGE_SHAPE), 0.5)
    y = torch.tensor([0, 1])
    # d CE(y) / dx = p_other * (w_other - w_y), so sign(grad) = sign(w_other - w_y).
    away = torch.stack([(weights[1] - weights[0]).sign(), (weights[0] - weights[1]).sign()])
    return linear_model(weights), x, y, away.view(2, *SMALL_IMAGE_SHAPE)


def _confident_case():
    """A 5-class linear model sure that each image is *not* its label (y is its least likely
    class), images in [0.25, 0.75] (no clamping at eps = 0.05). The cross-entropy of the
    logits has a strong gradient there; the cross-entropy of probabilities, computed by
    mistake, points elsewhere for about a quarter of the pixels (with two classes, as in the
    closed-form cases, both have the same sign)."""
    generator = torch.Generator().manual_seed(41)
    model = linear_model(torch.randn((5, NUM_PIXELS), generator=generator) * 2)
    x = 0.25 + 0.5 * torch.rand((4, *SMALL_IMAGE_SHAPE), generator=generator)
    with torch.no_grad():
        y = model(x).argmin(1)
    return model, x, y


def _batchnorm_case():
    """A BatchNorm net without Dropout (train mode is deterministic, and differs from eval), with
    pixels at 0 and at 1 (the clamp matters), and labels."""
    x = _random_images(40, n=6)
    x[:, 0] = 0.0
    x[:, 1] = 1.0
    y = torch.randint(0, 5, (6,), generator=torch.Generator().manual_seed(40))
    return small_net(40, dropout=0.0), x, y


# The known mistakes, each the message every failing check gives for it.
RETURNS_INPUT = ("x_adv equals x in every case: you returned the input unchanged; add "
                 "eps * grad.sign() to x")
NO_SIGN = ("you forgot .sign(): each pixel moved by eps times its gradient, but FGSM moves every "
           "pixel by exactly eps, x + eps * grad.sign()")
PROBABILITIES = ("you passed probabilities (softmax) to F.cross_entropy, which takes logits and "
                 "applies the softmax itself: use F.cross_entropy(model(x), y) on what the model "
                 "returns")
DESCENDS = ("you stepped against the gradient, which lowers the loss of the true class: for an "
            "untargeted attack use x + eps * grad.sign()")
TARGETED_AWAY = ("with targeted=True you stepped away from the target: the sign flips, x_adv = "
                 "x - eps * grad.sign() where grad is of CE(model(x), target)")
BOTH_FLIPPED = ("both directions are swapped: untargeted you stepped against the gradient (use "
                "x + eps * grad.sign()), and with targeted=True you stepped away from the target "
                "(use x - eps * grad.sign())")
NO_CLAMP = "x_adv leaves [0, 1]: clamp it to the image range with .clamp(0, 1)"
IN_PLACE = ("your function changed x in place (x += ..., x.add_(...), x.data = ...): build a new "
            "tensor, e.g. x_adv = x + eps * grad.sign()")
TRAIN_LEFT = ("the model is in train mode after your function: don't call model.train() (input "
              "gradients need no train mode); BatchNorm and Dropout would then behave "
              "differently for everyone using the model")
TRAIN_GRADIENT = ("you took the gradient with the model in train mode (BatchNorm used the "
                  "batch's statistics): attack the model in eval mode, as it is used")
TOO_SMALL = ("the step is 255 times too small: eps is already in pixel units, like the images "
             "in [0, 1] (2/255 = 0.0078 moves a pixel by 2 of its 255 levels); don't divide it "
             "by 255")
TOO_LARGE = ("the step is 255 times too large: eps is already in pixel units, like the images "
             "in [0, 1] (2/255 = 0.0078 moves a pixel by 2 of its 255 levels); don't multiply "
             "it by 255")


def _input_gradient(model, x, y, *, probabilities=False, train=False) -> torch.Tensor:
    """The gradient of CE(model(x), y) with respect to x; of CE(softmax(model(x)), y) with
    ``probabilities``; with the model in train mode when ``train`` (back in eval afterwards)."""
    x = x.detach().clone().requires_grad_(True)
    model.train(train)
    try:
        logits = model(x)
        loss = F.cross_entropy(logits.softmax(1) if probabilities else logits, y)
        (grad,) = torch.autograd.grad(loss, x)
    finally:
        model.eval()
    return grad


def _wrong_fgsm(*, sign=True, probabilities=False, train=False, untargeted=1, targeted_=-1,
                clamp=True):
    """FGSM with known mistakes: ``x + direction * eps * sign(grad)``, the direction
    ``untargeted`` or ``targeted_`` (right: +1 and -1), without the sign, the clamp, or with
    the gradient of the wrong loss or mode."""
    def fgsm(model, x, y, eps, *, targeted=False):
        grad = _input_gradient(model, x, y, probabilities=probabilities, train=train)
        out = x + (targeted_ if targeted else untargeted) * eps * (grad.sign() if sign else grad)
        return out.clamp(0, 1) if clamp else out
    return fgsm


def _probe(case, eps: float, targeted: bool):
    def make():
        model, x, y = case()[:3]
        return (model, x, y, eps), {"targeted": targeted}
    return make


FGSM_PROBES = (
    _probe(lambda: _closed_form_case(1), 0.1, False),
    _probe(lambda: _closed_form_case(4), 0.1, True),
    _probe(_batchnorm_case, 0.1, False),
    _probe(_batchnorm_case, 0.1, True),
    _probe(_confident_case, 0.05, False),
)
FGSM_MISTAKES = (
    (RETURNS_INPUT, lambda model, x, y, eps, targeted=False: x.clone()),
    (PROBABILITIES, _wrong_fgsm(probabilities=True)),
    (TRAIN_GRADIENT, _wrong_fgsm(train=True)),
    (NO_SIGN, _wrong_fgsm(sign=False)),
    (DESCENDS, _wrong_fgsm(untargeted=-1)),
    (TARGETED_AWAY, _wrong_fgsm(targeted_=1)),
    (BOTH_FLIPPED, _wrong_fgsm(untargeted=-1, targeted_=1)),
    (NO_CLAMP, _wrong_fgsm(clamp=False)),
)


def _moved(fgsm, eps: float) -> torch.Tensor:
    """How far each pixel moved, on a closed-form case where nothing is clamped."""
    model, x, y, _ = _closed_form_case(1)
    return (as_adversarial(fgsm(model, x.clone(), y, eps), x) - x).abs()


def diagnose_fgsm(fgsm) -> str | None:
    """The known mistake ``fgsm`` makes, as the message every failing check of the exercise
    gives, or None when it makes none of them."""
    model, x, y = _batchnorm_case()
    fgsm(model, x, y, 0.1)
    if model.training:
        return TRAIN_LEFT
    found = known_mistake(fgsm, FGSM_PROBES, FGSM_MISTAKES)
    if found:
        return found
    # eps taken for 0-255 units: every pixel moves by eps / 255 or eps * 255, whatever else.
    for eps, moved, message in ((0.1, 0.1 / 255, TOO_SMALL), (0.001, 0.001 * 255, TOO_LARGE)):
        distance = _moved(fgsm, eps)
        if torch.allclose(distance, torch.full_like(distance, moved), rtol=1e-2, atol=0):
            return message
    return None


def _fail(fgsm, message: str) -> CheckFailed:
    return diagnosed(diagnose_fgsm, fgsm, message)


@fgsm_exercise.check("untargeted: every pixel moves by eps along sign(gradient) (linear model)")
def _untargeted_closed_form(fgsm):
    for seed, eps in ((1, 0.1), (2, 0.03), (3, 0.2)):
        model, x, y, away = _closed_form_case(seed)
        out = as_adversarial(fgsm(model, x.clone(), y, eps), x)
        if torch.allclose(out, x + eps * away, atol=1e-5):
            continue
        if torch.allclose(out, x, atol=1e-7):
            raise _fail(fgsm, "x_adv equals x: no pixel moved; add eps * grad.sign() to x")
        moved = (out - x).abs()
        if not torch.allclose(moved, torch.full_like(x, eps), atol=1e-5):
            raise _fail(fgsm, f"pixels moved by {moved.min():.4f} to {moved.max():.4f}, not all "
                              f"by exactly eps = {eps}: each moves by eps along the sign of its "
                              f"gradient")
        raise _fail(fgsm, "every pixel moved by eps, but not in the direction that raises the "
                          "loss of the true label y: x + eps * grad.sign(), grad of "
                          "F.cross_entropy(model(x), y)")


@fgsm_exercise.check("targeted: steps against the gradient of the target's loss (linear model)")
def _targeted_closed_form(fgsm):
    for seed, eps in ((4, 0.1), (5, 0.05)):
        model, x, y, away = _closed_form_case(seed)
        # With y the target, the step that lowers CE(target) is -eps * sign(grad) = -eps * away.
        out = as_adversarial(fgsm(model, x.clone(), y, eps, targeted=True), x)
        if torch.allclose(out, x - eps * away, atol=1e-5):
            continue
        if torch.allclose(out, x + eps * away, atol=1e-5):
            raise _fail(fgsm, TARGETED_AWAY)
        raise _fail(fgsm, "targeted=True should give x - eps * sign(grad of CE(model(x), y)) "
                          "with y the target classes")


@fgsm_exercise.check("keeps eps in pixel units (no 255 scale)")
def _pixel_units(fgsm):
    for eps in (0.1, 0.001):
        moved = _moved(fgsm, eps)
        if not torch.allclose(moved, torch.full_like(moved, eps), rtol=1e-3, atol=1e-7):
            raise _fail(fgsm, f"at eps = {eps} the pixels moved by {moved.min():.3g} to "
                              f"{moved.max():.3g}: eps is in pixel units and every pixel moves "
                              f"by exactly eps")


@fgsm_exercise.check("takes the cross-entropy of the logits, not of probabilities")
def _from_logits(fgsm):
    model, x, y = _confident_case()
    out = as_adversarial(fgsm(model, x.clone(), y, 0.05), x)
    agree = torch.isclose(out, reference_fgsm(model, x, y, 0.05), atol=1e-5).float().mean()
    if agree < 1:
        raise _fail(fgsm, f"only {100 * agree:.1f}% of pixels match FGSM on a linear model that "
                          f"is sure the images are not their labels y")


@fgsm_exercise.check("keeps every pixel in [0, 1]")
def _clamped(fgsm):
    model = small_net(6)
    x = _random_images(6)
    x[:, 0] = 0.0
    x[:, 1] = 1.0
    out = as_adversarial(fgsm(model, x.clone(), torch.tensor([0, 1, 2, 3]), 0.25), x)
    if out.min() < 0 or out.max() > 1:
        raise CheckFailed(f"x_adv has values from {out.min():.3f} to {out.max():.3f}: clamp it "
                          f"to the image range with .clamp(0, 1)")


@fgsm_exercise.check("leaves x unchanged and attacks the model in eval mode, leaving it there")
def _no_side_effects(fgsm):
    model = small_net(8, dropout=0.0)  # BatchNorm only: train mode is deterministic too
    x, y = _random_images(8), torch.tensor([0, 1, 2, 3])
    before = x.clone()
    out = as_adversarial(fgsm(model, x, y, 0.1), x)
    if not torch.equal(x.detach(), before):
        raise CheckFailed(IN_PLACE)
    if model.training:
        raise CheckFailed(TRAIN_LEFT)
    in_eval = reference_fgsm(model, before, y, 0.1)
    in_train = _wrong_fgsm(train=True)(model, before, y, 0.1)
    if torch.allclose(out, in_train, atol=1e-5) and not torch.allclose(out, in_eval, atol=1e-5):
        raise CheckFailed(TRAIN_GRADIENT)


@fgsm_exercise.check("matches the reference on random networks and images")
def _random_cases(fgsm):
    for seed in (10, 11, 12):
        model = small_net(seed)
        x = _random_images(seed, n=6)
        y = torch.randint(0, 5, (6,), generator=torch.Generator().manual_seed(seed))
        eps = 0.02 + 0.05 * (seed - 10)
        out = as_adversarial(fgsm(model, x.clone(), y, eps), x)
        agree = torch.isclose(out, reference_fgsm(model, x, y, eps), atol=1e-5).float().mean()
        if agree < 0.999:
            raise _fail(fgsm, f"only {100 * agree:.1f}% of pixels match FGSM on a random network "
                              f"(seed {seed}, eps {eps:.2f}): compare with the formula above")


@fgsm_exercise.check("fools the real lite ImageNet model like the reference does")
def _lite_model(fgsm):
    model, x, y = _lite_case()
    eps = 2 / 255
    model.eval()  # shared across checks: undo whatever a previous learner function did
    try:
        out = as_adversarial(fgsm(model, x.clone(), y, eps), x)
    finally:
        model.eval()
    agree = torch.isclose(out, reference_fgsm(model, x, y, eps), atol=1e-5).float().mean()
    if agree < 0.99:
        raise _fail(fgsm, f"on the lite model only {100 * agree:.1f}% of pixels match the "
                          f"reference FGSM at eps = 2/255")
    with torch.no_grad():
        before = model(x).softmax(1)[0, y].item()
        after = model(out).softmax(1)[0, y].item()
    if not after < before:
        raise _fail(fgsm, f"the true class's probability went from {before:.3f} to "
                          f"{after:.3f}: it should drop")


# ----------------------------------------------------------------------------- sweep_eps

sweep_exercise = exercise("sweep_eps", notebook="02_fgsm",
                          title="accuracy and confidence vs epsilon, sweep_eps(...)",
                          references=(
                              "workbench.defenses.evaluation.accuracy_and_confidence_curve",
                              "workbench.defenses.evaluation.accuracy_and_confidence"))

SWEEP_IGNORES_ATTACK = ("the attack was never called: call attack(model, x, y, eps) once per "
                        "eps (not fgsm directly)")
SWEEP_TOO_SMALL = ("the attack got every eps 255 times too small (eps / 255): the epsilons are "
                   "already in pixel units, like the images in [0, 1]; pass each one to "
                   "attack(model, x, y, eps) as it is")
SWEEP_TOO_LARGE = ("the attack got every eps 255 times too large (eps * 255): the epsilons are "
                   "already in pixel units, like the images in [0, 1]; pass each one to "
                   "attack(model, x, y, eps) as it is")
SWEEP_TRAIN_LEFT = ("the model is in train mode after your function: don't call model.train(); "
                    "evaluate it in eval mode, as it is used")
SWEEP_PERCENT = "accuracy is in percent: report a fraction, (pred == y).float().mean()"
SWEEP_CLEAN = "accuracy stays at its clean value: evaluate the model on x_adv, not on x"
SWEEP_TOP_CLASS = ("confidence is the mean probability of the predicted class; use the "
                   "probability of the true class y: probs.gather(1, y[:, None])")


def _sweep_outputs(result, n: int):
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise CheckFailed("return a pair (accuracy, confidence), e.g. "
                          "`return torch.tensor(accuracy), torch.tensor(confidence)`")
    accuracy, confidence = (torch.as_tensor(r, dtype=torch.float32).flatten() for r in result)
    if len(accuracy) != n or len(confidence) != n:
        raise CheckFailed(f"expected one accuracy and one confidence per epsilon ({n}), got "
                          f"{len(accuracy)} and {len(confidence)}")
    return accuracy, confidence


def _top_class_confidence(model, x, y, epsilons) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([model(reference_fgsm(model, x, y, e)).softmax(1).max(1).values.mean()
                            for e in epsilons])


def _fgsm_at_any_scale(model, x, y, eps):
    """FGSM with eps clamped to [0, 1], so that an eps 255 times too large still runs."""
    return reference_fgsm(model, x, y, min(max(float(eps), 0.0), 1.0))


def diagnose_sweep(sweep_eps) -> str | None:
    """The known mistake ``sweep_eps`` makes, as the message every failing check of the
    exercise gives, or None when it makes none of them."""
    model = small_net(25)
    x = _random_images(25, n=8)
    with torch.no_grad():
        y = model(x).argmax(1)  # all correct at eps = 0
    epsilons = [0.0, 0.02, 0.1, 0.3]
    attack = Spy(_fgsm_at_any_scale)  # its calls say what went wrong
    result = sweep_eps(model, x, y, epsilons, attack)
    calls = attack.calls
    if not calls:
        return SWEEP_IGNORES_ATTACK
    if len(calls) == len(epsilons):
        asked = torch.tensor(epsilons)
        if torch.allclose(torch.tensor(calls), asked / 255, rtol=1e-4, atol=0):
            return SWEEP_TOO_SMALL
        if torch.allclose(torch.tensor(calls), asked * 255, rtol=1e-4, atol=0):
            return SWEEP_TOO_LARGE
    if model.training:
        return SWEEP_TRAIN_LEFT
    if calls != epsilons:
        return None
    accuracy, confidence = _sweep_outputs(result, len(epsilons))
    ref_acc, ref_conf = reference_sweep_eps(model, x, y, epsilons, reference_fgsm)
    if not torch.allclose(accuracy, ref_acc, atol=1e-6):
        if torch.allclose(accuracy, 100 * ref_acc, atol=1e-4):
            return SWEEP_PERCENT
        if torch.allclose(accuracy, torch.ones_like(accuracy)):  # accuracy on x: all correct
            return SWEEP_CLEAN
    if not torch.allclose(confidence, ref_conf, atol=1e-4) and torch.allclose(
            confidence, _top_class_confidence(model, x, y, epsilons), atol=1e-4):
        return SWEEP_TOP_CLASS
    return None


def _sweep_fail(sweep_eps, message: str) -> CheckFailed:
    return diagnosed(diagnose_sweep, sweep_eps, message)


def _run_sweep(sweep_eps, *args):
    """``sweep_eps(*args)``; when it raises (eps * 255 makes the attack refuse its budget), the
    diagnosis's message if it names a known mistake, else the error itself."""
    try:
        return sweep_eps(*args)
    except (CheckFailed, NotImplementedError):  # a time-out is a CheckFailed too
        raise
    except Exception as err:
        failure = _sweep_fail(sweep_eps, "")
        if str(failure):
            raise failure from err
        raise


@sweep_exercise.check("returns one accuracy and one confidence per epsilon")
def _sweep_shape(sweep_eps):
    model, x, y = small_net(20), _random_images(20), torch.tensor([0, 1, 2, 3])
    _sweep_outputs(_run_sweep(sweep_eps, model, x, y, [0.0, 0.05, 0.1], reference_fgsm), 3)


@sweep_exercise.check("calls the attack it is given, once per epsilon, in order")
def _sweep_uses_attack(sweep_eps):
    spy = Spy()  # returns x unchanged
    epsilons = [0.0, 0.01, 0.03]
    sweep_eps(small_net(21), _random_images(21), torch.tensor([0, 1, 2, 3]), epsilons, spy)
    calls = spy.calls
    if calls != epsilons:
        raise _sweep_fail(sweep_eps, SWEEP_IGNORES_ATTACK if not calls else (
            f"the attack was called with eps {calls}, expected {epsilons}: call "
            f"attack(model, x, y, eps) once per eps, in order"))


@sweep_exercise.check("accuracy and confidence match the reference on random networks")
def _sweep_values(sweep_eps):
    epsilons = [0.0, 0.02, 0.1, 0.3]
    for seed in (22, 23):
        model = small_net(seed)
        x = _random_images(seed, n=8)
        with torch.no_grad():
            y = model(x).argmax(1)  # all correct at eps = 0, so accuracy must fall from 1
        accuracy, confidence = _sweep_outputs(
            _run_sweep(sweep_eps, model, x, y, epsilons, reference_fgsm), len(epsilons))
        ref_acc, ref_conf = reference_sweep_eps(model, x, y, epsilons, reference_fgsm)
        if accuracy.max() > 1:
            raise _sweep_fail(sweep_eps, f"accuracy {accuracy.tolist()} goes above 1: report a "
                                         f"fraction, (pred == y).float().mean()")
        if not torch.allclose(accuracy, ref_acc, atol=1e-6):
            raise _sweep_fail(sweep_eps, f"accuracy {accuracy.tolist()} differs from the "
                                         f"reference {ref_acc.tolist()}")
        if not torch.allclose(confidence, ref_conf, atol=1e-4):
            raise _sweep_fail(sweep_eps, f"confidence {confidence.tolist()} differs from the "
                                         f"reference {ref_conf.tolist()}: the mean softmax "
                                         f"probability of y")


@sweep_exercise.check("leaves the model in eval mode")
def _sweep_eval(sweep_eps):
    model = small_net(24)
    _run_sweep(sweep_eps, model, _random_images(24), torch.tensor([0, 1, 2, 3]), [0.0, 0.1],
               reference_fgsm)
    if model.training:
        raise CheckFailed(SWEEP_TRAIN_LEFT)
