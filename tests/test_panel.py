"""The FGSM panel, driven the way a learner drives it: by setting its controls' values; and the
attack view's precomputed frames that make a slider move a lookup."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from PIL import Image

from workbench.attacks import fgsm
from workbench.data import sample_image
from workbench.widgets import fgsm_panel


@pytest.fixture(scope="module")
def coffee():
    return sample_image("coffee")


def test_panel_contract(lite_model, coffee):
    x, label = coffee
    panel = fgsm_panel(lite_model, x, label)
    assert {"eps", "targeted", "target"} <= set(panel.controls)
    eps = panel.controls["eps"]
    assert eps.min == 0 and eps.max == pytest.approx(16 / 255) and eps.step == pytest.approx(1 / 255)
    assert panel.widget is not None and panel.result is not None
    assert len(panel.result.top5_clean) == 5 and len(panel.result.top5_adv) == 5
    assert panel.result.top5_clean[0].name == "espresso"


def test_moving_eps_updates_result_and_every_view(lite_model, coffee):
    x, label = coffee
    panel = fgsm_panel(lite_model, x, label)
    views = panel.view.images["adversarial"], panel.view.images["perturbation"], panel.view.bars_adv
    panel.controls["eps"].value = 0.0
    assert torch.equal(panel.result.x_adv, x)
    assert not panel.result.success
    before = [v.value for v in views]
    panel.controls["eps"].value = 4 / 255
    assert panel.result.eps == pytest.approx(4 / 255)
    assert [v.value for v in views] != before and all(a != b for a, b in zip(
        (v.value for v in views), before))
    # The panel's image is exactly FGSM at that epsilon, computed from the cached direction.
    expected = fgsm(lite_model, x[None], torch.tensor([label]), 4 / 255)[0]
    assert torch.allclose(panel.result.x_adv, expected, atol=1e-6)
    assert (panel.result.x_adv - x).abs().max() <= 4 / 255 + 1e-6
    assert "4/255" in panel.view.status.value


def test_one_gradient_per_image_and_target(lite_model, coffee, monkeypatch):
    import workbench.widgets.panel_fgsm as module

    calls = []
    real = module.fgsm_direction
    monkeypatch.setattr(module, "fgsm_direction", lambda *a, **k: calls.append(k) or real(*a, **k))
    x, label = coffee
    panel = fgsm_panel(lite_model, x, label)
    for level in range(17):
        panel.controls["eps"].value = level / 255
    assert len(calls) == 1
    panel.controls["targeted"].value = True
    for level in (2, 8, 12):
        panel.controls["eps"].value = level / 255
    assert len(calls) == 2 and calls[-1]["targeted"] is True


def test_targeted_toggle_and_picker(lite_model, coffee):
    x, label = coffee
    panel = fgsm_panel(lite_model, x, label)
    assert panel.controls["target"].disabled
    panel.controls["targeted"].value = True
    assert not panel.controls["target"].disabled
    target = panel.result.top5_clean[1].index  # the runner-up class is the easiest target
    panel.controls["target"].value = target
    panel.controls["eps"].value = 2 / 255
    assert panel.result.target == target
    expected = fgsm(lite_model, x[None], torch.tensor([target]), 2 / 255, targeted=True)[0]
    assert torch.allclose(panel.result.x_adv, expected, atol=1e-6)
    assert panel.result.success == (panel.result.top5_adv[0].index == target)
    clean = {p.index: p.prob for p in panel.result.top5_clean}[target]
    adv = {p.index: p.prob for p in panel.result.top5_adv}.get(target, 0.0)
    assert adv > clean, "a targeted step should raise the target's probability"


def test_label_defaults_to_the_prediction(lite_model, coffee):
    x, _ = coffee
    panel = fgsm_panel(lite_model, x)
    assert panel.result.label == panel.result.top5_clean[0].index


def test_bad_inputs(lite_model, coffee):
    x, label = coffee
    with pytest.raises(ValueError, match="one image"):
        fgsm_panel(lite_model, torch.stack([x, x]), label)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fgsm_panel(lite_model, x * 255, label)
    with pytest.raises(ValueError, match="label"):
        fgsm_panel(lite_model, x, 1000)


@contextlib.contextmanager
def forward_calls(model):
    """Record (batch size, grad enabled) for every forward call of ``model`` in the block."""
    calls: list[tuple[int, bool]] = []
    handle = model.register_forward_hook(
        lambda module, inputs, output: calls.append((inputs[0].shape[0], torch.is_grad_enabled())))
    try:
        yield calls
    finally:
        handle.remove()


def fresh(model, x, cls, eps, *, targeted=False):
    """FGSM at eps and the top-5 and verdict of a fresh forward pass, without the panel."""
    from workbench.viz import top_k

    x_adv = fgsm(model, x[None], torch.tensor([cls]), eps, targeted=targeted)
    with torch.no_grad():
        probs = model(x_adv).float().softmax(dim=1)[0]
    top5 = top_k(probs, model.categories)
    success = top5[0].index == cls if targeted else top5[0].index != cls
    return x_adv[0], top5, success


def test_every_move_after_the_precompute_is_a_lookup(lite_model, coffee):
    x, label = coffee
    panel = fgsm_panel(lite_model, x, label)
    images = []
    with forward_calls(lite_model) as calls:
        for sweep in range(2):
            for level in range(17):
                panel.controls["eps"].value = level / 255
                images.append(panel.view.images["adversarial"].value)
        panel.controls["target"].value = 1  # untargeted: the target does not matter
        panel.controls["eps"].value = 5 / 255
    assert calls == [], "a slider move on the eps grid must not call the model"
    assert len(set(images[:17])) == 17, "each eps shows its own adversarial image"
    assert images[17:] == images[:17], "a revisited eps shows the same cached frame"
    assert panel.result.eps == pytest.approx(5 / 255)


def test_a_new_target_costs_one_gradient_and_one_batched_forward(lite_model, coffee):
    x, label = coffee
    panel = fgsm_panel(lite_model, x, label)
    with forward_calls(lite_model) as calls:
        panel.controls["targeted"].value = True
    inference = [batch for batch, grad in calls if not grad]
    assert inference == [17], "one no-grad forward over the whole eps grid, 0..16/255"
    assert len(calls) <= 3, calls  # plus the gradient's own pass(es)
    with forward_calls(lite_model) as calls:
        for level in (0, 3, 16):
            panel.controls["eps"].value = level / 255
        panel.controls["targeted"].value = False  # back to a grid already computed
    assert calls == []


@pytest.mark.parametrize("targeted", [False, True])
def test_results_equal_a_fresh_computation(lite_model, coffee, targeted):
    x, label = coffee
    panel = fgsm_panel(lite_model, x, label)
    cls = label
    if targeted:
        cls = panel.view.top5_clean[2].index
        panel.controls["targeted"].value = True
        panel.controls["target"].value = cls
    for level in (0, 1, 3, 7, 16):
        eps = level / 255
        panel.controls["eps"].value = eps
        x_adv, top5, success = fresh(lite_model, x, cls, eps, targeted=targeted)
        result = panel.result
        assert torch.equal(result.x_adv, x_adv), f"x_adv differs at eps {level}/255"
        assert [p.index for p in result.top5_adv] == [p.index for p in top5], level
        assert [p.prob for p in result.top5_adv] == pytest.approx([p.prob for p in top5],
                                                                 abs=1e-4), level
        assert result.success == success, level
        assert result.target == (cls if targeted else None)
        assert f"{level}/255" in panel.view.status.value
        assert top5[0].name in panel.view.status.value


def test_targeted_toggle_recomputes_for_the_target(lite_model, coffee):
    x, label = coffee
    panel = fgsm_panel(lite_model, x, label)
    panel.controls["eps"].value = 3 / 255
    untargeted = panel.result
    bars = panel.view.bars_adv.value
    panel.controls["targeted"].value = True
    target = panel.controls["target"].value
    assert panel.result.target == target
    assert not torch.equal(panel.result.x_adv, untargeted.x_adv)
    assert panel.view.bars_adv.value != bars
    assert torch.equal(panel.result.x_adv, fresh(lite_model, x, target, 3 / 255, targeted=True)[0])
    other = next(p.index for p in panel.view.top5_clean[2:] if p.index != target)
    before = panel.result.x_adv
    panel.controls["target"].value = other
    assert panel.result.target == other and not torch.equal(panel.result.x_adv, before)
    x_adv, top5, success = fresh(lite_model, x, other, 3 / 255, targeted=True)
    assert torch.equal(panel.result.x_adv, x_adv)
    assert [p.index for p in panel.result.top5_adv] == [p.index for p in top5]
    assert panel.result.success == success


def test_eps_off_the_grid_is_computed_on_demand(lite_model, coffee):
    x, label = coffee
    panel = fgsm_panel(lite_model, x, label)
    eps = 2.5 / 255
    with forward_calls(lite_model) as calls:
        panel.controls["eps"].value = eps
    assert [batch for batch, grad in calls if not grad] == [1], "one forward for that eps"
    assert panel.result.eps == pytest.approx(eps)
    x_adv, top5, success = fresh(lite_model, x, label, eps)
    assert torch.equal(panel.result.x_adv, x_adv)
    assert (panel.result.x_adv - x).abs().max() == pytest.approx(eps, abs=1e-6)
    assert [p.index for p in panel.result.top5_adv] == [p.index for p in top5]
    assert [p.prob for p in panel.result.top5_adv] == pytest.approx([p.prob for p in top5],
                                                                   abs=1e-4)
    assert panel.result.success == success
    assert "2.5/255" in panel.view.status.value
    # The grid's own frames are untouched by the off-grid point.
    panel.controls["eps"].value = 2 / 255
    assert "2/255" in panel.view.status.value
    assert torch.equal(panel.result.x_adv, fresh(lite_model, x, label, 2 / 255)[0])


def test_grids_kept_are_bounded(lite_model, coffee, monkeypatch):
    import workbench.widgets.panel_fgsm as module

    monkeypatch.setattr(module, "GRIDS_KEPT", 2)
    x, label = coffee
    panel = fgsm_panel(lite_model, x, label)
    panel.controls["targeted"].value = True
    for p in panel.view.top5_clean[1:3]:
        panel.controls["target"].value = p.index
    assert len(panel._grids) == 2
    assert panel.result.target == panel.view.top5_clean[2].index


# ----------------------------------------------------------------------------- attack view


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_jpeg_bytes_round_trip(coffee):
    from workbench.viz import jpeg_bytes, to_uint8

    x, _ = coffee
    data = jpeg_bytes(x)
    assert data[:2] == b"\xff\xd8", "a JPEG starts with the SOI marker"
    assert Image.open(io.BytesIO(data)).format == "JPEG"
    pixels, original = decode(data).astype(int), to_uint8(x).astype(int)
    assert pixels.shape == (224, 224, 3)
    assert np.abs(pixels - original).mean() < 2.0, "quality high enough to look the same"
    assert jpeg_bytes(to_uint8(x)) == data, "a uint8 array encodes like its tensor"
    # Full-resolution colour: a per-channel checkerboard survives (4:2:0 would grey it out).
    board = np.zeros((32, 32, 3), np.uint8)
    board[::2, ::2, 0] = board[1::2, 1::2, 1] = 255
    assert np.abs(decode(jpeg_bytes(board)).astype(int) - board).mean() < 20


def test_frame_then_show_frame_equals_show(lite_model, coffee):
    from workbench.widgets.views import AttackView, Frame

    x, label = coffee
    x = x[None]
    view = AttackView(lite_model, x, label)
    assert view.image_format == "jpeg"
    assert view.images["adversarial"].format == view.images["perturbation"].format == "jpeg"
    x_adv = (x + 4 / 255 * torch.randn_like(x).sign()).clamp(0, 1)
    with torch.no_grad():
        probs = lite_model(x_adv).softmax(dim=1)[0]
    frame = view.frame(x_adv[0], probs, scale=4 / 255, target=None, status="eps = 4/255")
    assert isinstance(frame, Frame)
    assert frame.adversarial[:2] == frame.perturbation[:2] == b"\xff\xd8"
    assert np.abs(decode(frame.adversarial).astype(int)
                  - np.asarray(x_adv[0].mul(255).round().permute(1, 2, 0).byte())).mean() < 3
    assert len(frame.top5) == 5 and frame.status.startswith("eps = 4/255")
    assert "top-5 after" in frame.top5_html
    view.show_frame(frame)
    shown = [view.images["adversarial"].value, view.images["perturbation"].value,
             view.bars_adv.value, view.status.value]
    assert shown == [frame.adversarial, frame.perturbation, frame.top5_html, frame.status]
    view.show_frame(Frame(b"", b"", [], False, ""))
    top5, success = view.show(x_adv, probs, scale=4 / 255, target=None, status="eps = 4/255")
    assert (top5, success) == (frame.top5, frame.success)
    assert [view.images["adversarial"].value, view.images["perturbation"].value,
            view.bars_adv.value, view.status.value] == shown


def test_show_frame_and_revisited_moves_do_no_encoding(lite_model, coffee, monkeypatch):
    import workbench.widgets.views as views

    x, label = coffee
    panel = fgsm_panel(lite_model, x, label)
    for level in (1, 6):
        panel.controls["eps"].value = level / 255
    frame = panel.view.frame(panel.result.x_adv, torch.full((1000,), 1e-3), scale=6 / 255,
                             target=None, status="by hand")

    def forbidden(*args, **kwargs):
        raise AssertionError("encoding or tensor work on a show")

    for name in ("jpeg_bytes", "png_bytes", "amplified_perturbation", "top_k", "top_k_html"):
        monkeypatch.setattr(views, name, forbidden)
    panel.view.show_frame(frame)
    assert panel.view.images["adversarial"].value == frame.adversarial
    panel.controls["eps"].value = 1 / 255  # visited: a cached frame
    assert "1/255" in panel.view.status.value
    with pytest.raises(AssertionError, match="encoding"):
        panel.controls["eps"].value = 9 / 255  # never shown: its frame is built now


def test_fgsm_panel_names_the_architecture_really_running(lite_model, coffee):
    x, label = coffee
    panel = fgsm_panel(lite_model, x, label)
    # lite mode stands in EfficientNet-Lite0 for MobileNetV2: the panel must say which runs
    assert "EfficientNet-Lite0" in panel.view.status.value
    assert "mobilenet" not in panel.view.status.value.lower()
