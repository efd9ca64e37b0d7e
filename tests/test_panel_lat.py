"""The latent panel of notebook 04: latent PGD at every layer and radius once, then every move
of the layer or radius slider is a lookup that shows what latent PGD there really produced."""

from __future__ import annotations

import time

import pytest
import torch

from conftest import SmallConvNet
from workbench.data import load_digits_split
from workbench.lat import activations, latent_pgd, perturbed, relative_eps
from workbench.lat.models import digits_resnet
from workbench.widgets import lat_panel

LAYERS = ("conv1", "layer1", "layer2", "layer3", "layer4")
FRACTIONS = (0.0, 0.1, 0.3, 1.0)
STEPS = 6


@pytest.fixture(scope="module")
def digit():
    *_, x_test, y_test = load_digits_split()
    return x_test[0], int(y_test[0])


@pytest.fixture(scope="module")
def model():
    return digits_resnet(seed=0).eval()


@pytest.fixture(scope="module")
def panel(model, digit):
    x, label = digit
    return lat_panel(model, x, label, fractions=FRACTIONS, steps=STEPS, seed=0, progress=False)


class ForwardCounter:
    def __init__(self, model):
        self.calls = 0
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, *args):
        self.calls += 1


def shown(panel):
    return (panel.images["heatmap"].value, panel.legend.value, panel.norm.value,
            panel.status.value, panel.bars_perturbed.value)


def test_panel_contract(panel):
    assert set(panel.controls) == {"layer", "eps"}
    assert list(panel.controls["layer"].options) == list(LAYERS)
    assert [value for _, value in panel.controls["eps"].options] == list(FRACTIONS)
    assert panel.widget is not None and panel.images["image"].value
    result = panel.result
    assert result.layer == panel.controls["layer"].value
    assert result.fraction == panel.controls["eps"].value
    assert len(result.top5_clean) == 5 and len(result.top5_perturbed) == 5
    assert result.predicted == result.top5_perturbed[0].index
    assert result.changed == (result.predicted != result.top5_clean[0].index)


def test_each_move_is_a_lookup_that_changes_result_and_view(model, panel):
    panel.controls["layer"].value = "layer1"
    panel.controls["eps"].value = 0.0
    counter = ForwardCounter(model)
    seen_views, seen_results = set(), set()
    try:
        for layer, fraction in [("layer2", 0.3), ("layer2", 1.0), ("conv1", 1.0),
                                ("conv1", 0.1), ("layer4", 0.1), ("layer3", 0.3)]:
            before_view, before = shown(panel), panel.result
            panel.controls["layer"].value = layer
            panel.controls["eps"].value = fraction
            result = panel.result
            assert (result.layer, result.fraction) == (layer, fraction)
            assert result is not before and shown(panel) != before_view
            seen_views.add(shown(panel))
            seen_results.add((result.layer, result.fraction, result.eps))
    finally:
        counter.handle.remove()
    assert counter.calls == 0, "a move of the layer or eps slider ran the model"
    assert len(seen_views) == len(seen_results) == 6


def test_moving_only_one_control_changes_what_is_shown(panel):
    panel.controls["layer"].value = "layer1"
    panel.controls["eps"].value = 0.3
    before_view, before = shown(panel), panel.result
    panel.controls["eps"].value = 1.0  # radius only
    assert panel.result.eps > before.eps and shown(panel)[0] != before_view[0]
    assert shown(panel)[2] != before_view[2]
    before_view = shown(panel)
    panel.controls["layer"].value = "layer2"  # layer only
    assert panel.result.layer == "layer2" and panel.result.fraction == 1.0
    assert panel.result.channel_mean.shape == (4, 4)
    assert shown(panel)[0] != before_view[0] and shown(panel)[1] != before_view[1]


def test_shown_numbers_are_those_of_a_fresh_latent_pgd(model, digit, panel):
    x, label = digit
    for layer in ("conv1", "layer2"):
        panel.controls["layer"].value = layer
        panel.controls["eps"].value = 0.3
        result = panel.result
        eps = relative_eps(model, layer, x[None], 0.3)
        assert result.eps == pytest.approx(eps, rel=1e-6)
        delta = latent_pgd(model, layer, x[None], torch.tensor([label]), eps=eps, steps=STEPS,
                           generator=torch.Generator().manual_seed(0))
        h = activations(model, layer, x[None])
        assert result.relative_norm == pytest.approx(float(delta.norm() / h.norm()), rel=1e-4)
        torch.testing.assert_close(result.channel_mean, delta[0].mean(0))
        with torch.no_grad(), perturbed(model, layer, delta):
            probs = model(x[None]).softmax(1)[0]
        assert result.predicted == int(probs.argmax())
        assert result.top5_perturbed[0].prob == pytest.approx(float(probs.max()), abs=1e-4)
        assert f"{result.relative_norm:.2f}" in panel.norm.value and layer in panel.status.value


def test_relative_norm_is_the_fraction(panel):
    """The perturbation stays inside its ball at every layer (||delta|| / ||h|| <= fraction);
    where latent PGD's steps of eps / steps reach the ball's edge (the deep layers) it equals
    the fraction. At conv1 and layer1 six steps end well inside it (about 0.55-0.9 of the
    radius on this model), so there the panel shows less than the budget."""
    for layer in LAYERS:
        panel.controls["layer"].value = layer
        for fraction in FRACTIONS[1:]:
            panel.controls["eps"].value = fraction
            relative = panel.result.relative_norm
            assert 0 < relative <= fraction * (1 + 1e-5), (layer, fraction, relative)
            if layer in ("layer3", "layer4"):
                assert relative == pytest.approx(fraction, rel=1e-3), (layer, fraction)


def test_eps_zero_shows_the_clean_prediction(panel):
    for layer in ("conv1", "layer4"):
        panel.controls["layer"].value = layer
        panel.controls["eps"].value = 0.0
        result = panel.result
        assert result.eps == 0 and result.relative_norm == 0 and not result.changed
        assert [p.index for p in result.top5_perturbed] == [p.index for p in result.top5_clean]
        for after, before in zip(result.top5_perturbed, result.top5_clean):
            assert after.prob == pytest.approx(before.prob, abs=1e-5)
        assert torch.count_nonzero(result.channel_mean) == 0
        assert "unchanged" in panel.status.value


def test_unknown_layer_and_bad_images_raise(model, digit):
    x, label = digit
    with pytest.raises(ValueError, match="valid names: conv1, bn1, relu, maxpool, layer1"):
        lat_panel(model, x, label, layers=("layer2", "layer9"), progress=False)
    for bad in (torch.rand(3, 16, 16), torch.rand(2, 1, 16, 16), torch.rand(16, 16)):
        with pytest.raises(ValueError, match=r"one image: pass a tensor \(1, H, W\)"):
            lat_panel(model, bad, label, progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        lat_panel(model, x * 255, label, progress=False)
    with pytest.raises(ValueError, match="fractions"):
        lat_panel(model, x, label, fractions=(0.1, -0.2), progress=False)


def test_precompute_on_a_fresh_model_is_fast(digit):
    x, label = digit
    fresh = digits_resnet(seed=1)
    start = time.perf_counter()
    panel = lat_panel(fresh, x, label, fractions=(0.0, 0.25, 0.5), progress=False)
    assert time.perf_counter() - start < 10
    assert fresh.training, "the panel must leave the model's mode as it was"
    assert all(p.grad is None for p in fresh.parameters())
    assert set(panel.grids) == set(LAYERS)


def test_any_classifier_with_named_layers():
    """No categories, no input size, a layer whose output is (N, D): shown as a strip."""
    net = SmallConvNet(seed=0).train()
    x = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    panel = lat_panel(net, x, layers=("conv", "head"), fractions=(0.0, 0.5), progress=False)
    panel.controls["eps"].value = 0.5
    panel.controls["layer"].value = "head"
    assert panel.result.channel_mean.shape == (1, 3)
    assert "strip" in panel.legend.value and panel.result.top5_clean[0].name.isdigit()
    assert 0 < panel.result.relative_norm <= 0.5 + 1e-6
    assert net.training
