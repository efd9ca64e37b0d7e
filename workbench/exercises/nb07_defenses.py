"""Notebook 07's exercises: BPDA through bit-depth reduction (``bpda_attack``) and the attack
through an autoencoder in front of a classifier (``attack_through_autoencoder``). Both are PGD
(:func:`workbench.attacks.pgd`, which the learner calls) on the right model: the lesson is
which model, and what its backward pass must be.

The references are the package's own pieces: PGD on ``Preprocessed(BPDA(Squeezer(bits)),
model)`` and on ``Preprocessed(autoencoder, classifier)``. While the grader calls the learner's
``bpda_attack``, :func:`workbench.attacks.adaptive.straight_through` (behind ``BPDA``) is
switched off: the straight-through step is what the learner writes.

Each exercise has one diagnosis: the learner's function is tried against small wrong versions
of it (the attack that ignores the defence, autograd's zero gradient through the rounding, the
squeezed or reconstructed image returned instead of the adversarial one), and every failing
check names the mistake it reproduces (``workbench.exercises.core.diagnosed``).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from workbench.attacks import pgd
from workbench.attacks.adaptive import BPDA
from workbench.defenses.models import Preprocessed, digits_cnn
from workbench.defenses.reconstruction import digits_autoencoder
from workbench.defenses.squeezing import Squeezer, bit_depth
from workbench.exercises.core import (CheckFailed, as_adversarial, diagnosed, exercise,
                                      known_mistake)

IMAGE_SHAPE = (1, 16, 16)
AGREE = 0.99  # share of pixels that must match the reference (float rounding may flip a sign)


def _batch(seed: int, n: int = 6):
    """Digit-sized random images with pixels at 0 and 1 (the clamp matters) and labels."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *IMAGE_SHAPE), generator=generator)
    x[:, :, 0] = 0.0
    x[:, :, 1] = 1.0
    return x, torch.randint(0, 10, (n,), generator=generator)


def _random_model(seed: int) -> nn.Module:
    return digits_cnn(seed=seed).eval()


@functools.lru_cache(maxsize=1)
def _digits():
    """The notebook's own models and 64 test digits: the standard model (cached by notebook
    03's ``train_or_load``) and the autoencoder of seed 0 (cached by the experiment)."""
    from workbench.data.digits import load_digits_split
    from workbench.defense_experiment import autoencoder_model
    from workbench.experiments import train_or_load

    _, _, x_test, y_test = load_digits_split()
    return train_or_load("standard", 0), autoencoder_model(0), x_test[:64], y_test[:64]


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.isclose(a, b, atol=1e-5).float().mean().item()


def _success(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x_adv).argmax(1) != y).float().mean().item()


def _as_often(fn, fail, reference, run, defended: nn.Module, what: str) -> None:
    """``run(fn, x, y, generator)`` and ``run(reference, ...)`` on the notebook's 64 digits,
    each from a generator seeded 0: CheckFailed (through ``fail``) when the learner's examples
    fool ``defended`` on 5 points fewer than the reference's, or worse."""
    x, y = _digits()[2:]
    out = as_adversarial(run(fn, x, y, torch.Generator().manual_seed(0)), x)
    expected = run(reference, x, y, torch.Generator().manual_seed(0))
    mine, theirs = _success(defended, out, y), _success(defended, expected, y)
    if mine < theirs - 0.05:
        raise fail(fn, f"your examples fool {what} on {mine:.0%} of 64 digits, the "
                       f"reference's on {theirs:.0%}")


def _in_ball(fn, fail, make_case, name: str):
    for seed, eps in ((1, 0.1), (2, 0.2)):
        args, kwargs, x = make_case(seed, eps)
        before = x.clone()
        out = as_adversarial(fn(*args, **kwargs), x)
        if not torch.equal(x, before):
            raise CheckFailed("your function changed x in place: build a new tensor (pgd "
                              "returns one)")
        if out.min() < 0 or out.max() > 1:
            raise CheckFailed(f"x_adv has values from {out.min():.3f} to {out.max():.3f}: "
                              f"adversarial images stay in [0, 1]")
        moved = (out - x).abs().max().item()
        if moved > eps + 1e-5:
            raise fail(fn, f"x_adv is {moved:.3f} from x in L-inf, more than eps = {eps}: "
                           f"return the adversarial image {name}, inside the eps-ball")


# ----------------------------------------------------------------------------- BPDA

bpda_exercise = exercise(
    "bpda_attack", notebook="07_defenses",
    title="BPDA through bit-depth reduction, bpda_attack(model, x, y, *, bits, eps, alpha, "
          "steps, generator=None)",
    references=("workbench.attacks.adaptive.straight_through",))


def reference_bpda_attack(model, x, y, *, bits, eps, alpha, steps, generator=None):
    """PGD on the squeezed model with the squeezer's backward pass replaced by the identity."""
    target = Preprocessed(BPDA(Squeezer(bits=bits)), model)
    return pgd(target, x, y, eps=eps, alpha=alpha, steps=steps, generator=generator).x_adv


def _wrong_bpda(*, target="bpda", squeeze_output=False):
    """bpda_attack with known mistakes: PGD on the wrong model ("autograd": through the
    rounding, whose gradient is zero; "bare": the classifier without the squeezer), or the
    squeezed adversarial image returned."""
    def bpda_attack(model, x, y, *, bits, eps, alpha, steps, generator=None):
        squeezer = Squeezer(bits=bits)
        attacked = {"bpda": Preprocessed(BPDA(squeezer), model),
                    "autograd": Preprocessed(squeezer, model), "bare": model}[target]
        x_adv = pgd(attacked, x, y, eps=eps, alpha=alpha, steps=steps,
                    generator=generator).x_adv
        return bit_depth(x_adv, bits) if squeeze_output else x_adv
    return bpda_attack


ZERO_GRADIENT = ("x_adv is the random start: PGD got a zero gradient, because rounding has "
                 "none. Put a straight-through step in front of the model, x + "
                 "(bit_depth(x, bits) - x).detach(): the squeezed values forward, the "
                 "identity's gradient backward")
IGNORES_SQUEEZER = ("you attacked the classifier without the squeezer: the defended model "
                    "predicts on bit_depth(x, bits), so the attack must run through it (with "
                    "the straight-through step in front of the model)")
SQUEEZED_RETURNED = ("you returned the squeezed image bit_depth(x_adv, bits): return x_adv "
                     "itself (the defended model squeezes it when it predicts)")
RETURNS_INPUT = "x_adv equals x: nothing moved; run PGD and return its x_adv"


def _bpda_probe(seed, bits, eps=0.15, steps=4):
    def make():
        x, y = _batch(seed)
        return (_random_model(seed), x, y), dict(bits=bits, eps=eps, alpha=2.5 * eps / steps,
                                                 steps=steps,
                                                 generator=torch.Generator().manual_seed(seed))
    return make


BPDA_PROBES = (_bpda_probe(11, 2), _bpda_probe(12, 1), _bpda_probe(13, 3))
BPDA_MISTAKES = (
    (RETURNS_INPUT, lambda model, x, y, **kw: x.clone()),
    (ZERO_GRADIENT, _wrong_bpda(target="autograd")),
    (IGNORES_SQUEEZER, _wrong_bpda(target="bare")),
    (SQUEEZED_RETURNED, _wrong_bpda(squeeze_output=True)),
)


def diagnose_bpda(bpda_attack) -> str | None:
    """The known mistake ``bpda_attack`` makes, as the message every failing check gives."""
    return known_mistake(bpda_attack, BPDA_PROBES, BPDA_MISTAKES)


def _bpda_fail(fn, message: str) -> CheckFailed:
    return diagnosed(diagnose_bpda, fn, message)


def _bpda_case(seed, eps):
    x, y = _batch(seed)
    kwargs = dict(bits=2, eps=eps, alpha=eps / 2, steps=5,
                  generator=torch.Generator().manual_seed(seed))
    return (_random_model(seed), x, y), kwargs, x


@bpda_exercise.check("returns x_adv in [0, 1], inside the eps-ball, x unchanged")
def _bpda_ball(bpda_attack):
    _in_ball(bpda_attack, _bpda_fail, _bpda_case, "x_adv")


@bpda_exercise.check("matches PGD through a straight-through squeezer on random networks")
def _bpda_reference(bpda_attack):
    for probe in BPDA_PROBES:
        args, kwargs = probe()
        out = as_adversarial(bpda_attack(*args, **kwargs), args[1])
        args, kwargs = probe()
        expected = reference_bpda_attack(*args, **kwargs)
        agree = _agreement(out, expected)
        if agree < AGREE:
            raise _bpda_fail(bpda_attack, f"only {agree:.1%} of the pixels match PGD on "
                                          f"bit_depth's straight-through stand-in (bits = "
                                          f"{kwargs['bits']}): same model, eps, alpha, steps "
                                          f"and generator")


@bpda_exercise.check("leaves the model in the mode it was in")
def _bpda_modes(bpda_attack):
    (model, x, y), kwargs, _ = _bpda_case(3, 0.1)
    model.train()
    bpda_attack(model, x, y, **kwargs)
    if not model.training:
        raise CheckFailed("the model was in train mode and your function left it in eval "
                          "mode: pgd restores the mode itself; don't call model.eval()")


@bpda_exercise.check("fools the squeezed digits model as often as BPDA does")
def _bpda_digits(bpda_attack):
    model = _digits()[0]
    _as_often(bpda_attack, _bpda_fail, reference_bpda_attack,
              lambda fn, x, y, generator: fn(model, x, y, bits=2, eps=0.15, alpha=0.0375,
                                             steps=10, generator=generator),
              Preprocessed(Squeezer(bits=2), model), "the squeezed model")


# ----------------------------------------------------------------------------- autoencoder

autoencoder_exercise = exercise(
    "attack_through_autoencoder", notebook="07_defenses",
    title="The attack through the autoencoder, attack_through_autoencoder(classifier, "
          "autoencoder, x, y, *, eps, alpha, steps, generator=None)")


def reference_attack_through_autoencoder(classifier, autoencoder, x, y, *, eps, alpha, steps,
                                         generator=None):
    """PGD on the whole pipeline, ``classifier(autoencoder(x))``."""
    return pgd(Preprocessed(autoencoder, classifier), x, y, eps=eps, alpha=alpha, steps=steps,
               generator=generator).x_adv


def _classifier_only(classifier, autoencoder, x, y, *, eps, alpha, steps, generator=None):
    return pgd(classifier, x, y, eps=eps, alpha=alpha, steps=steps, generator=generator).x_adv


def _reconstruction_returned(classifier, autoencoder, x, y, **kwargs):
    x_adv = reference_attack_through_autoencoder(classifier, autoencoder, x, y, **kwargs)
    with torch.no_grad():
        return autoencoder(x_adv)


CLASSIFIER_ONLY = ("you attacked the classifier alone (MagNet's grey-box setting): the "
                   "defended model is classifier(autoencoder(x)), and that whole pipeline is "
                   "differentiable: run PGD on it, e.g. nn.Sequential(autoencoder, classifier)")
RECONSTRUCTION_RETURNED = ("you returned the autoencoder's reconstruction of x_adv: return "
                           "x_adv itself (the pipeline reconstructs it when it predicts)")


def _autoencoder_probe(seed, eps=0.15, steps=4):
    def make():
        x, y = _batch(seed)
        return ((_random_model(seed), digits_autoencoder(seed=seed).eval(), x, y),
                dict(eps=eps, alpha=2.5 * eps / steps, steps=steps,
                     generator=torch.Generator().manual_seed(seed)))
    return make


AUTOENCODER_PROBES = (_autoencoder_probe(21), _autoencoder_probe(22, eps=0.1))
AUTOENCODER_MISTAKES = (
    (RETURNS_INPUT, lambda classifier, autoencoder, x, y, **kw: x.clone()),
    (CLASSIFIER_ONLY, _classifier_only),
    (RECONSTRUCTION_RETURNED, _reconstruction_returned),
)


def diagnose_autoencoder(fn) -> str | None:
    """The known mistake ``fn`` makes, as the message every failing check gives."""
    return known_mistake(fn, AUTOENCODER_PROBES, AUTOENCODER_MISTAKES)


def _autoencoder_fail(fn, message: str) -> CheckFailed:
    return diagnosed(diagnose_autoencoder, fn, message)


def _autoencoder_case(seed, eps):
    x, y = _batch(seed)
    kwargs = dict(eps=eps, alpha=eps / 2, steps=5, generator=torch.Generator().manual_seed(seed))
    return (_random_model(seed), digits_autoencoder(seed=seed).eval(), x, y), kwargs, x


@autoencoder_exercise.check("returns x_adv in [0, 1], inside the eps-ball, x unchanged")
def _autoencoder_ball(fn):
    _in_ball(fn, _autoencoder_fail, _autoencoder_case, "x_adv")


@autoencoder_exercise.check("matches PGD on classifier(autoencoder(x)) on random networks")
def _autoencoder_reference(fn):
    for probe in AUTOENCODER_PROBES:
        args, kwargs = probe()
        out = as_adversarial(fn(*args, **kwargs), args[2])
        args, kwargs = probe()
        agree = _agreement(out, reference_attack_through_autoencoder(*args, **kwargs))
        if agree < AGREE:
            raise _autoencoder_fail(fn, f"only {agree:.1%} of the pixels match PGD on the "
                                        f"whole pipeline (same eps, alpha, steps, generator)")


@autoencoder_exercise.check("leaves the classifier and the autoencoder in their modes")
def _autoencoder_modes(fn):
    (classifier, autoencoder, x, y), kwargs, _ = _autoencoder_case(4, 0.1)
    classifier.train()
    autoencoder.train()
    fn(classifier, autoencoder, x, y, **kwargs)
    if not (classifier.training and autoencoder.training):
        raise CheckFailed("a model was in train mode and your function left it in eval mode: "
                          "pgd restores the modes itself; don't call .eval()")


@autoencoder_exercise.check("fools the reconstructed digits pipeline as often as the reference")
def _autoencoder_digits(fn):
    classifier, autoencoder = _digits()[:2]
    _as_often(fn, _autoencoder_fail, reference_attack_through_autoencoder,
              lambda f, x, y, generator: f(classifier, autoencoder, x, y, eps=0.15,
                                           alpha=0.0375, steps=10, generator=generator),
              Preprocessed(autoencoder, classifier), "the pipeline")
