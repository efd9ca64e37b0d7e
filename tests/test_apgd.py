"""APGD (Croce and Hein 2020) and the worst-case robust accuracy built on it: the schedule of
the paper, the DLR loss, the invariants every attack keeps, and a stronger bound than PGD."""

from __future__ import annotations

import pytest
import torch

from conftest import LinearModel, SmallConvNet, random_batch
from workbench.attacks import pgd
from workbench.attacks.apgd import apgd, checkpoints, dlr_loss
from workbench.defenses.worst_case import evaluate_robustness


def test_checkpoints_follow_the_paper():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_dlr_is_a_scale_and_shift_invariant_margin():
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [1.0, 3.0, 0.0, -1.0]])
    y = torch.tensor([0, 0])
    # correct: -(3 - 1) / (3 - 0); wrong: -(1 - 3) / (3 - 0)
    torch.testing.assert_close(dlr_loss(logits, y), torch.tensor([-2 / 3, 2 / 3]))
    torch.testing.assert_close(dlr_loss(5 * logits + 7, y), dlr_loss(logits, y))
    with pytest.raises(ValueError, match="3 classes"):
        dlr_loss(logits[:, :2], y)


@pytest.mark.parametrize("loss", ["ce", "dlr"])
@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.5)])
def test_invariants(loss, norm, eps):
    model = SmallConvNet(seed=3).train()
    x, y = random_batch(4, n=8)
    x_before = x.clone()
    result = apgd(model, x, y, eps=eps, steps=12, norm=norm, loss=loss,
                  generator=torch.Generator().manual_seed(0))
    d = (result.x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert (size <= eps + 1e-6).all()
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert torch.equal(x, x_before) and model.training
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert torch.equal(result.success, model(result.x_adv).argmax(1) != y)
    again = apgd(model, x, y, eps=eps, steps=12, norm=norm, loss=loss,
                 generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.x_adv, result.x_adv)


def test_finds_the_closed_form_answer_on_a_linear_model():
    # Two classes, logits W x + b: the worst L-inf perturbation moves every pixel by eps
    # against the margin, which then falls by eps * ||w_y - w_other||_1 (no pixel hits 0 or 1).
    model = LinearModel(num_classes=2, seed=4).eval()
    g = torch.Generator().manual_seed(5)
    x = 0.3 + 0.4 * torch.rand((64, 3, 8, 8), generator=g)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    eps = 0.02
    w = model.linear.weight
    margin = (logits.gather(1, y[:, None]) - logits.gather(1, 1 - y[:, None])).squeeze(1)
    foolable = margin < eps * (w[0] - w[1]).abs().sum()
    assert 0 < foolable.sum() < 64, "test set-up: some, not all, can be fooled"
    result = apgd(model, x, y, eps=eps, steps=10, loss="ce",
                  generator=torch.Generator().manual_seed(0))
    assert torch.equal(result.success, foolable)


def test_bad_loss_says_what_is_allowed():
    x, y = random_batch(0, n=2)
    with pytest.raises(ValueError, match="ce"):
        apgd(SmallConvNet().eval(), x, y, eps=0.1, loss="cw")


@pytest.fixture(scope="module")
def pgd_at_model():
    from workbench.experiments import train_or_load

    return train_or_load("pgd_at", seed=0)


def test_worst_case_is_a_tighter_bound_than_pgd_on_the_digits(pgd_at_model):
    from workbench.data import load_digits_split

    _, _, x, y = load_digits_split()
    x, y = x[:200], y[:200]
    eps = 0.15
    report = evaluate_robustness(pgd_at_model, x, y, eps=eps, apgd_steps=50, seed=0)
    # The evaluation attacks only the examples classified right, its random starts drawn for
    # those rows alone: PGD-10 on the same rows from the same seed is its first attack.
    with torch.no_grad():
        right = pgd_at_model.eval()(x).argmax(1) == y
    pgd_alone = pgd(pgd_at_model, x[right], y[right], eps=eps, alpha=2.5 * eps / 10, steps=10,
                    generator=torch.Generator().manual_seed(0))
    pgd_acc = (~pgd_alone.success).sum().item() / len(y)
    assert list(report.after) == ["PGD-10", "APGD-CE-50", "APGD-DLR-50"]
    assert report.after["PGD-10"] == pytest.approx(pgd_acc)  # the same first attack
    values = list(report.after.values())
    assert values == sorted(values, reverse=True) and report.robust_acc == values[-1]
    # the strong attacks find what PGD-10 missed: clearly lower (0.45 -> about 0.33 on all 450)
    assert report.robust_acc <= pgd_acc - 0.05, report.after
    assert report.robust.sum().item() / len(y) == pytest.approx(report.robust_acc)
    assert "PGD-10, APGD-CE-50, APGD-DLR-50" in report.description
    assert "linf eps 0.15" in report.description


def test_worst_case_never_exceeds_pgd_on_random_networks():
    for seed in range(3):
        model = SmallConvNet(seed=seed).eval()
        x, y = random_batch(10 + seed, n=16)
        with torch.no_grad():
            y = model(x).argmax(1)  # all correct before the attack
        report = evaluate_robustness(model, x, y, eps=0.05, apgd_steps=10, seed=seed)
        alone = pgd(model, x, y, eps=0.05, alpha=2.5 * 0.05 / 10, steps=10,
                    generator=torch.Generator().manual_seed(seed))
        assert report.robust_acc <= (~alone.success).float().mean().item()
        assert report.clean_acc == 1.0


def test_zero_budget_is_clean_accuracy():
    model = SmallConvNet(seed=1).eval()
    x, y = random_batch(3, n=8)
    report = evaluate_robustness(model, x, y, eps=0.0, apgd_steps=5)
    assert report.robust_acc == report.clean_acc


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_every_attack_stays_in_its_ball_in_every_dtype(dtype, norm):
    # bfloat16 cannot hold 0.5 + 8/255: rounding to nearest would leave the ball.
    from workbench.attacks import fgsm

    model = SmallConvNet(seed=5).eval().to(dtype)
    x, y = random_batch(8, n=6)
    x = x.to(dtype)
    eps = 8 / 255 if norm == "linf" else 0.3
    outputs = {"apgd": apgd(model, x, y, eps=eps, steps=5, norm=norm,
                            generator=torch.Generator().manual_seed(0)).x_adv,
               "pgd": pgd(model, x, y, eps=eps, alpha=eps / 2, steps=3, norm=norm,
                          generator=torch.Generator().manual_seed(0)).x_adv}
    if norm == "linf":
        outputs["fgsm"] = fgsm(model, x, y, eps)
    for name, x_adv in outputs.items():
        assert x_adv.dtype == dtype, name
        d = (x_adv.double() - x.double()).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert (size <= eps + 1e-6).all(), (name, size.max().item() * 255)
        assert x_adv.min() >= 0 and x_adv.max() <= 1, name
