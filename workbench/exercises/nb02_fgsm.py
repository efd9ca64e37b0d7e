"""Notebook 02's exercises: ``fgsm`` and ``sweep_eps``, with checks that name the mistake.

Checks use closed-form cases (for a linear model over pixels the FGSM step is known exactly),
random small networks compared with the reference, and the real lite ImageNet model, so a
hard-coded answer cannot pass. The references are the package's own functions, not copies of
the notebook's solutions: :func:`workbench.attacks.fgsm` and
:func:`workbench.defenses.evaluation.accuracy_and_confidence_curve` (``sweep_eps``).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from workbench.attacks import fgsm as reference_fgsm
from workbench.defenses.evaluation import accuracy_and_confidence_curve as reference_sweep_eps
from workbench.exercises.core import SMALL_IMAGE_SHAPE, CheckFailed, as_tensor, exercise

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

fgsm_exercise = exercise("fgsm", notebook="02_fgsm", title="FGSM, fgsm(model, x, y, eps)")


def _closed_form_case(seed: int):
    """A 2-class linear model, x = 0.5 everywhere (no clamping), and the labels."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn((2, NUM_PIXELS), generator=generator)
    x = torch.full((2, *SMALL_IMAGE_SHAPE), 0.5)
    y = torch.tensor([0, 1])
    # d CE(y) / dx = p_other * (w_other - w_y), so sign(grad) = sign(w_other - w_y).
    away = torch.stack([(weights[1] - weights[0]).sign(), (weights[0] - weights[1]).sign()])
    return linear_model(weights), x, y, away.view(2, *SMALL_IMAGE_SHAPE)


@fgsm_exercise.check("returns a tensor shaped like x")
def _returns_tensor(fgsm):
    model, x, y, _ = _closed_form_case(0)
    out = as_tensor(fgsm(model, x, y, 0.1), "x_adv")
    if out.shape != x.shape:
        raise CheckFailed(f"x_adv has shape {tuple(out.shape)}, x has {tuple(x.shape)}: return "
                          f"one adversarial image per input image")


@fgsm_exercise.check("untargeted: every pixel moves by eps along sign(gradient) (linear model)")
def _untargeted_closed_form(fgsm):
    for seed, eps in ((1, 0.1), (2, 0.03), (3, 0.2)):
        model, x, y, away = _closed_form_case(seed)
        out = as_tensor(fgsm(model, x.clone(), y, eps), "x_adv")
        expected = x + eps * away
        if torch.allclose(out, expected, atol=1e-5):
            continue
        if torch.allclose(out, x, atol=1e-7):
            raise CheckFailed("x_adv equals x: you returned the input unchanged; add "
                              "eps * grad.sign() to x")
        if torch.allclose(out, x - eps * away, atol=1e-5):
            raise CheckFailed("you stepped against the gradient, which lowers the loss of the "
                              "true class: for an untargeted attack use x + eps * grad.sign()")
        if not torch.allclose((out - x).abs(), torch.full_like(x, eps), atol=1e-5):
            raise CheckFailed("pixels did not all move by exactly eps: did you forget .sign() "
                              "on the gradient (or scale it some other way)?")
        raise CheckFailed("every pixel moved by eps, but not in the direction of the gradient of "
                          "the loss of the true label y: use F.cross_entropy(model(x), y)")


@fgsm_exercise.check("targeted: steps against the gradient of the target's loss (linear model)")
def _targeted_closed_form(fgsm):
    for seed, eps in ((4, 0.1), (5, 0.05)):
        model, x, y, away = _closed_form_case(seed)
        # With y the target, the step that lowers CE(target) is -eps * sign(grad) = -eps * away.
        out = as_tensor(fgsm(model, x.clone(), y, eps, targeted=True), "x_adv")
        if torch.allclose(out, x - eps * away, atol=1e-5):
            continue
        if torch.allclose(out, x + eps * away, atol=1e-5):
            raise CheckFailed("with targeted=True you stepped away from the target: the sign "
                              "flips, x_adv = x - eps * grad.sign() where grad is of "
                              "CE(model(x), target)")
        raise CheckFailed("targeted=True should give x - eps * sign(grad of CE(model(x), y)) "
                          "with y the target classes")


@fgsm_exercise.check("keeps every pixel in [0, 1]")
def _clamped(fgsm):
    model = small_net(6)
    x = _random_images(6)
    x[:, 0] = 0.0
    x[:, 1] = 1.0
    out = as_tensor(fgsm(model, x.clone(), torch.tensor([0, 1, 2, 3]), 0.25), "x_adv")
    if out.min() < 0 or out.max() > 1:
        raise CheckFailed(f"x_adv has values from {out.min():.3f} to {out.max():.3f}: clamp it "
                          f"to the image range with .clamp(0, 1)")


@fgsm_exercise.check("leaves x unchanged")
def _input_untouched(fgsm):
    model = small_net(7)
    x = _random_images(7)
    before = x.clone()
    fgsm(model, x, torch.tensor([0, 1, 2, 3]), 0.1)
    if not torch.equal(x, before):
        raise CheckFailed("your function changed x in place (x += ..., x.add_(...), x.data = "
                          "...): build a new tensor, e.g. x_adv = x + eps * grad.sign()")


@fgsm_exercise.check("attacks the model in eval mode and leaves it in eval mode")
def _eval_mode(fgsm):
    model = small_net(8, dropout=0.0)  # BatchNorm only: train mode is deterministic too
    x, y = _random_images(8), torch.tensor([0, 1, 2, 3])
    out = as_tensor(fgsm(model, x.clone(), y, 0.1), "x_adv")
    if model.training:
        raise CheckFailed("the model is in train mode after your function: don't call "
                          "model.train() (input gradients need no train mode); BatchNorm and "
                          "Dropout would then behave differently for everyone using the model")
    in_eval = reference_fgsm(model, x, y, 0.1)
    model.train()
    x_grad = x.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(x_grad), y)
    (grad,) = torch.autograd.grad(loss, x_grad)
    model.eval()
    in_train = (x + 0.1 * grad.sign()).clamp(0, 1)
    if torch.allclose(out, in_train, atol=1e-5) and not torch.allclose(out, in_eval, atol=1e-5):
        raise CheckFailed("you took the gradient with the model in train mode (BatchNorm used "
                          "the batch's statistics): attack the model in eval mode, as it is used")


@fgsm_exercise.check("matches the reference on random networks and images")
def _random_cases(fgsm):
    for seed in (10, 11, 12):
        model = small_net(seed)
        x = _random_images(seed, n=6)
        y = torch.randint(0, 5, (6,), generator=torch.Generator().manual_seed(seed))
        eps = 0.02 + 0.05 * (seed - 10)
        out = as_tensor(fgsm(model, x.clone(), y, eps), "x_adv")
        agree = torch.isclose(out, reference_fgsm(model, x, y, eps), atol=1e-5).float().mean()
        if agree < 0.999:
            raise CheckFailed(f"only {100 * agree:.1f}% of pixels match FGSM on a random network "
                              f"(seed {seed}, eps {eps:.2f}): compare with the formula above")


@fgsm_exercise.check("fools the real lite ImageNet model like the reference does")
def _lite_model(fgsm):
    model, x, y = _lite_case()
    eps = 2 / 255
    model.eval()  # shared across checks: undo whatever a previous learner function did
    try:
        out = as_tensor(fgsm(model, x.clone(), y, eps), "x_adv")
    finally:
        model.eval()
    agree = torch.isclose(out, reference_fgsm(model, x, y, eps), atol=1e-5).float().mean()
    if agree < 0.99:
        raise CheckFailed(f"on the lite model only {100 * agree:.1f}% of pixels match the "
                          f"reference FGSM at eps = 2/255")
    with torch.no_grad():
        before = model(x).softmax(1)[0, y].item()
        after = model(out).softmax(1)[0, y].item()
    if not after < before:
        raise CheckFailed(f"the true class's probability went from {before:.3f} to {after:.3f}: "
                          f"it should drop")


# ----------------------------------------------------------------------------- sweep_eps

sweep_exercise = exercise("sweep_eps", notebook="02_fgsm",
                          title="accuracy and confidence vs epsilon, sweep_eps(...)")


def _sweep_outputs(result, n: int):
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise CheckFailed("return a pair (accuracy, confidence), e.g. "
                          "`return torch.tensor(accuracy), torch.tensor(confidence)`")
    accuracy, confidence = (torch.as_tensor(r, dtype=torch.float32).flatten() for r in result)
    if len(accuracy) != n or len(confidence) != n:
        raise CheckFailed(f"expected one accuracy and one confidence per epsilon ({n}), got "
                          f"{len(accuracy)} and {len(confidence)}")
    return accuracy, confidence


@sweep_exercise.check("returns one accuracy and one confidence per epsilon")
def _sweep_shape(sweep_eps):
    model, x, y = small_net(20), _random_images(20), torch.tensor([0, 1, 2, 3])
    _sweep_outputs(sweep_eps(model, x, y, [0.0, 0.05, 0.1], reference_fgsm), 3)


@sweep_exercise.check("calls the attack it is given, once per epsilon, in order")
def _sweep_uses_attack(sweep_eps):
    calls = []

    def spy(model, x, y, eps):
        calls.append(float(eps))
        return x.clone()

    epsilons = [0.0, 0.01, 0.03]
    sweep_eps(small_net(21), _random_images(21), torch.tensor([0, 1, 2, 3]), epsilons, spy)
    if calls != epsilons:
        raise CheckFailed(f"the attack was called with eps {calls}, expected {epsilons}: call "
                          f"attack(model, x, y, eps) once per eps (not fgsm directly)")


@sweep_exercise.check("accuracy and confidence match the reference on random networks")
def _sweep_values(sweep_eps):
    epsilons = [0.0, 0.02, 0.1, 0.3]
    for seed in (22, 23):
        model = small_net(seed)
        x = _random_images(seed, n=8)
        with torch.no_grad():
            y = model(x).argmax(1)  # all correct at eps = 0, so accuracy must fall from 1
        accuracy, confidence = _sweep_outputs(
            sweep_eps(model, x, y, epsilons, reference_fgsm), len(epsilons))
        ref_acc, ref_conf = reference_sweep_eps(model, x, y, epsilons, reference_fgsm)
        if accuracy.max() > 1:
            raise CheckFailed(f"accuracy {accuracy.tolist()} goes above 1: report a fraction, "
                              f"(pred == y).float().mean()")
        if not torch.allclose(accuracy, ref_acc, atol=1e-6):
            if torch.allclose(accuracy, torch.ones_like(accuracy)):
                raise CheckFailed("accuracy stays at 1: evaluate the model on x_adv, not on x")
            raise CheckFailed(f"accuracy {accuracy.tolist()} differs from the reference "
                              f"{ref_acc.tolist()}")
        if not torch.allclose(confidence, ref_conf, atol=1e-4):
            with torch.no_grad():
                top = torch.stack([model(reference_fgsm(model, x, y, e)).softmax(1).max(1)
                                   .values.mean() for e in epsilons])
            if torch.allclose(confidence, top, atol=1e-4):
                raise CheckFailed("confidence is the mean probability of the predicted class; "
                                  "use the probability of the true class y: "
                                  "probs.gather(1, y[:, None])")
            raise CheckFailed(f"confidence {confidence.tolist()} differs from the reference "
                              f"{ref_conf.tolist()}: the mean softmax probability of y")


@sweep_exercise.check("leaves the model in eval mode")
def _sweep_eval(sweep_eps):
    model = small_net(24)
    sweep_eps(model, _random_images(24), torch.tensor([0, 1, 2, 3]), [0.0, 0.1], reference_fgsm)
    if model.training:
        raise CheckFailed("the model is in train mode after your function: don't call "
                          "model.train()")
