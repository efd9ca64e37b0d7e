"""The PGD panel of notebook 03: one batched attack per setting, then every eps or steps move
is a lookup that shows what PGD at that budget and step really produced."""

from __future__ import annotations

import pytest
import torch

from workbench.attacks import pgd_sweep
from workbench.data import sample_image
from workbench.widgets import pgd_panel
from workbench.widgets.panel_pgd import MAX_STEPS, eps_grid


@pytest.fixture(scope="module")
def coffee():
    return sample_image("coffee")


@pytest.fixture(scope="module")
def panel(lite_model, coffee):
    x, label = coffee
    return pgd_panel(lite_model, x, label, seed=0, progress=False)


class ForwardCounter:
    def __init__(self, model):
        self.calls = 0
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, *args):
        self.calls += 1


def test_moves_are_lookups_that_change_what_is_shown(lite_model, panel):
    counter = ForwardCounter(lite_model)
    try:
        shown = set()
        for eps, steps in [(1 / 255, 1), (1 / 255, 10), (4 / 255, 10), (8 / 255, 20),
                           (16 / 255, 5), (0.0, 3)]:
            panel.controls["eps"].value = eps
            panel.controls["steps"].value = steps
            result = panel.result
            assert result.eps == pytest.approx(eps) and result.steps == steps
            assert len(result.loss_trace) == steps
            shown.add((panel.view.images["adversarial"].value, panel.view.status.value,
                       panel.curve.value))
    finally:
        counter.handle.remove()
    assert counter.calls == 0, "a move of eps or steps ran the model"
    assert len(shown) == 6, "each position must show something different"


def test_what_is_shown_is_what_pgd_produced(lite_model, coffee, panel):
    x, label = coffee
    panel.controls["eps"].value = 2 / 255
    panel.controls["steps"].value = 5
    result = panel.result
    fresh = pgd_sweep(lite_model, x[None], torch.tensor([label]), eps_grid("linf"), steps=5,
                      alpha_over_eps=0.25, generator=torch.Generator().manual_seed(0))
    e = 2
    step = (fresh.x_adv[e, 0] - x).abs().max()
    torch.testing.assert_close(result.x_adv, fresh.x_adv[e, 0], atol=float(step) / 254 + 1e-6,
                               rtol=0)
    assert (result.x_adv - x).abs().max() <= 2 / 255 + 1e-6
    assert result.success == bool(fresh.success[e, 0])
    torch.testing.assert_close(torch.tensor(result.loss_trace), fresh.loss_trace[:, e, 0])
    with torch.no_grad():
        probs = lite_model(fresh.x_adv[e]).softmax(1)[0]
    assert result.top5_adv[0].index == int(probs.argmax())
    assert result.top5_adv[0].prob == pytest.approx(float(probs.max()), abs=1e-4)
    assert result.alpha == pytest.approx(0.25 * 2 / 255)
    assert "2/255" in panel.view.status.value and "EfficientNet-Lite0" in panel.view.status.value


def test_off_grid_eps_shows_the_nearest_grid_point(panel):
    panel.controls["eps"].value = 2.4 / 255
    assert panel.result.eps == pytest.approx(2 / 255)


def test_l2_and_targeted_attack_again_and_settings_run_before_are_lookups(lite_model, coffee,
                                                                          panel):
    x, _ = coffee
    counter = ForwardCounter(lite_model)
    try:
        panel.controls["norm"].value = "l2"
        assert counter.calls > 0, "a new norm must attack again"
        assert panel.controls["eps"].max == pytest.approx(4.0)
        assert panel.result.norm == "l2" and panel.result.eps == pytest.approx(1.0)
        panel.controls["steps"].value = 3
        assert (panel.result.x_adv - x).flatten().norm() <= 1.0 + 1e-3
        counter.calls = 0
        panel.controls["norm"].value = "linf"  # run when the panel was built: kept
        assert panel.controls["eps"].max == pytest.approx(16 / 255)
        assert panel.result.norm == "linf"
        target = panel.view.top5_clean[1].index
        panel.controls["target"].value = target  # not targeted yet: the label's attack
        assert panel.result.target is None
        assert counter.calls == 0, "settings the panel already ran must not attack again"
        panel.controls["targeted"].value = True
        assert counter.calls > 0
        panel.controls["eps"].value = 8 / 255
        panel.controls["steps"].value = 20
        result = panel.result
        assert result.target == target
        assert result.success and result.top5_adv[0].index == target
        assert result.loss_trace[-1] > result.loss_trace[0]  # -CE of the target rises
    finally:
        counter.handle.remove()
        panel.controls["targeted"].value = False  # kept: the module's panel as it was


def test_the_step_size_slider_attacks_again(panel):
    panel.controls["eps"].value = 4 / 255
    before = panel.result.x_adv
    try:
        panel.controls["alpha"].value = 0.5
        assert panel.result.alpha == pytest.approx(0.5 * 4 / 255)
        assert not torch.equal(panel.result.x_adv, before)
    finally:
        panel.controls["alpha"].value = 0.25


def test_bad_image_says_what_is_wrong(lite_model):
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        pgd_panel(lite_model, torch.rand(2, 3, 32, 32), progress=False)
