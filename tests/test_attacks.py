"""FGSM and PGD: the invariants of docs/architecture.md (contracts), closed-form cases, and bad
input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import IMAGE_SHAPE, LinearModel, SmallConvNet, random_batch
from workbench.attacks import AttackResult, ascent_step, fgsm, pgd, pgd_restarts, predict, project

SEEDS = (0, 1, 2)
EPS = {"linf": 0.1, "l2": 0.5}
ATTACKS = ("fgsm", "pgd-linf", "pgd-l2", "pgd-linf-targeted", "pgd-l2-targeted")


def run_attack(attack: str, model, x, y, *, seed: int = 0):
    """Run one of ATTACKS with its budget; return (x_adv, eps, norm)."""
    if attack == "fgsm":
        return fgsm(model, x, y, EPS["linf"]), EPS["linf"], "linf"
    _, norm, *rest = attack.split("-")
    eps = EPS[norm]
    result = pgd(model, x, y, eps=eps, alpha=eps / 4, steps=3, norm=norm,
                 targeted=bool(rest), generator=torch.Generator().manual_seed(seed))
    assert isinstance(result, AttackResult)
    return result.x_adv, eps, norm


def distance(x_adv, x, norm):
    """Per-example distance (N,) in the norm."""
    d = (x_adv - x).flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


def modes(model):
    return {name: m.training for name, m in model.named_modules()}


# ----------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("attack", ATTACKS)
def test_output_in_box_and_ball_and_x_untouched(attack, seed):
    model = SmallConvNet(seed=seed).eval()
    x, y = random_batch(seed, n=6)
    x_before = x.clone()
    x_adv, eps, norm = run_attack(attack, model, x, y, seed=seed)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (distance(x_adv, x, norm) <= eps + 1e-6).all()
    assert torch.equal(x, x_before)
    assert not torch.equal(x_adv, x)  # the attack did something
    assert not x_adv.requires_grad


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_ball_holds_for_large_steps_and_budgets(norm, seed):
    # Big steps overshoot the ball and the box: the projection must bring them back.
    model = SmallConvNet(seed=seed).eval()
    x, y = random_batch(seed, n=5)
    eps = 0.3 if norm == "linf" else 3.0
    result = pgd(model, x, y, eps=eps, alpha=eps, steps=4, norm=norm,
                 generator=torch.Generator().manual_seed(seed))
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert (distance(result.x_adv, x, norm) <= eps + 1e-6).all()


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("start_mode", ["train", "eval", "mixed"])
def test_model_modes_restored_and_eval_during_attack(attack, start_mode):
    model = SmallConvNet()
    if start_mode == "train":
        model.train()
    elif start_mode == "eval":
        model.eval()
    else:
        model.train()
        model.bn.eval()
        model.recorder.eval()
        model.drop.train()
    before = modes(model)
    x, y = random_batch(0)
    run_attack(attack, model, x, y)
    assert modes(model) == before
    assert model.recorder.seen, "the model was never called"
    assert not any(model.recorder.seen), "the model ran in train mode during the attack"


@pytest.mark.parametrize("attack", ATTACKS)
def test_train_mode_model_gives_the_eval_mode_answer(attack):
    # Dropout and batch statistics must not leak into the attack.
    x, y = random_batch(3)
    in_train = SmallConvNet().train()
    in_eval = SmallConvNet().eval()
    a, _, _ = run_attack(attack, in_train, x, y)
    b, _, _ = run_attack(attack, in_eval, x, y)
    assert torch.equal(a, b)


@pytest.mark.parametrize("attack", ATTACKS)
def test_parameters_requires_grad_and_grad_unchanged(attack):
    model = SmallConvNet().train()
    model.conv.weight.requires_grad_(False)  # a frozen parameter
    model.head.weight.grad = torch.randn_like(model.head.weight)
    model.bn.weight.grad = torch.zeros_like(model.bn.weight)
    saved_grads = {n: (None if p.grad is None else p.grad.clone())
                   for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}

    x, y = random_batch(1)
    run_attack(attack, model, x, y)

    for name, p in model.named_parameters():
        assert p.requires_grad == flags[name], name
        if saved_grads[name] is None:
            assert p.grad is None, f"{name}.grad was None and is now set"
        else:
            assert torch.equal(p.grad, saved_grads[name]), name
        assert torch.equal(p.detach(), params[name]), name
    for name, b in model.named_buffers():  # BN running stats: no train-mode forward
        assert torch.equal(b, buffers[name]), name


@pytest.mark.parametrize("attack", ATTACKS)
def test_works_under_no_grad(attack):
    model = SmallConvNet().eval()
    x, y = random_batch(2)
    expected, _, _ = run_attack(attack, model, x, y)
    with torch.no_grad():
        got, _, _ = run_attack(attack, model, x, y)
    assert torch.equal(got, expected)
    assert not torch.equal(got, x)
    assert torch.is_grad_enabled()


# ----------------------------------------------------------------------------- FGSM closed form


def linear_worst_direction(model: LinearModel, y: torch.Tensor) -> torch.Tensor:
    """sign(w_other - w_true) per example, shaped like the images."""
    w = model.linear.weight.detach()  # (2, D)
    return torch.sign(w[1 - y] - w[y]).view(-1, *IMAGE_SHAPE)


@pytest.mark.parametrize("seed", SEEDS)
def test_fgsm_untargeted_linear_closed_form(seed):
    model = LinearModel(seed=seed).eval()
    eps = 0.1
    y = torch.tensor([0, 1, 0, 1])
    x = torch.full((4, *IMAGE_SHAPE), 0.5)
    x_adv = fgsm(model, x, y, eps)
    expected = 0.5 + eps * linear_worst_direction(model, y)
    assert torch.equal(x_adv, expected)
    # and it does what it is for: the true class's logit margin falls
    assert (F.cross_entropy(model(x_adv), y, reduction="none")
            > F.cross_entropy(model(x), y, reduction="none")).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_fgsm_targeted_linear_closed_form(seed):
    model = LinearModel(seed=seed).eval()
    eps = 0.1
    target = torch.tensor([1, 0, 0, 1])
    x = torch.full((4, *IMAGE_SHAPE), 0.5)
    x_adv = fgsm(model, x, target, eps, targeted=True)

    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(xg), target, reduction="sum"), xg)
    assert torch.equal(x_adv, x - eps * grad.sign())
    # for two classes: towards the target's weights, away from the other's
    other = 1 - target
    assert torch.equal(x_adv, 0.5 + eps * linear_worst_direction(model, other))
    with torch.no_grad():
        assert (F.cross_entropy(model(x_adv), target, reduction="none")
                < F.cross_entropy(model(x), target, reduction="none")).all()


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_fgsm_clamps_at_the_boundaries(value):
    model = LinearModel().eval()
    eps = 0.2
    y = torch.tensor([0, 1])
    x = torch.full((2, *IMAGE_SHAPE), value)
    x_adv = fgsm(model, x, y, eps)
    direction = linear_worst_direction(model, y)
    assert torch.equal(x_adv, (value + eps * direction).clamp(0, 1))
    # half the pixels want to leave the box and stay on its edge, the others move by eps
    moved = (x_adv - x).abs()
    assert ((moved == 0) | ((moved - eps).abs() < 1e-6)).all()
    assert (moved == 0).any() and (moved > 0).any()


def test_fgsm_eps_zero_returns_x():
    model = SmallConvNet().eval()
    x, y = random_batch(0)
    x_adv = fgsm(model, x, y, 0.0)
    assert torch.equal(x_adv, x)
    x_adv += 1  # a copy, not x itself
    assert x.max() <= 1


# ----------------------------------------------------------------------------- PGD specifics


def test_pgd_zero_steps_without_random_start_returns_x():
    model = SmallConvNet().eval()
    x, y = random_batch(0, n=3)
    result = pgd(model, x, y, eps=0.1, alpha=0.01, steps=0, random_start=False)
    assert torch.equal(result.x_adv, x)
    assert result.loss_trace.shape == (0, 3)
    assert result.success.shape == (3,) and result.success.dtype == torch.bool
    assert torch.equal(result.success, predict(model, x) != y)
    result.x_adv += 1  # a copy, not x itself
    assert x.max() <= 1


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_generator_determinism(norm):
    model = SmallConvNet().eval()
    x, y = random_batch(5)
    eps = EPS[norm]

    def attack(seed):
        return pgd(model, x, y, eps=eps, alpha=eps / 4, steps=2, norm=norm,
                   generator=torch.Generator().manual_seed(seed)).x_adv

    assert torch.equal(attack(7), attack(7))
    assert not torch.equal(attack(7), attack(8))


def test_pgd_loss_trace_matches_the_objective():
    model = SmallConvNet().eval()
    x, y = random_batch(4, n=5)
    result = pgd(model, x, y, eps=0.1, alpha=0.02, steps=6, random_start=False)
    assert result.loss_trace.shape == (6, 5)
    assert result.loss_trace.dtype == torch.float32
    with torch.no_grad():
        final = F.cross_entropy(model(result.x_adv), y, reduction="none")
    torch.testing.assert_close(result.loss_trace[-1], final)
    targeted = pgd(model, x, y, eps=0.1, alpha=0.02, steps=6, random_start=False, targeted=True)
    with torch.no_grad():
        final = -F.cross_entropy(model(targeted.x_adv), y, reduction="none")
    torch.testing.assert_close(targeted.loss_trace[-1], final)


def test_pgd_success_matches_predictions():
    model = SmallConvNet().eval()
    x, y = random_batch(6, n=8)
    for targeted in (False, True):
        result = pgd(model, x, y, eps=0.1, alpha=0.03, steps=4, targeted=targeted,
                     generator=torch.Generator().manual_seed(0))
        pred = predict(model, result.x_adv)
        assert torch.equal(result.success, pred == y if targeted else pred != y)


def test_project_l2_small_unchanged_big_rescaled():
    g = torch.Generator().manual_seed(0)
    eps = 1.0
    direction = torch.randn(2, *IMAGE_SHAPE, generator=g)
    direction = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    delta = direction * torch.tensor([0.3, 5.0]).view(-1, 1, 1, 1)
    out = project(delta, eps, "l2")
    assert torch.equal(out[0], delta[0])
    assert out[1].norm().item() == pytest.approx(eps, rel=1e-5)
    torch.testing.assert_close(out[1] / eps, direction[1])


def test_project_linf_clamps_each_coordinate():
    delta = torch.tensor([-0.5, -0.05, 0.0, 0.05, 0.5]).view(1, 1, 1, 5)
    out = project(delta, 0.1, "linf")
    assert torch.equal(out, torch.tensor([-0.1, -0.05, 0.0, 0.05, 0.1]).view(1, 1, 1, 5))


def test_ascent_step_sizes():
    grad = torch.randn(3, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(0))
    step = ascent_step(grad, 0.25, "l2")
    torch.testing.assert_close(step.flatten(1).norm(dim=1), torch.full((3,), 0.25))
    assert torch.equal(ascent_step(grad, 0.25, "linf"), 0.25 * grad.sign())


def centred_linear_model(seed: int, num_classes: int, n: int):
    """A linear model whose biases put the batch's median logits level: many examples sit
    near a decision boundary, so random starts decide whether an attack succeeds."""
    model = LinearModel(num_classes=num_classes, seed=seed).eval()
    x, y = random_batch(11, n=n, num_classes=num_classes)
    with torch.no_grad():
        model.linear.bias -= model(x).median(0).values
    return model, x, y


@pytest.mark.parametrize(
    "norm, targeted, eps, seed, success_beats_loss",
    [
        ("linf", False, 0.2, 1, False),
        ("l2", False, 2.0, 1, True),
        ("linf", True, 0.2, 0, True),
    ],
)
def test_pgd_restarts_keep_the_best_run_per_example(norm, targeted, eps, seed,
                                                    success_beats_loss):
    model, x, y = centred_linear_model(seed, num_classes=3, n=32)
    # Small steps: the random start decides most of the outcome.
    kwargs = dict(eps=eps, alpha=eps / 20, steps=2, norm=norm, targeted=targeted)
    restarts = 4

    combined = pgd_restarts(model, x, y, restarts=restarts,
                            generator=torch.Generator().manual_seed(3), **kwargs)
    # The same random starts, one run at a time: each run draws its start from the generator.
    g = torch.Generator().manual_seed(3)
    runs = [pgd(model, x, y, generator=g, **kwargs) for _ in range(restarts)]

    with torch.no_grad():
        sign = -1.0 if targeted else 1.0
        finals = torch.stack([sign * F.cross_entropy(model(r.x_adv), y, reduction="none")
                              for r in runs])  # (restarts, N) attack objective
    successes = torch.stack([r.success for r in runs])  # (restarts, N)
    # per example: the highest objective among the successful runs, else among all runs
    eligible = successes | ~successes.any(0)
    chosen = finals.masked_fill(~eligible, float("-inf")).argmax(0)
    # test set-up: the choice must matter
    assert len(set(chosen.tolist())) > 1, "every example kept the same run"
    assert (successes.any(0) & ~successes.all(0)).any(), "no example with mixed outcomes"
    if success_beats_loss:
        assert (chosen != finals.argmax(0)).any(), "success and loss never disagree"

    assert torch.equal(combined.success, successes.any(0))
    assert combined.loss_trace.shape == (2, 32)
    for i, k in enumerate(chosen.tolist()):
        assert torch.equal(combined.x_adv[i], runs[k].x_adv[i]), f"example {i}"
        assert torch.equal(combined.loss_trace[:, i], runs[k].loss_trace[:, i]), f"example {i}"


def test_pgd_early_stop_freezes_examples_once_fooled():
    model = SmallConvNet(seed=2).eval()
    x, y = random_batch(12, n=16)
    steps = 8
    kwargs = dict(eps=0.2, alpha=0.03, norm="linf", random_start=False)
    by_steps = [pgd(model, x, y, steps=k, **kwargs) for k in range(steps + 1)]
    fooled = torch.stack([r.success for r in by_steps])  # (steps + 1, N), row 0: the start
    first = torch.where(fooled.any(0), fooled.float().argmax(0), steps)  # steps to fool
    assert ((first > 0) & (first < steps)).any(), "test set-up: nothing was fooled early"
    assert (first == 0).any(), "test set-up: no example is misclassified from the start"

    result = pgd(model, x, y, steps=steps, early_stop=True, **kwargs)
    assert result.loss_trace.shape == (steps, 16)
    for i, k in enumerate(first.tolist()):
        assert torch.equal(result.x_adv[i], by_steps[k].x_adv[i]), f"example {i}"
        # once frozen, its objective stays where it was
        frozen = result.loss_trace[max(k - 1, 0):, i]
        assert torch.equal(frozen, frozen[:1].expand_as(frozen)), f"example {i}"
    assert torch.equal(result.success, fooled.any(0))


def test_pgd_early_stop_stops_calling_the_model():
    model = SmallConvNet(seed=2).eval()
    x, y = random_batch(12, n=4)
    kwargs = dict(eps=1.0, alpha=1.0, steps=10, random_start=False)
    full = pgd(model, x, y, **kwargs)
    assert full.success.all(), "test set-up: a whole-range step should fool this tiny model"
    calls_full = len(model.recorder.seen)
    model.recorder.seen.clear()
    early = pgd(model, x, y, early_stop=True, **kwargs)
    assert early.success.all()
    assert len(model.recorder.seen) < calls_full / 2


# ----------------------------------------------------------------------------- the lite model


@pytest.fixture(scope="module")
def photos():
    from workbench.data import photo_batch

    return photo_batch(crops_per_photo=1)


@pytest.fixture(scope="module")
def untargeted_lite(lite_model, photos):
    x, y = photos
    return pgd(lite_model, x, y, eps=8 / 255, alpha=2 / 255, steps=10, random_start=False)


def test_pgd_untargeted_fools_the_lite_model(lite_model, photos, untargeted_lite):
    x, y = photos
    result = untargeted_lite
    assert (predict(lite_model, x) == y).sum() >= 4  # clean: mostly right
    pred = predict(lite_model, result.x_adv)
    assert torch.equal(result.success, pred != y)
    assert result.success.sum() >= 4
    assert (distance(result.x_adv, x, "linf") <= 8 / 255 + 1e-6).all()
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert not lite_model.training
    assert all(p.requires_grad for p in lite_model.parameters())
    assert all(p.grad is None for p in lite_model.parameters())


def test_pgd_loss_trace_rises_on_the_lite_model(untargeted_lite):
    trace = untargeted_lite.loss_trace
    assert trace.shape == (10, 5)
    assert (trace[-1] > trace[0]).all()
    rises = (trace[1:] > trace[:-1]).float().mean().item()
    assert rises >= 0.7


def test_pgd_targeted_reaches_the_target_on_the_lite_model(lite_model, photos):
    x, y = photos
    target = (y + 500) % 1000
    result = pgd(lite_model, x, target, eps=8 / 255, alpha=2 / 255, steps=12, targeted=True,
                 generator=torch.Generator().manual_seed(0))
    pred = predict(lite_model, result.x_adv)
    assert torch.equal(result.success, pred == target)
    assert result.success.sum() >= 4
    assert (distance(result.x_adv, x, "linf") <= 8 / 255 + 1e-6).all()
    assert (result.loss_trace[-1] > result.loss_trace[0]).all()  # -CE(target) rises


@pytest.mark.parametrize("label", [1000, -1])
def test_lite_model_label_out_of_range(lite_model, label):
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match="1000"):
        fgsm(lite_model, x, torch.tensor([label]), 8 / 255)
    with pytest.raises(ValueError, match="1000"):
        pgd(lite_model, x, torch.tensor([label]), eps=8 / 255, alpha=2 / 255, steps=1)


# ----------------------------------------------------------------------------- bad input


def bad_call(attack: str, model, x, y, **overrides):
    if attack == "fgsm":
        eps = overrides.pop("eps", 0.1)
        return fgsm(model, x, y, eps, **overrides)
    kwargs = dict(eps=0.1, alpha=0.02, steps=2)
    kwargs.update(overrides)
    return pgd(model, x, y, **kwargs)


GOOD_X, GOOD_Y = random_batch(0, n=2, num_classes=2)

BAD_INPUTS = {
    "negative eps": (dict(eps=-0.1), GOOD_X, GOOD_Y, r">= 0"),
    "nan eps": (dict(eps=math.nan), GOOD_X, GOOD_Y, r"finite"),
    "inf eps": (dict(eps=math.inf), GOOD_X, GOOD_Y, r"finite"),
    "eps in pixel levels": (dict(eps=8), GOOD_X, GOOD_Y, r"8/255"),
    "3-D x": ({}, GOOD_X[0], GOOD_Y[:1], r"x\[None\]"),
    "x above 1": ({}, GOOD_X * 255, GOOD_Y, r"\[0, 1\]"),
    "x below 0": ({}, GOOD_X - 0.5, GOOD_Y, r"\[0, 1\]"),
    "integer x": ({}, (GOOD_X * 255).to(torch.uint8), GOOD_Y, r"float"),
    "y shape mismatch": ({}, GOOD_X, torch.tensor([0, 1, 1]), r"\(N,\)"),
    "2-D y": ({}, GOOD_X, GOOD_Y[:, None], r"\(N,\)"),
    "float y": ({}, GOOD_X, GOOD_Y.float(), r"integer"),
    "label out of range": ({}, GOOD_X, torch.tensor([0, 5]), r"\[0, 2\)"),
    "negative label": ({}, GOOD_X, torch.tensor([-1, 0]), r"\[0, 2\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_bad_input(attack, case):
    overrides, x, y, message = BAD_INPUTS[case]
    model = LinearModel(num_classes=2).eval()
    x_before = x.clone()
    with pytest.raises(ValueError, match=message):
        bad_call(attack, model, x, y, **dict(overrides))
    assert torch.equal(x, x_before)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(norm="l1"), r"linf"),
        (dict(norm="Linf2"), r"norm"),
        (dict(steps=-1), r"steps"),
        (dict(steps=2.5), r"steps"),
        (dict(alpha=-0.01), r"alpha"),
    ],
)
def test_pgd_bad_options(overrides, message):
    model = LinearModel(num_classes=2).eval()
    with pytest.raises(ValueError, match=message):
        bad_call("pgd", model, GOOD_X, GOOD_Y, **overrides)


def test_bad_input_leaves_model_state_alone():
    model = SmallConvNet().train()
    model.bn.eval()
    before = modes(model)
    x, _ = random_batch(0, n=2)
    with pytest.raises(ValueError):
        pgd(model, x, torch.tensor([0, 7]), eps=0.1, alpha=0.02, steps=2)
    assert modes(model) == before
    assert all(p.requires_grad for p in model.parameters())
