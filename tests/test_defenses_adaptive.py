"""Notebook 07's pieces: the defences on known inputs, the adaptive attacks' stand-ins, and the
sanity checks flagging a model that hides its gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workbench.attacks import pgd
from workbench.attacks.adaptive import BPDA, EOT, LogitScale, straight_through
from workbench.attacks.core import margin_objective
from workbench.data.digits import load_digits_split
from workbench.defenses.distillation import (distillation_loss, soft_labels, train_at_temperature,
                                             train_student)
from workbench.defenses.evaluation import accuracy
from workbench.defenses.models import Preprocessed, digits_cnn
from workbench.defenses.randomized import RandomNoise
from workbench.defenses.reconstruction import digits_autoencoder, train_autoencoder
from workbench.defenses.sanity import pgd_attack, sanity_checks, strongest_of
from workbench.defenses.squeezing import (JointViews, SqueezeDetector, Squeezer, bit_depth,
                                          median_smooth)
from workbench.defenses.training import train_standard


def _images(seed: int, n: int = 6, shape=(1, 16, 16)) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def digits():
    x_train, y_train, x_test, y_test = load_digits_split()
    return x_train[:600], y_train[:600], x_test[:120], y_test[:120]


@pytest.fixture(scope="module")
def trained(digits):
    """Two standard digits CNNs (the model and an independent transfer source), 3 epochs."""
    x_train, y_train, _, _ = digits
    models = []
    for seed in (0, 1):
        model = digits_cnn(seed=seed)
        train_standard(model, x_train, y_train, epochs=3, seed=seed, progress=False)
        models.append(model.eval())
    return models


# ----------------------------------------------------------------------------- feature squeezing

def test_one_bit_gives_a_binary_image_and_more_bits_more_levels():
    x = _images(0)
    assert set(bit_depth(x, 1).unique().tolist()) <= {0.0, 1.0}
    levels = bit_depth(x, 3).unique()
    assert len(levels) <= 8 and torch.allclose(levels * 7, (levels * 7).round())
    assert (bit_depth(x, 3) - x).abs().max() <= 0.5 / 7 + 1e-6  # rounds to the nearest level


def test_median_smooth_removes_a_lone_bright_pixel_and_keeps_flat_areas():
    x = torch.full((1, 1, 6, 6), 0.25)
    x[0, 0, 2, 3] = 1.0
    for size in (2, 3):
        assert torch.equal(median_smooth(x, size), torch.full_like(x, 0.25))
    steps = torch.zeros(1, 1, 4, 4)
    steps[..., 2:] = 1.0  # a vertical edge survives a median filter
    assert torch.equal(median_smooth(steps, 3), steps)


@pytest.mark.parametrize("call, match", [
    (lambda: bit_depth(_images(0), 0), "bits must be"),
    (lambda: bit_depth(_images(0)[0], 2), r"\(N, C, H, W\)"),
    (lambda: median_smooth(_images(0), 0), "size must be"),
    (lambda: Squeezer(), "needs bits, median or both"),
    (lambda: Squeezer(bits=9), "bits must be"),
])
def test_squeezing_rejects_bad_settings(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_the_detector_keeps_its_false_positive_rate_and_needs_calibrating(trained, digits):
    model = trained[0]
    detector = SqueezeDetector(model, [Squeezer(bits=2), Squeezer(median=2)])
    with pytest.raises(RuntimeError, match="calibrate"):
        detector.detect(digits[2])
    threshold = detector.calibrate(digits[2], 0.1)
    scores = detector.score(digits[2])
    assert 0 <= scores.min() and scores.max() <= 2
    assert detector.detect(digits[2]).float().mean() <= 0.1 + 1e-6
    assert threshold == pytest.approx(float(torch.quantile(scores, 0.9)))


# ----------------------------------------------------------------------------- BPDA, EOT, scaling

def test_bpda_predicts_as_the_squeezer_and_has_the_identitys_gradient():
    squeezer = Squeezer(bits=2, median=2)
    x = _images(1).requires_grad_(True)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    out = BPDA(squeezer)(x)
    assert torch.equal(out, squeezer(x.detach()))  # exactly, not up to rounding
    (grad,) = torch.autograd.grad((weights * out).sum(), x)
    assert torch.equal(grad, weights)
    (through_rounding,) = torch.autograd.grad((weights * squeezer(x)).sum(), x)
    assert through_rounding.abs().max() == 0  # what autograd gives without BPDA
    with pytest.raises(ValueError, match="shaped like its input"):
        straight_through(x, x[:1])


def NoisyInput(model, std, seed):
    """A randomised defence: Gaussian noise, then the model."""
    return Preprocessed(RandomNoise(std, seed=seed), model)


def test_eot_is_the_log_of_the_mean_prediction_over_draws(trained):
    model, x = trained[0], _images(3)
    eot = EOT(NoisyInput(model, 0.2, seed=5), samples=4)
    replay = NoisyInput(model, 0.2, seed=5)
    with torch.no_grad():
        probs = replay(x.repeat(4, 1, 1, 1)).softmax(1).view(4, len(x), -1).mean(0)
        assert torch.allclose(eot(x).exp(), probs, atol=1e-6)
        assert torch.allclose(EOT(model, 3)(x), model(x).log_softmax(1), atol=1e-5)
    with pytest.raises(ValueError, match="samples"):
        EOT(model, 0)


def test_eot_gradients_vary_less_than_one_draws(trained):
    model, x, y = trained[0], _images(4, n=4), torch.tensor([0, 1, 2, 3])

    def gradient(wrapper):
        x_ = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(wrapper(x_), y), x_)
        return grad

    noisy = NoisyInput(model, 0.3, seed=6)
    single = torch.stack([gradient(noisy) for _ in range(6)])
    averaged = torch.stack([gradient(EOT(noisy, 16)) for _ in range(6)])
    assert averaged.var(0).mean() < 0.5 * single.var(0).mean()


def test_logit_scale_and_margin_keep_predictions_and_revive_a_saturated_gradient(trained):
    model, x = trained[0], _images(5)
    saturated = LogitScale(model, 1e4)
    y = saturated(x).argmax(1)
    with torch.no_grad():
        assert torch.equal(LogitScale(saturated, 1e-4)(x).argmax(1), y)
    x_ = x.clone().requires_grad_(True)
    (ce_grad,) = torch.autograd.grad(F.cross_entropy(saturated(x_), y), x_)
    assert ce_grad.abs().max() == 0  # the softmax saturates in float32
    (margin_grad,) = torch.autograd.grad(
        margin_objective(saturated(x_), y, targeted=False).sum(), x_)
    assert margin_grad.abs().max() > 0
    with pytest.raises(ValueError, match="factor"):
        LogitScale(model, 0)


def test_margin_objective_in_closed_form():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    y = torch.tensor([0, 2])
    assert margin_objective(logits, y, targeted=False).tolist() == [-1.0, 4.0]
    assert margin_objective(logits, y, targeted=True).tolist() == [1.0, -4.0]


@pytest.mark.parametrize("stand_in", ["bpda", "scaled", "joint", "pipeline"])
def test_adaptive_attacks_stay_in_their_ball(trained, digits, stand_in):
    model, x, y = trained[0], digits[2][:16], digits[3][:16]
    squeezer = Squeezer(bits=2, median=2)
    target = {"bpda": Preprocessed(BPDA(squeezer), model), "scaled": LogitScale(model, 0.05),
              "joint": JointViews(model, [squeezer]),
              "pipeline": Preprocessed(digits_autoencoder(seed=0), model)}[stand_in]
    for loss in ("ce", "margin"):
        x_adv = pgd(target, x, y, eps=0.1, alpha=0.03, steps=5, loss=loss,
                    generator=torch.Generator().manual_seed(0)).x_adv
        assert (x_adv - x).abs().max() <= 0.1 + 1e-6
        assert 0 <= x_adv.min() and x_adv.max() <= 1


def test_pgd_rejects_an_unknown_loss(trained):
    with pytest.raises(ValueError, match="loss must be one of"):
        pgd(trained[0], _images(0), torch.zeros(6, dtype=torch.long), eps=0.1, alpha=0.1,
            steps=1, loss="hinge")


# ----------------------------------------------------------------------------- distillation

def test_the_distilled_student_is_sharper_at_t1_than_its_teacher_at_t(digits):
    x_train, y_train, x_test, _ = digits
    temperature = 20.0
    teacher, student = digits_cnn(seed=0), digits_cnn(seed=1)
    train_at_temperature(teacher, x_train, y_train, temperature=temperature, epochs=10)
    train_student(student, teacher, x_train, temperature=temperature, epochs=10)

    def entropy(probs):
        return -(probs * probs.clamp_min(1e-30).log()).sum(1).mean().item()

    with torch.no_grad():
        served = student(x_test).softmax(1)
    assert entropy(served) < entropy(soft_labels(teacher, x_test, temperature))
    assert accuracy(student, x_test, digits[3]) > 0.8  # it learnt the digits from soft labels


def test_distillation_loss_is_the_soft_cross_entropy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
    targets = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    expected = -(targets * (logits / 2).log_softmax(1)).sum(1).mean()
    assert distillation_loss(logits, targets, 2.0) == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="temperature"):
        soft_labels(digits_cnn(), _images(0), 0.5)


# ----------------------------------------------------------------------------- reconstruction

def test_the_autoencoder_learns_to_reconstruct_clean_digits(digits):
    x_train, _, x_test, _ = digits
    autoencoder = digits_autoencoder(seed=0)
    with torch.no_grad():
        before = F.mse_loss(autoencoder(x_test), x_test).item()
    train_autoencoder(autoencoder, x_train, epochs=3, seed=0)
    with torch.no_grad():
        reconstructed = autoencoder(x_test)
    assert reconstructed.shape == x_test.shape
    assert 0 <= reconstructed.min() and reconstructed.max() <= 1
    assert F.mse_loss(reconstructed, x_test).item() < 0.5 * before


# ----------------------------------------------------------------------------- sanity checks

def test_the_sanity_checks_pass_a_plain_model_and_flag_a_masked_one(trained, digits):
    model, source = trained
    x, y = digits[2][:64], digits[3][:64]
    settings = dict(eps=0.15, source=source, steps=10, more_steps=20, restarts=2, seed=0)
    plain = sanity_checks(model, x, y, attack=pgd_attack(model), **settings)
    assert [c.name for c in plain] == ["unbounded", "more effort", "white box beats black box"]
    assert all(c.passed for c in plain), plain
    masked = LogitScale(model, 1e4)  # same predictions, a softmax that saturates
    flagged = {c.name: c.passed for c in sanity_checks(masked, x, y, attack=pgd_attack(masked),
                                                         **settings)}
    assert not flagged["unbounded"] and not flagged["white box beats black box"]
    adaptive = sanity_checks(masked, x, y, attack=pgd_attack(masked, loss="margin"), **settings)
    assert all(c.passed for c in adaptive), adaptive


def test_strongest_of_is_the_worst_case_per_image(trained, digits):
    model = trained[0]
    x, y = digits[2][:40], digits[3][:40]
    weak, strong = pgd_attack(LogitScale(model, 1e4)), pgd_attack(model)
    generator = torch.Generator().manual_seed(0)
    both = strongest_of(model, [weak, strong])(x, y, 0.1, 5, generator)
    alone = [accuracy(model, attack(x, y, 0.1, 5, torch.Generator().manual_seed(0)), y)
             for attack in (weak, strong)]
    assert accuracy(model, both, y) <= min(alone) + 1e-9
    assert (both - x).abs().max() <= 0.1 + 1e-6
